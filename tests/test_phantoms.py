"""Phantoms: determinism, masks where the findings are, styles that differ."""

import cv2
import numpy as np
import pandas as pd
import pytest

from helpers import phantoms as P
from helpers.labels import CHEXPERT_LABELS

INSIDE_LUNGS = ["Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia",
                "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other"]
INSIDE_BODY = ["Enlarged Cardiomediastinum", "Cardiomegaly", "Fracture"]


def one_hot(label):
    return [int(c == label) for c in CHEXPERT_LABELS]


@pytest.fixture(scope="module", autouse=True)
def _data(data_env):
    yield


def test_same_id_gives_identical_bytes():
    y = one_hot("Cardiomegaly")
    a = P.render(y, P.seed_for("CXR1_1_IM-0001-3001", "target"), "target")
    b = P.render(y, P.seed_for("CXR1_1_IM-0001-3001", "target"), "target")
    assert P._png(a[0]) == P._png(b[0]) and np.array_equal(a[1], b[1])
    c = P.render(y, P.seed_for("CXR2_IM-0652-1001", "target"), "target")
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("label", [c for c in CHEXPERT_LABELS if c != "No Finding"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_positive_label_has_mask_where_it_belongs(label, seed):
    img, bits, anat = P.render(one_hot(label), 1000 + seed, "source", with_anatomy=True)
    m = P.mask_of(bits, label)
    assert m.sum() > 0, label
    others = bits & ~np.uint16(1 << P.LABEL_BIT[label])
    assert not others.any(), "only the positive label may have a mask"
    if label in INSIDE_LUNGS:
        lungs = cv2.dilate(anat["lungs"].astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        assert (m & lungs).sum() / m.sum() > 0.9, label
    elif label in INSIDE_BODY:
        assert (m & anat["body"]).sum() / m.sum() > 0.9, label


def test_negative_image_has_no_mask():
    img, bits = P.render([0] * 13 + [1], 7, "target")
    assert not bits.any()


def test_findings_change_pixels_inside_their_mask():
    base, _ = P.render([0] * 14, 11, "source")
    img, bits = P.render(one_hot("Lung Lesion"), 11, "source")
    m = P.mask_of(bits, "Lung Lesion")
    diff = np.abs(img.astype(int) - base.astype(int))
    assert diff[m].mean() > 3 * max(diff[~m].mean(), 1e-3)


def test_styles_differ_in_statistics():
    src = np.stack([P.render(one_hot("Cardiomegaly"), s, "source")[0] for s in range(6)]).astype(float)
    tgt = np.stack([P.render(one_hot("Cardiomegaly"), s, "target")[0] for s in range(6)]).astype(float)
    # the target style is brighter (gamma < 1) with less contrast
    assert tgt.mean() - src.mean() > 15
    assert src.std(axis=(1, 2)).mean() - tgt.std(axis=(1, 2)).mean() > 3


def test_unknown_style_lists_valid_ones():
    with pytest.raises(ValueError, match="'sepia'.*source, target"):
        P.render([0] * 14, 0, "sepia")


def test_generate_writes_manifest_and_reuses(tmp_path, monkeypatch):
    table = pd.DataFrame([{"image_id": f"X{i}", **dict(zip(CHEXPERT_LABELS, one_hot(CHEXPERT_LABELS[i])))}
                          for i in range(5)])
    man = P.generate(table, tmp_path, "target", workers=1, progress=False)
    assert list(man.image_id) == list(table.image_id)
    assert set(man.columns) >= {"image_id", "style", "path", "mask_path", "sha256"}
    assert all((tmp_path / p).is_file() for p in man.path)
    calls = []
    monkeypatch.setattr(P, "_render_one", lambda job: calls.append(job) or {})
    again = P.generate(table, tmp_path, "target", workers=1, progress=False)
    assert calls == [] and again.equals(man)
    # an interrupted run resumes: only the missing image is rendered
    (tmp_path / man.path[2]).unlink()
    monkeypatch.undo()
    rendered = []
    orig = P._render_one
    monkeypatch.setattr(P, "_render_one", lambda job: rendered.append(job[0]) or orig(job))
    again = P.generate(table, tmp_path, "target", workers=1, progress=False)
    assert rendered == ["X2"] and list(again.sha256) == list(man.sha256)


def test_grounding_data_loaded():
    assert len(P.lung_templates()) > 400
    boxes = P.finding_boxes()
    for k in ("Atelectasis", "Effusion", "Infiltrate", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
              "vindr:Consolidation", "vindr:Pleural thickening", "vindr:Aortic enlargement"):
        assert len(boxes[k]) > 10, k
