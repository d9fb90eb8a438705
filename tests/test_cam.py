"""Chapter 6's scoring, attribution methods, randomisation, positive control and fold assignment."""

import numpy as np
import pytest
import torch

from helpers.analysis.estimate import Estimate
from helpers.saliency import attribution, explain, positive_control, regions


def _square(S=20, r0=5, r1=10):
    m = np.zeros((1, S, S), bool)
    m[0, r0:r1, r0:r1] = True
    return m


# ---------------------------------------------------------------- scoring and its validation


def test_reference_maps_score_as_documented():
    rng = np.random.default_rng(0)
    masks = np.zeros((60, 32, 32), bool)
    for i in range(60):
        r, c = rng.integers(2, 20, 2)
        masks[i, r:r + 10, c:c + 8] = True
    chance = regions.area_fraction(masks)
    oracle = regions.pair_stats(regions.reference_maps("oracle", masks), masks)
    assert oracle["hit"].mean() == 1.0 and not oracle["degenerate"].any()
    uniform = regions.pair_stats(regions.reference_maps("uniform", masks), masks)
    assert uniform["degenerate"].all()
    np.testing.assert_allclose(uniform["hit"], chance)  # exactly the chance level, per pair
    rand = regions.pair_stats(regions.reference_maps("random", masks, seed=1), masks)
    assert abs(rand["hit"].mean() - chance.mean()) < 0.15  # a random pixel: chance on average
    centre = regions.reference_maps("centre", masks)
    covers = masks[:, 15:17, 15:17].any((1, 2))
    hit = regions.pointing_game(centre, masks)
    assert np.array_equal(hit > 0, covers)


def test_ties_and_constant_maps_never_score_through_array_order():
    mask = _square()
    two = np.zeros((1, 20, 20))
    two[0, 0, 0] = 1.0  # first in row-major order, outside the region
    two[0, 7, 7] = 1.0  # tied maximum inside
    assert regions.pointing_game(two, mask)[0] == 0.5
    for const in (np.zeros((1, 20, 20)), np.full((1, 20, 20), 0.3)):
        assert regions.is_degenerate(const)[0]
        assert regions.pointing_game(const, mask)[0] == pytest.approx(25 / 400)
    nan = np.full((1, 20, 20), np.nan)
    assert regions.is_degenerate(nan)[0]
    st = regions.pair_stats(nan, mask)
    assert st["hit"][0] == pytest.approx(25 / 400) and st["iou_grid"].max() == 0


def test_iou_of_a_map_on_and_off_the_region():
    mask = _square()
    on = np.zeros((1, 20, 20))
    on[0, 5:10, 5:10] = 1.0
    off = np.zeros((1, 20, 20))
    off[0, 14:19, 14:19] = 1.0
    assert regions.pointing_game(on, mask)[0] == 1 and regions.iou(on, mask, 0.5)[0] == 1
    assert regions.pointing_game(off, mask)[0] == 0 and regions.iou(off, mask, 0.5)[0] == 0


def _tuning_set(n, label, best, group0=0):
    """IoU tables where threshold column ``best`` wins, for ``n`` pairs of ``label``."""
    ig = np.full((n, len(regions.THRESHOLD_GRID)), 0.1)
    ig[:, best] = 0.9
    st = {"iou_grid": ig, "iou_otsu": np.zeros(n)}
    return st, [label] * n, list(range(group0, group0 + n))


def test_thresholds_per_pathology_pooled_or_otsu_by_the_minimum_rule():
    a = _tuning_set(12, "A", 1)
    b = _tuning_set(3, "B", 4, group0=100)
    st = {k: np.concatenate([a[0][k], b[0][k]]) for k in a[0]}
    th = regions.tune_thresholds(st, a[1] + b[1], a[2] + b[2], ["A", "B"], ["x", "y"], min_pairs=10)
    assert th.value[0] == regions.THRESHOLD_GRID[1] and th.source[0] == "per-pathology"
    assert th.source[1] == "pooled" and th.n_tuned[1] == 15  # B has 3 < 10 pairs of its own
    few = regions.tune_thresholds(b[0], b[1], b[2], ["B"], ["y"], min_pairs=10)
    assert few.source[0] == "otsu" and np.isnan(few.value[0])


