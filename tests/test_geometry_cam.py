"""Class distances on hand-made cases; annotation files. (Saliency maps and their scoring: test_cam.py.)"""

import numpy as np
import pytest

from helpers.analysis.estimate import Estimate
from helpers.data import annotations as A
from helpers.analysis import geometry as G


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
        e = Estimate.read(out, k)
        assert e.low <= e.value <= e.high


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
