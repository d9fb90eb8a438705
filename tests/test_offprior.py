"""Off-prior phantoms (chapter 6): the prior's top-mass region and overlap against brute force,
the bitmask geometry against the study's own mask path, the positive control's marks, and the
selection end to end on a tiny fake study (rendered, cached, deterministic)."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from helpers.data.labels import CHEXPERT_LABELS
from helpers.phantoms.rendering import LABEL_BIT, mask_of
from helpers.saliency import offprior as O
from helpers.saliency.explain import to_input_geometry
from helpers.saliency.positive_control import ControlConfig, grating, mark_regions


def brute_top_mass(p, mass):
    """The largest threshold t whose region {p >= t} holds at least ``mass`` of the total."""
    total = p.sum()
    best = None
    for t in np.unique(p):
        if p[p >= t].sum() >= mass * total - 1e-12:
            best = t if best is None or t > best else best
    return p >= best


@pytest.mark.parametrize("seed", range(6))
def test_top_mass_region_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    p = rng.integers(0, 4, (7, 7)).astype(float)  # many ties
    for mass in (0.1, 0.5, 0.9, 1.0):
        assert np.array_equal(O.top_mass_region(p, mass), brute_top_mass(p, mass))
    assert not O.top_mass_region(np.zeros((3, 3))).any()


def test_prior_overlap_by_hand():
    prior = {"A": np.array([[4.0, 0, 0], [0, 0, 0], [0, 0, 0]]),  # top half: one pixel
             "B": np.ones((3, 3))}  # flat: every pixel ties, so the whole image
    m = np.zeros((3, 3, 3), bool)
    m[0, 0, :2] = True      # A: half inside
    m[1, 2, 2] = True       # A: outside
    m[2, 1, 1] = True       # B: inside (flat prior)
    got = O.prior_overlap(m, ["A", "A", "B"], prior)
    assert got == pytest.approx([0.5, 0.0, 1.0])
    assert np.isnan(O.prior_overlap(m[:1], ["C"], prior)[0])
    assert np.isnan(O.prior_overlap(np.zeros((1, 3, 3), bool), ["A"], prior)[0])


@pytest.mark.parametrize("shape", [(224, 224), (230, 224), (224, 250)])
def test_bits_at_input_geometry_equal_each_masks_own_path(shape):
    rng = np.random.default_rng(1)
    bits = np.zeros(shape, np.uint16)
    for lab, k in LABEL_BIT.items():  # blocky random regions per label
        block = rng.random((shape[0] // 8 + 1, shape[1] // 8 + 1)) < 0.2
        bits |= np.kron(block, np.ones((8, 8), bool))[:shape[0], :shape[1]].astype(np.uint16) << k
    small = O.bits_to_input(bits, 160)
    for lab in LABEL_BIT:
        assert np.array_equal(mask_of(small, lab), to_input_geometry(mask_of(bits, lab), 160))


def test_marks_are_the_positive_controls_gratings():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (32, 32)).astype(np.uint8)
    labels = ["A", "B", "C"]
    r = {"B": rng.random((32, 32)) < 0.3, "C": rng.random((32, 32)) < 0.3}
    cfg = ControlConfig(mark_amplitude=50.0, mark_period=8.0)
    by_hand = img.astype(np.float64) + 50.0 * (r["B"] * grating(1, 3, 32, 8.0)
                                               + r["C"] * grating(2, 3, 32, 8.0))
    got = mark_regions(img, r, labels, cfg)
    assert np.abs(got.astype(int) - np.clip(by_hand, 0, 255).astype(np.uint8)).max() <= 1
    assert np.array_equal(mark_regions(img, {}, labels, cfg), img)


def _fake_study():
    labels = list(CHEXPERT_LABELS)
    y = np.zeros((4, len(labels)), int)
    y[0, labels.index("Lung Lesion")] = 1
    y[1, labels.index("Pneumothorax")] = 1
    y[2, labels.index("Lung Opacity")] = 1
    y[3, labels.index("No Finding")] = 1  # nothing drawn: not a candidate
    table = pd.DataFrame({"image_id": [f"img{i}" for i in range(4)],
                          "report_id": [f"r{i}" for i in range(4)], "split": "test"})
    for j, c in enumerate(labels):
        table[c] = y[:, j]
        table[f"text:{c}"] = np.where(y[:, j] == 1, 1.0, np.nan)
    return SimpleNamespace(
        style="target", image_source="phantoms", labels=labels, table=table, noise=None,
        y=lambda rows=None: y if rows is None else y[rows],
        rows=lambda split: np.arange(4) if split == "test" else np.zeros(0, int),
        preprocess=None,
        loader=SimpleNamespace(geometry="Resize(64)|CenterCrop(64)"),
        info=SimpleNamespace(image_size=64))


def test_off_prior_selection_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(O, "data_dir", lambda: tmp_path)
    # open_clip's geometry on a square phantom is a plain resize (no torchvision needed here)
    monkeypatch.setattr(O, "geometric_transform", lambda _: lambda im: im.resize((64, 64)))
    monkeypatch.setattr(O, "process_map", lambda fn, jobs, **kw: [fn(j) for j in jobs])
    study = _fake_study()
    # a prior whose mass sits in the top-left corner: most regions lie away from it
    corner = np.zeros((64, 64), np.float32)
    corner[:12, :12] = 1.0
    prior = {c: corner for c in study.labels}
    off = O.off_prior_pairs(study, prior, n_pairs=4, max_rounds=3, max_overlap=0.1,
                            progress=False)
    assert 0 < len(off.pairs) <= 4 and off.n_rendered % 3 == 0 and off.n_examined >= len(off.pairs)
    assert (off.overlap <= 0.1).all()
    assert sum(off.examined_by_label.values()) == off.n_examined
    assert set(off.pairs.table.label) <= set(off.examined_by_label)
    for lab, n in off.pairs.table.label.value_counts().items():
        assert n <= off.found_by_label[lab] <= off.examined_by_label[lab]
    assert np.allclose(O.prior_overlap(off.pairs.masks, off.pairs.table.label, prior), off.overlap)
    t = off.pairs.table
    assert set(t.report_id) <= {"r0", "r1", "r2"} and (t.split == "test").all()
    for i, (row, lab) in enumerate(zip(t.row, t.label)):  # masks are the rendered regions
        assert off.pairs.masks[i].any()
        assert np.array_equal(off.pairs.masks[i], mask_of(off.bits[row], lab))
    assert off.pixels.pixels.shape[1:] == (64, 64)
    marked = off.marked(study.labels, ControlConfig())
    assert marked.pixels.shape == off.pixels.pixels.shape
    assert (marked.pixels != off.pixels.pixels).any()
    # cached: a second call renders nothing; without the image caches it renders only the
    # selected images again, and the pixels are the same
    calls = []
    monkeypatch.setattr(O, "process_map", lambda fn, jobs, **kw: calls.append(len(jobs))
                        or [fn(j) for j in jobs])
    kw = dict(n_pairs=4, max_rounds=3, max_overlap=0.1, progress=False)
    again = O.off_prior_pairs(study, prior, **kw)
    assert calls == [] and again.pairs.table.equals(t)
    assert np.array_equal(again.pixels.pixels, off.pixels.pixels)
    for f in (tmp_path / "cache").glob("offprior-*.npy"):
        f.unlink()
    third = O.off_prior_pairs(study, prior, **kw)
    assert sum(calls) == len(set(t.image_id)) and third.pairs.table.equals(t)
    assert np.array_equal(third.pixels.pixels, off.pixels.pixels)
    assert np.array_equal(third.bits, off.bits)
