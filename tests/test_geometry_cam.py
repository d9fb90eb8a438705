"""Class distances on hand-made cases; saliency maps and localisation metrics; annotation files."""

import numpy as np
import pytest
import torch

from helpers import annotations as A
from helpers import cam as C
from helpers import geometry as G


def test_class_geometry_by_hand():
    # class 0: points (0,0) and (2,0), centroid (1,0); class 1: (10,0) and (10,2), centroid (10,1)
    e = np.array([[0, 0], [2, 0], [10, 0], [10, 2]], float)
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    g = G.class_geometry(e, y, min_count=2)
    np.testing.assert_allclose(g["intra"], [1.0, 1.0])
    np.testing.assert_allclose(g["inter"], [np.hypot(9, 1)] * 2)
    assert g["ratio_all"] == pytest.approx(np.hypot(9, 1))


def test_multilabel_image_counts_toward_each_class_and_small_classes_are_left_out():
    e = np.array([[0, 0], [2, 0], [1, 3]], float)
    y = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 0]])
    g = G.class_geometry(e, y, min_count=2)
    assert g["used"].tolist() == [True, True, False]
    assert g["intra"][1] == pytest.approx(np.hypot(0.5, 1.5))  # members (2,0), (1,3)
    assert np.isnan(g["intra"][2])


def test_geometry_ci_contains_estimate():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 3)) < 0.4).astype(int)
    e = y @ rng.normal(size=(3, 8)) * 3 + rng.normal(size=(200, 8))
    out = G.geometry_with_ci(e, y, np.arange(200) // 2, ["a", "b", "c"], n_boot=50)
    for k in ("inter", "intra", "ratio"):
        assert out[f"{k}_ci"][0] <= out[k] <= out[f"{k}_ci"][1]


def test_vit_reshape_drops_cls():
    t = torch.randn(2, 1 + 9, 4)
    g = C.vit_reshape(t)
    assert g.shape == (2, 4, 3, 3)
    assert torch.equal(g[0, :, 0, 1], t[0, 2])  # token 2 = patch (row 0, col 1)
    with pytest.raises(ValueError, match="square"):
        C.vit_reshape(torch.randn(1, 1 + 8, 4))


def test_metrics_of_a_map_on_and_off_the_region():
    mask = np.zeros((1, 20, 20), bool)
    mask[0, 5:10, 5:10] = True
    on = np.zeros((1, 20, 20))
    on[0, 5:10, 5:10] = 1.0
    on[0, 7, 7] = 1.0
    off = np.zeros((1, 20, 20))
    off[0, 14:19, 14:19] = 1.0
    assert C.pointing_game(on, mask)[0] == 1 and C.iou(on, mask, 0.5)[0] == 1.0
    assert C.pointing_game(off, mask)[0] == 0 and C.iou(off, mask, 0.5)[0] == 0.0
    r = C.localization(np.concatenate([on, off]), np.concatenate([mask, mask]), 0.5, [0, 1], n_boot=20)
    assert r["pointing"] == 0.5 and r["hit"] == 0.5


def test_threshold_chosen_to_maximise_iou():
    mask = np.zeros((1, 10, 10), bool)
    mask[0, :5] = True
    m = np.zeros((1, 10, 10))
    m[0, :5] = 0.8
    m[0, 5:] = 0.3
    t = C.choose_threshold(m, mask)
    assert 0.3 < t <= 0.8


def test_maps_have_input_shape_and_unit_range(tmp_path):
    from helpers.images import PixelCache
    from helpers.models import TinyConfig, build_tiny, load_model

    folder = build_tiny(tmp_path / "m", ["a b", "no c"] * 5, TinyConfig(vit_depth=2, bert_depth=1, image_size=64))
    model, _, tok, info = load_model(f"local-dir:{folder}")
    px = np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8)
    cache = PixelCache(px, ["a", "b", "c"], np.ones(3, bool), "k", tmp_path / "p")
    txt = np.random.default_rng(1).normal(size=(2, info.embed_dim))
    sc = C.EmbeddingScorer(model.visual, C.zero_shot_head(txt, -txt))
    for method in C.METHODS:
        maps = C.compute_maps(sc, cache, [0, 1, 2], [0, 1, 0], info.mean, info.std, method=method, progress=False)
        assert maps.shape == (3, 64, 64) and maps.min() >= 0 and maps.max() <= 1 + 1e-6
    rnd = C.randomized_copy(model.visual)
    a, b = dict(model.visual.named_parameters()), dict(rnd.named_parameters())
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_annotations_load_rasterize_and_reject_bad_lines(tmp_path):
    ann = A.load_annotations(A.EXAMPLE)
    assert set(ann["shape"]) == {"box", "polygon"}
    m = A.rasterize(ann.iloc[:1], 2500, 2500)
    assert m[1500, 1500] and not m[100, 100]
    bad = tmp_path / "bad.csv"
    bad.write_text('image_id,label,shape,points\nX,Cardiomegaly,box,"1,1;5,5"\nY,Cardiomegaly,box,"1,1"\n')
    with pytest.raises(A.AnnotationError, match="line 3"):
        A.load_annotations(bad)
    bad.write_text('image_id,label,shape,points\nX,Heart Big,box,"1,1;5,5"\n')
    with pytest.raises(A.AnnotationError, match="line 2.*label"):
        A.load_annotations(bad)


def test_nih_boxes_in_the_same_frame():
    b = A.nih_boxes()
    assert len(b) > 500 and set(b.label) <= set(A.NIH_TO_CHEXPERT.values())
