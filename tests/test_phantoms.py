"""Phantoms: determinism, masks where the findings are, styles that differ."""

import cv2
import numpy as np
import pandas as pd
import pytest

from helpers.phantoms import rendering as P
from helpers.data.labels import CHEXPERT_LABELS

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
    # the same seed gives the same patient (anatomy and findings) under both acquisitions
    src = [P.render(one_hot("Cardiomegaly"), s, "source", with_anatomy=True) for s in range(6)]
    tgt = [P.render(one_hot("Cardiomegaly"), s, "target", with_anatomy=True) for s in range(6)]
    mean = lambda rs: np.mean([r[0].mean() for r in rs])  # noqa: E731
    spread = lambda rs: np.mean([np.subtract(*np.percentile(r[0][r[2]["body"]], [90, 10])) for r in rs])  # noqa: E731
    # the target style is brighter (gamma < 1) with less contrast inside the body
    assert mean(tgt) - mean(src) > 15
    assert spread(src) - spread(tgt) > 15


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


# --------------------------------------------------------------------------------------
# Counterfactual phantoms, label interface, noise, resolvability (phantoms v3)
# --------------------------------------------------------------------------------------

FINDINGS = list(P.FINDING_DRAWERS)


def test_registry_covers_every_finding_in_label_order():
    assert FINDINGS == [c for c in CHEXPERT_LABELS if c != "No Finding"]
    assert list(P.DRAWING_FAMILY) == FINDINGS
    fam = P.DRAWING_FAMILY
    assert fam["Lung Opacity"] == fam["Pneumonia"] == fam["Consolidation"]
    assert fam["Cardiomegaly"] != fam["Lung Opacity"]


@pytest.mark.parametrize("style", ["source", "target"])
@pytest.mark.parametrize("toggle", FINDINGS)
def test_counterfactual_changes_nothing_outside_the_toggled_mask(toggle, style):
    for seed in (3, 4, 5):
        rng = np.random.default_rng(seed)
        labels = {c: float(rng.choice([1, -1, 0, np.nan], p=[0.3, 0.1, 0.3, 0.3])) for c in CHEXPERT_LABELS}
        with_, without, m = P.render_counterfactual(labels, seed, toggle, style, size=112)
        changed = with_ != without
        assert m.any() and changed.any(), (toggle, seed)
        assert not (changed & ~m).any(), f"{toggle} (seed {seed}) changed {int((changed & ~m).sum())} px outside its mask"
        # the mask is tight: a sizeable part of it actually changes
        assert changed[m].mean() > 0.05, (toggle, seed, changed[m].mean())


def test_counterfactual_matches_the_plain_render():
    labels = one_hot("Edema")
    img, bits = P.render(labels, 21, "target", size=112)
    with_, without, m = P.render_counterfactual(labels, 21, "Edema", "target", size=112)
    assert np.array_equal(img, with_) and np.array_equal(P.mask_of(bits, "Edema"), m)
    no, nobits = P.render([0] * 14, 21, "target", size=112)
    assert np.array_equal(no, without) and not nobits.any()


def test_same_seed_same_pixels_with_three_valued_labels_and_noise():
    labels = {"Cardiomegaly": 1, "Pneumonia": -1, "Edema": float("nan"), "Fracture": 0}
    noise = {"Pneumonia": (0.2, 0.3, 0.01)}
    a = P.render(labels, 8, "target", size=96, noise=noise)
    b = P.render(labels, 8, "target", size=96, noise=noise)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def _ctr(mask: np.ndarray, lungs: np.ndarray) -> float:
    xs = np.nonzero(mask.any(0))[0]
    lx = np.nonzero(lungs.any(0))[0]
    return (xs.max() - xs.min() + 1) / (lx.max() - lx.min())


def test_cardiothoracic_ratios_of_positives_and_negatives_overlap():
    from helpers.phantoms import drawers as F

    neg, pos = [], []
    for s in range(150):
        an = F.anatomy(P.stream(s, "anatomy"), 112)
        big = F.draw_cardiomegaly(an, P.stream(s, "Cardiomegaly"), 1.0).region
        neg.append(_ctr(an.heart_mask(), an.lungs))
        pos.append(_ctr(big, an.lungs))
    neg, pos = np.array(neg), np.array(pos)
    assert (pos > neg).all()                       # toggling Cardiomegaly only grows the heart
    assert 0.40 < np.median(neg) < 0.50 < np.median(pos) < 0.60
    assert np.quantile(neg, 0.9) > np.quantile(pos, 0.1)   # the populations overlap
    assert ((neg > 0.5).mean() > 0.03) and ((pos < 0.5).mean() > 0.03)


@pytest.mark.parametrize("label", FINDINGS)
def test_hedged_findings_are_drawn_with_lower_contrast(label):
    for seed in (1, 2):
        pw, po, m = P.render_counterfactual({label: 1}, seed, label, "source", size=112)
        hw, ho, _ = P.render_counterfactual({label: -1}, seed, label, "source", size=112)
        assert np.array_equal(po, ho)  # the finding-free image is the same
        pos = np.abs(pw.astype(int) - po)[m].mean()
        hedged = np.abs(hw.astype(int) - ho)[m].mean()
        assert hedged < 0.8 * pos, (label, seed, hedged, pos)
    c_pos = P.finding_plan({label: 1}, 1)[label]
    assert P.finding_plan({label: -1}, 1)[label] == pytest.approx(P.HEDGE_FACTOR * c_pos)