def test_a_pair_never_scores_with_a_threshold_tuned_on_its_own_report():
    st, labs, groups = _tuning_set(10, "A", 2)
    th = regions.tune_thresholds(st, labs, groups, ["A"], [groups[0]], min_pairs=10)
    assert th.source[0] == "otsu"  # 9 pairs left once its own report is out: below the minimum
    th = regions.tune_thresholds(st, labs, groups, ["A"], ["elsewhere"], min_pairs=10)
    assert th.source[0] == "per-pathology"


def test_summary_has_cis_and_counts_degenerate_maps():
    rng = np.random.default_rng(0)
    masks = np.zeros((40, 16, 16), bool)
    masks[:, 4:9, 4:9] = True
    maps = rng.random((40, 16, 16))
    maps[:5] = 0.0
    st = regions.pair_stats(maps, masks)
    labs = ["A"] * 40
    th = regions.tune_thresholds(st, labs, range(40), labs, range(100, 140))
    out = regions.summarise(st, th, labs, np.arange(40) // 2, n_boot=30)
    assert out["n_degenerate"] == 5 and out["n_pairs"] == 40
    for k in regions.SUMMARY_KEYS:
        e = Estimate.read(out, k)
        assert e.low <= e.value <= e.high


def test_rank_correlation_of_maps():
    a = np.random.default_rng(0).random((3, 8, 8))
    b = a.copy()
    b[1] = -a[1]
    b[2] = 0.0
    r = regions.rank_correlation(a, b)
    assert r[0] == pytest.approx(1) and r[1] == pytest.approx(-1) and np.isnan(r[2])


def test_reader_agreement():
    m = np.zeros((2, 20, 20), bool)
    m[:, 5:10, 5:10] = True
    other = m.copy()
    other[1] = False
    other[1, 12:18, 12:18] = True
    ag = regions.reader_agreement({"r1": m, "r2": other})
    first = ag["pair"] == 0
    assert np.allclose(ag["iou"][first], 1) and np.allclose(ag["hit"][first], 1)
    assert np.allclose(ag["iou"][~first], 0) and np.allclose(ag["hit"][~first], 0)


def test_annotation_file_with_readers(tmp_path):
    from helpers.data import annotations

    f = tmp_path / "a.csv"
    f.write_text('image_id,label,shape,points,reader\nX,Cardiomegaly,box,"1,1;5,5",r1\n'
                 'X,Cardiomegaly,box,"10,10;15,15",r2\n')
    ann = annotations.load_annotations(f)
    assert list(ann.reader) == ["r1", "r2"]
    f.write_text('image_id,label,shape,points,reader\nX,Cardiomegaly,box,"1,1;5,5"\n')
    with pytest.raises(annotations.AnnotationError, match="line 2.*5 fields"):
        annotations.load_annotations(f)


# ---------------------------------------------------------------- which model scores which image


def test_kfold_never_scores_an_image_with_a_model_trained_on_it():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 40, 120)  # report of each training row (several images per report)
    train_rows = np.arange(120)
    scored = rng.choice(120, 30, replace=False)  # annotated images inside the training split
    folds = regions.fold_assignment(groups[scored], k=5, seed=3)
    assert set(folds) == set(range(5))
    for g in np.unique(groups[scored]):  # a report lies in one fold
        assert len(set(folds[groups[scored] == g])) == 1
    fits = regions.holdout_training_rows(train_rows, groups, groups[scored], folds)
    for f, fit in enumerate(fits):
        mine = scored[folds == f]
        assert not set(mine) & set(fit)
        assert not set(groups[mine]) & set(groups[fit])
        assert len(fit) > 0


# ---------------------------------------------------------------- attribution on the tiny model


