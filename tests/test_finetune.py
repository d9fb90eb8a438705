"""Fine-tuning: both objectives run, interrupted runs resume to the same weights, bad input."""

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import finetune as F
from helpers.images import PixelCache
from helpers.labels import CHEXPERT_LABELS
from helpers.models import TinyConfig, build_tiny, load_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    texts = [f"no {c.lower()}" for c in CHEXPERT_LABELS] + [c.lower() for c in CHEXPERT_LABELS]
    folder = build_tiny(root / "m", texts * 3, TinyConfig(vit_depth=1, bert_depth=1, image_size=64))
    model, _, tok, info = load_model(f"local-dir:{folder}")
    rng = np.random.default_rng(0)
    n = 48
    px = rng.integers(0, 255, (n, 64, 64), dtype=np.uint8)
    cache = PixelCache(px, [f"img{i}" for i in range(n)], np.ones(n, bool), "testkey", root / "px.npy")
    y = (rng.random((n, len(CHEXPERT_LABELS))) < 0.3).astype(int)
    y[:4] = 1 - y[:4]  # every label has both classes in val
    return model, tok, info, cache, y, root


def _run(setup, run_root, **kw):
    model, tok, info, cache, y, _ = setup
    stop = kw.pop("stop_after_epochs", None)
    cfg = F.FinetuneConfig(**{"epochs": 2, "batch_size": 8, "lr": 1e-3, "patience": 5, "seed": 0, **kw})
    return F.finetune(model, tok, cache, y, np.arange(16, 48), np.arange(16), list(CHEXPERT_LABELS),
                      info.mean, info.std, info.weights_sha256, cfg, run_root, progress=False,
                      stop_after_epochs=stop)


@pytest.mark.parametrize("objective", ["contrastive", "bce"])
def test_one_epoch_runs_end_to_end(setup, tmp_path, objective):
    r = _run(setup, tmp_path, objective=objective, epochs=1, max_steps_per_epoch=2)
    assert len(r.history) == 1 and r.best_epoch == 1
    assert {"train_loss", "val_loss", "val_auroc", "epoch_s"} <= set(r.history[0])
    assert (r.run_dir / "last.pt").is_file() and (r.run_dir / "best.pt").is_file()
    model, tok, info, cache, y, _ = setup
    logits = F.predict_logits(r.scorer, cache, np.arange(5), info.mean, info.std)
    assert logits.shape == (5, len(CHEXPERT_LABELS)) and np.isfinite(logits).all()
    # the base model is untouched: fine-tuning works on a copy
    from helpers.models import _weights_hash

    assert _weights_hash(model) == info.weights_sha256


def test_bce_head_starts_at_the_zero_shot_solution(setup):
    model, tok, info, cache, y, _ = setup
    x = torch.randn(3, 3, 64, 64)
    c = F.build_scorer(model, tok, CHEXPERT_LABELS, F.FinetuneConfig(objective="contrastive"))
    b = F.build_scorer(model, tok, CHEXPERT_LABELS, F.FinetuneConfig(objective="bce"))
    with torch.no_grad():
        torch.testing.assert_close(c(x), b(x), rtol=1e-4, atol=1e-5)


def test_interrupted_run_resumes_to_identical_weights(setup, tmp_path):
    full = _run(setup, tmp_path / "a", max_steps_per_epoch=2)
    part = _run(setup, tmp_path / "b", max_steps_per_epoch=2, stop_after_epochs=1)
    assert len(part.history) == 1
    resumed = _run(setup, tmp_path / "b", max_steps_per_epoch=2)
    assert resumed.resumed_from == 1 and len(resumed.history) == 2
    assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in full.history])
    for (k, a), b in zip(full.scorer.state_dict().items(), resumed.scorer.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    again = _run(setup, tmp_path / "b", max_steps_per_epoch=2)  # finished: loaded, not retrained
    assert again.resumed_from == 2 and len(again.history) == 2


def test_checkpoints_are_written_atomically(setup, tmp_path):
    r = _run(setup, tmp_path, epochs=1, max_steps_per_epoch=1)
    assert not [p for p in Path(r.run_dir).iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("bad,match", [({"objective": "mse"}, "objective"), ({"epochs": 0}, "epochs"),
                                       ({"lr": -1.0}, "lr")])
def test_bad_parameters_are_named(setup, tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        _run(setup, tmp_path, **bad)
