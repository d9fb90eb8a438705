"""Referee: model randomisation (Adebayo et al. 2018) randomises, and never zeroes the tower.

The book once re-initialised the final LayerNorm with weight 0 (the module itself was passed,
whose parameters are called ``weight`` and ``bias``), so every randomised tower output exactly
0 and all 168 randomised maps were flat. Here, after every cascade step, the randomised
scorer's scores and input gradients must be non-zero and differ from the trained scorer's, and
its Grad-CAM maps must not be degenerate.
"""

import numpy as np
import pytest
import torch
from torch import nn

from helpers.saliency import attribution, explain, regions


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from helpers.protocols.models import TinyConfig, build_tiny, load_model

    folder = build_tiny(tmp_path_factory.mktemp("m") / "m", ["a b", "no c"] * 5,
                        TinyConfig(vit_depth=2, bert_depth=1, image_size=64))
    model, _, _, info = load_model(f"local-dir:{folder}")
    txt = np.random.default_rng(1).normal(size=(2, info.embed_dim))
    return explain.EmbeddingScorer(model.visual, explain.zero_shot_head(txt, -txt))


def test_a_layernorm_passed_as_the_module_becomes_the_identity():
    ln = nn.LayerNorm(8)
    with torch.no_grad():
        ln.weight.fill_(3.0)
        ln.bias.fill_(2.0)
    explain.reinitialise(ln, torch.Generator().manual_seed(0))
    assert torch.equal(ln.weight, torch.ones(8)) and torch.equal(ln.bias, torch.zeros(8))
    x = torch.randn(4, 8)
    assert ln(x).abs().max() > 0.5


def test_matrices_are_redrawn_and_biases_zeroed():
    lin = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5))
    explain.reinitialise(lin, torch.Generator().manual_seed(0))
    w = lin[0].weight
    assert 0.005 < float(w.detach().std()) < 0.05 and torch.equal(lin[0].bias, torch.zeros(5))
    assert torch.equal(lin[1].weight, torch.ones(5))


def test_every_cascade_step_randomises_without_zeroing(tiny):
    scorer = tiny
    x = torch.randn(3, 3, 64, 64)
    labels = [0, 1, 0]
    names = []
    for name, rnd in explain.cascade(scorer, seed=0):
        check = explain.check_randomised(scorer, rnd, x, labels)
        assert check.ok, (name, check)
        maps = attribution.explain_batch(rnd, x, labels, methods=("gradcam",))["gradcam"]
        assert not regions.is_degenerate(maps).any(), name
        names.append(name)
    assert names == [s for s, _ in explain.cascade_steps(scorer)]


def test_two_randomised_draws_differ(tiny):
    x = torch.randn(2, 3, 64, 64)
    a = explain.randomised(tiny, seed=0)
    b = explain.randomised(tiny, seed=1)
    check = explain.check_randomised(a, b, x, [0, 1])
    assert check.output_differs and check.gradient_differs


def test_a_zeroing_randomisation_is_caught(tiny):
    """The check must be able to fail: a tower whose final norm outputs zero."""
    import copy

    broken = copy.deepcopy(tiny)
    with torch.no_grad():
        broken.visual.trunk.norm.weight.zero_()
        broken.visual.trunk.norm.bias.zero_()
    check = explain.check_randomised(tiny, broken, torch.randn(2, 3, 64, 64), [0, 1])
    assert not check.ok and not check.output_nonzero