def test_vit_reshape_drops_cls():
    t = torch.randn(2, 1 + 9, 4)
    g = attribution.vit_reshape(t)
    assert g.shape == (2, 4, 3, 3)
    assert torch.equal(g[0, :, 0, 1], t[0, 2])  # token 2 = patch (row 0, col 1)
    with pytest.raises(ValueError, match="square"):
        attribution.vit_reshape(torch.randn(1, 1 + 8, 4))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from helpers.data.images import PixelCache
    from helpers.protocols.models import TinyConfig, build_tiny, load_model

    tmp = tmp_path_factory.mktemp("tiny")
    folder = build_tiny(tmp / "m", ["a b", "no c"] * 5, TinyConfig(vit_depth=2, bert_depth=1, image_size=64))
    model, _, _, info = load_model(f"local-dir:{folder}")
    px = np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8)
    cache = PixelCache(px, ["a", "b", "c"], np.ones(3, bool), "k", tmp / "p")
    txt = np.random.default_rng(1).normal(size=(2, info.embed_dim))
    return model, info, cache, explain.EmbeddingScorer(model.visual, explain.zero_shot_head(txt, -txt))


def test_default_layer_is_the_last_one_whose_patches_reach_the_score(tiny):
    model, info, cache, scorer = tiny
    assert attribution.layer_positions(scorer) == ["block 0", "block 1", "final norm"]
    assert attribution.default_layer(scorer) == 1  # CLS-pooled: the last block's input
    x = torch.randn(1, 3, 64, 64)
    maps = attribution.explain_batch(scorer, x, [0], layer=2, methods=("gradcam",))
    assert regions.is_degenerate(maps["gradcam"])[0]  # no patch gradient at the output


def test_each_setting_is_explained_at_its_own_layer(tiny):
    """The positive control pools its patch tokens: its CAM target is the final norm, not the
    CLS-pooled settings' last block input (reading it at theirs was a bug)."""
    import copy

    from helpers.saliency import settings

    model, info, cache, scorer = tiny
    control = positive_control.LocalisingNet(copy.deepcopy(model.visual.trunk), 2)
    layers = settings.cam_layers({"zs": scorer, "control": control})
    assert layers == {"zs": 1, "control": 2}
    assert attribution.layer_positions(control)[layers["control"]] == "final norm"


def test_every_method_returns_maps_of_the_input_size(tiny):
    model, info, cache, scorer = tiny
    for sl, maps in attribution.iter_maps(scorer, cache, [0, 1, 2], [0, 1, 0], info.mean, info.std,
                                          attribution.METHODS, layers=True, batch_size=2, progress=False):
        assert set(attribution.METHODS) | {"gradcam@0", "gradcam@1", "gradcam@2"} == set(maps)
        for m in maps.values():
            assert m.shape == (sl.stop - sl.start, 64, 64) and m.min() >= 0 and m.max() <= 1 + 1e-6


def test_attention_capture_restores_the_fused_flag_and_sees_probabilities(tiny):
    model, info, cache, scorer = tiny
    trunk = model.visual.trunk
    before = [b.attn.fused_attn for b in trunk.blocks]
    x = torch.randn(2, 3, 64, 64)
    with attribution.attention_capture(trunk) as att:
        scorer(x).sum().backward()
        assert all(not b.attn.fused_attn for b in trunk.blocks)
    assert [b.attn.fused_attn for b in trunk.blocks] == before
    a = att[0]["attn"]
    assert a.shape[-1] == a.shape[-2] == 1 + 16 and torch.allclose(a.sum(-1), torch.ones(()), atol=1e-5)
    assert att[-1]["grad"].shape == a.shape
    scorer.zero_grad(set_to_none=True)


def test_rollout_and_chefer_by_hand():
    eye = torch.eye(5).expand(1, 2, 5, 5)
    r = attribution.rollout([eye, eye])
    assert torch.allclose(r, torch.zeros(1, 4))  # identity attention: CLS keeps to itself
    to_patch = torch.zeros(1, 1, 5, 5)
    to_patch[0, 0, :, 3] = 1.0  # every token attends to patch 2 (token 3)
    assert int(attribution.rollout([to_patch]).argmax()) == 2
    assert torch.allclose(attribution.chefer([to_patch], [torch.zeros_like(to_patch)]), torch.zeros(1, 4))
    assert int(attribution.chefer([to_patch], [torch.ones_like(to_patch)]).argmax()) == 2