def test_a_fraction_of_positives_is_subtle():
    cs = np.array([P.finding_plan({"Lung Opacity": 1}, s)["Lung Opacity"] for s in range(400)])
    subtle = (cs < P.CLEAR_RANGE[0]).mean()
    assert abs(subtle - P.SUBTLE_FRACTION) < 0.07
    assert cs.min() >= P.SUBTLE_RANGE[0] and cs.max() <= 1


def test_bad_label_values_and_names_are_refused():
    with pytest.raises(ValueError, match="'Cardiomegaly' has value 2"):
        P.render({"Cardiomegaly": 2}, 0, size=64)
    with pytest.raises(ValueError, match="present names \\['Heart'\\]"):
        P.render([0] * 14, 0, size=64, present={"Heart": True})
    with pytest.raises(ValueError, match="toggle='No Finding'"):
        P.render_counterfactual([0] * 14, 0, "No Finding")


def _noise_table() -> pd.DataFrame:
    n = 10
    df = pd.DataFrame({f"{p}:{c}": [0.0] * n for c in FINDINGS for p in ("text", "mesh")})
    df["text:Cardiomegaly"] = [1, 1, 1, 1, -1, -1, 0, np.nan, 0, 0]
    df["mesh:Cardiomegaly"] = [1, 1, 1, 0, 1, 0, 0, 0, 1, 0]
    df["text:Edema"] = [np.nan] * n
    return df


def test_noise_rates_against_a_hand_computed_table():
    r = P.noise_rates(_noise_table())
    assert list(r.index) == FINDINGS
    assert r.loc["Cardiomegaly", "miss_positive"] == pytest.approx(1 / 4)
    assert r.loc["Cardiomegaly", "miss_uncertain"] == pytest.approx(1 / 2)
    assert r.loc["Cardiomegaly", "extra"] == pytest.approx(1 / 4)
    assert r.loc["Cardiomegaly", ["n_positive", "n_uncertain", "n_unlabelled"]].tolist() == [4, 2, 4]
    assert r.loc["Edema", list(P.NOISE_COLUMNS)].tolist() == [0, 0, 0]  # empty groups: no noise
    with pytest.raises(ValueError, match="mesh:<label>"):
        P.noise_rates(_noise_table().drop(columns=["mesh:Fracture"]))


def test_noise_drops_and_adds_findings_at_the_given_rates():
    noise = {"Pneumonia": (0.4, 1.0, 0.0), "Fracture": (0.0, 0.0, 0.25)}
    plans = [P.finding_plan({"Pneumonia": 1, "Atelectasis": -1}, s, noise=noise) for s in range(600)]
    assert abs(np.mean(["Pneumonia" in p for p in plans]) - 0.6) < 0.06
    assert abs(np.mean(["Fracture" in p for p in plans]) - 0.25) < 0.06
    assert all("Atelectasis" in p for p in plans)          # no noise given for it
    plans = [P.finding_plan({"Pneumonia": -1}, s, noise=noise) for s in range(50)]
    assert not any("Pneumonia" in p for p in plans)        # miss_uncertain = 1
    # a finding left out by noise has no mask; the geometry of the others does not move
    s = next(i for i in range(600) if "Pneumonia" not in P.finding_plan({"Pneumonia": 1}, i, noise=noise))
    img, bits = P.render({"Pneumonia": 1}, s, "source", size=96, noise=noise)
    assert not P.mask_of(bits, "Pneumonia").any()
    with pytest.raises(ValueError, match="noise\\['Heart'\\]"):
        P.render([0] * 14, 0, size=64, noise={"Heart": (0, 0, 0)})


def test_generate_draws_from_three_valued_labels_not_the_policy(tmp_path):
    def table(text_edema, binary_edema):
        row = {"image_id": "X0", **{c: 0 for c in CHEXPERT_LABELS}, "Edema": binary_edema}
        row.update({f"text:{c}": np.nan for c in CHEXPERT_LABELS})
        row["text:Edema"] = text_edema
        return pd.DataFrame([row])

    a = P.generate(table(-1, 1), tmp_path / "a", "target", size=96, workers=1, progress=False)
    b = P.generate(table(-1, 0), tmp_path / "b", "target", size=96, workers=1, progress=False)
    c = P.generate(table(1, 1), tmp_path / "c", "target", size=96, workers=1, progress=False)
    assert a.sha256[0] == b.sha256[0]   # the binarisation policy never changes a pixel
    assert a.sha256[0] != c.sha256[0]   # a hedged mention is drawn differently from a positive one
    noisy = P.generate(table(1, 1), tmp_path / "c", "target", size=96, workers=1, progress=False,
                       noise={"Edema": (1.0, 1.0, 0.0)})
    assert noisy.sha256[0] != c.sha256[0]  # the noise rates are part of the cache key


def test_resolvability_table():
    t = P.resolvability("target", size=112, input_size=80, patch=8, n=2)
    assert list(t.index) == FINDINGS
    assert {"family", "area_px", "area_patches", "thickness_px", "contrast", "cnr", "frac_resolvable",
            "resolvable", "reason"} <= set(t.columns)
    assert (t.area_px > 0).all() and (t.contrast > 0).all()
    assert (t.reason.eq("") == t.resolvable).all()
    assert ((t.area_patches >= 1) & (t.cnr >= 1)).eq(t.resolvable).all()
    # a nodule or mass is far smaller than the bilateral edema haze
    assert t.loc["Lung Lesion", "area_px"] < t.loc["Edema", "area_px"]