def test_cascading_randomisation_changes_the_maps(tiny):
    model, info, cache, scorer = tiny
    steps = explain.cascade_steps(scorer)
    assert [s for s, _ in steps] == ["projection", "final norm", "block 1", "block 0", "patch embedding"]
    ref = attribution.compute_maps(scorer, cache, [0, 1, 2], [0, 1, 0], info.mean, info.std, "chefer", progress=False)
    weights = {k: v.clone() for k, v in scorer.state_dict().items()}
    for name, rnd in explain.cascade(scorer, seed=0):
        maps = attribution.compute_maps(rnd, cache, [0, 1, 2], [0, 1, 0], info.mean, info.std, "chefer",
                                        progress=False)
    assert not np.allclose(maps, ref, atol=1e-3)
    assert all(torch.equal(v, scorer.state_dict()[k]) for k, v in weights.items())  # the original is intact


# ---------------------------------------------------------------- the positive control


def test_patch_targets_and_pooling():
    masks = np.zeros((2, 32, 32), bool)
    masks[0, 0:16, 0:16] = True  # exactly patch 0 of a 2x2 grid
    masks[1, 20:22, 20:22] = True  # a tiny finding: its most covered patch stays positive
    t = positive_control.patch_targets(masks, 16, 0.25)
    assert t[0].tolist() == [1, 0, 0, 0] and t[1].tolist() == [0, 0, 0, 1]
    from timm.models.vision_transformer import VisionTransformer

    trunk = VisionTransformer(img_size=32, patch_size=16, embed_dim=24, depth=1, num_heads=2, num_classes=0)
    net = positive_control.LocalisingNet(trunk, 3)
    z = torch.randn(2, 4, 3)
    pooled = net.pool(z)
    assert torch.all(pooled <= z.max(1).values + 1e-6) and torch.all(pooled >= z.mean(1) - 1e-6)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert attribution.default_layer(net) == 1  # the final norm: where the head reads the patches
    px = type("C", (), {"pixels": np.random.default_rng(0).integers(0, 255, (2, 32, 32), np.uint8)})()
    maps = attribution.compute_maps(net, px, [0, 1], [0, 2], (0.5,) * 3, (0.5,) * 3, "gradcam",
                                    progress=False)
    assert maps.shape == (2, 32, 32)
    # Grad-CAM on the final norm of a bias-free linear patch head: the label's patch logits
    from helpers.data.images import to_model_input

    with torch.no_grad():
        z = net.patch_logits(to_model_input(px.pixels, (0.5,) * 3, (0.5,) * 3))[[0, 1], :, [0, 2]]
    for m, zz in zip(maps, z):
        if zz.max() > 0:
            assert int(regions.downsample(m[None], 16)[0].argmax()) == int(zz.argmax())


def test_every_classifier_chapter_2_can_select_is_explainable():
    """Chapter 2 selects among paired-prompt templates (with or without an ensemble) and the
    seed's single prompt under each probability mode; chapter 6 must build every one of them
    (a random model once selected 'single prompt (minmax)' and chapter 6 failed)."""
    import types

    from helpers.protocols import zeroshot

    rng = np.random.default_rng(0)
    study = types.SimpleNamespace(labels=list(zeroshot.CHEXPERT_LABELS),
                                  text_embeddings=lambda texts: rng.normal(size=(len(texts), 8)))
    names = [f"{t}{e}" for t in zeroshot.TEMPLATES for e in ("", "+ensemble")]
    names += [zeroshot.SINGLE_PROMPT.format(mode=m) for m in zeroshot.PROB_MODES]
    for name in names:
        pos, neg = explain.zero_shot_classifier(study, name)
        assert pos.shape == (14, 8) and (neg is None) == name.startswith("single prompt")
        scores = explain.zero_shot_head(pos, neg)(torch.randn(3, 8))
        assert scores.shape == (3, 14)
    assert explain.parse_classifier("single prompt (softmax)") == ("bare", False, "softmax")
    with pytest.raises(ValueError, match="single prompt \\(sigmoid\\)"):
        explain.parse_classifier("single prompt (tanh)")
