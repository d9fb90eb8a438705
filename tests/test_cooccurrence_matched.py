"""The causal co-occurrence test's design (matched controls on the same images) and the
decorrelated world's label permutation, checked by brute force on tiny cases."""

import itertools

import numpy as np
import pandas as pd
import pytest

from helpers.analysis import cooccurrence as C
from helpers.analysis import findings

FAMILY = {"A": "blob", "B": "blob", "C": "rim", "D": "disk", "E": "blob", "F": "rim"}
LABELS = ["A", "B", "C", "D", "E", "F"]


def test_matched_pairs_keeps_every_partner_and_agrees_with_matched_independent():
    partners = [("A", "B", 30, 3.0), ("A", "C", 25, 2.0), ("B", "E", 20, 1.8)]
    independent = [("C", "D", 9, 1.1), ("A", "E", 8, 1.0)]
    got = C.matched_pairs(partners, independent, FAMILY)
    # brute force: the first unused control with the partner's family relation, in order
    assert got == [(partners[0], ("A", "E", 8, 1.0)), (partners[1], ("C", "D", 9, 1.1)),
                   (partners[2], None)]
    assert C.matched_independent(partners, independent, FAMILY) == [c for _, c in got if c]


def test_causal_design_twins_each_direction_with_its_control():
    partners = [("A", "B", 30, 3.0), ("A", "C", 25, 2.0), ("C", "D", 20, 1.8)]
    independent = [("C", "D", 9, 1.1), ("D", "F", 8, 1.0)]
    matched = C.matched_pairs(partners, independent, FAMILY)
    d = C.causal_design(matched, LABELS, n_pairs=1)
    # A+B (same family) has no same-family control: shown unmatched; A+C is the first tested
    assert d.kinds == [C.UNMATCHED] * 2 + ["partner"] * 2 + ["independent"] * 2
    assert d.pairs == [(0, 1), (1, 0), (0, 2), (2, 0), (2, 3), (3, 2)]
    assert d.twin == [-1, -1, 4, 5, 2, 3]
    for p, t in enumerate(d.twin):  # twinning is symmetric
        assert t < 0 or d.twin[t] == p
    full = C.causal_design(matched, LABELS, n_pairs=5)
    assert full.kinds.count("partner") == 4  # only two partner pairs can be matched


def test_draw_items_puts_twins_on_the_same_images_without_either_label():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 4)) < 0.3).astype(int)
    d = C.Design(pairs=[(0, 1), (2, 3), (1, 0)], kinds=["partner", "independent", "partner"],
                 twin=[1, 0, -1])
    cand = np.arange(0, 200, 2)
    pair, row = C.draw_items(y, cand, d, per_pair=10, seed=3)
    r0, r1, r2 = (row[pair == p] for p in range(3))
    assert np.array_equal(r0, r1) and len(r0) == 10
    assert set(r0) <= set(cand) and (y[r0, 0] == 0).all() and (y[r0, 2] == 0).all()
    assert (y[r2, 1] == 0).all() and np.all(np.diff(r2) > 0)
    again = C.draw_items(y, cand, d, per_pair=10, seed=3)
    assert np.array_equal(again[1], row)  # deterministic


def test_paired_difference_equals_brute_force_on_every_resample():
    """Partner minus matched control, on the same items, over an exhaustive list of resamples."""
    d = C.Design(pairs=[(0, 1), (2, 3)], kinds=["partner", "independent"], twin=[1, 0])
    pair = np.array([0, 0, 0, 1, 1, 1])
    row = np.array([5, 6, 7, 5, 6, 7])
    cf = C.Counterfactuals(d.pairs, d.kinds, pair, row, np.zeros((6, 1, 1), np.uint8),
                           np.zeros((6, 1, 1), np.uint8), d.twin)
    eff = np.array([0.3, 0.1, 0.2, 0.0, 0.1, -0.1])
    part, ind = C.mean_effect(cf, eff, "partner"), C.mean_effect(cf, eff, "independent")
    groups = np.array(["r5", "r6", "r7"] * 2)
    for pick in itertools.product(["r5", "r6", "r7"], repeat=3):  # every resample of reports
        idx = np.concatenate([np.flatnonzero(groups == g) for g in pick])
        by_hand = np.mean([eff[i] - eff[i + 3] for i in idx if i < 3])
        assert part(idx) - ind(idx) == pytest.approx(by_hand)
    cmp = findings.compare(part, ind, groups, n_boot=50)
    point, reps = cmp.difference
    assert point == pytest.approx(0.2)
    assert np.isfinite(reps).all() and len(reps) == 50


def _table(n_reports=40, seed=0):
    rng = np.random.default_rng(seed)
    rep = np.repeat(np.arange(n_reports), 2)[: n_reports + n_reports // 2]  # some with 2 images
    t = pd.DataFrame({"image_id": [f"i{k}" for k in range(len(rep))], "report_id": rep,
                      "split": np.where(rep < n_reports // 2, "train", "val")})
    lab = rng.random((n_reports, 3)) < [0.5, 0.3, 0.2]
    lab[:, 1] |= lab[:, 0]  # B follows A: strong co-occurrence
    for j, c in enumerate("ABC"):
        t[c] = lab[rep, j].astype(int)
        t[f"text:{c}"] = np.where(lab[rep, j], 1.0, np.nan)
    t.loc[t.A == 1, "text:A"] = -1.0  # uncertain mentions travel with their binary label
    return t


def test_decorrelate_keeps_each_labels_prevalence_per_split_and_report():
    t = _table()
    d = C.decorrelate(t, list("ABC"), seed=1)
    assert (d[["image_id", "report_id", "split"]] == t[["image_id", "report_id", "split"]]).all().all()
    for s in ("train", "val"):
        a, b = (x[x.split == s].drop_duplicates("report_id") for x in (t, d))
        for c in "ABC":  # the same multiset of values over reports
            assert sorted(a[c]) == sorted(b[c])
            assert sorted(a[f"text:{c}"].fillna(9)) == sorted(b[f"text:{c}"].fillna(9))
    # images of one report keep sharing labels; binary and three-valued move together
    assert (d.groupby("report_id")[list("ABC")].nunique() == 1).all().all()
    assert ((d["text:A"] == -1) == (d.A == 1)).all()
    assert not d.equals(t)
    assert C.decorrelate(t, list("ABC"), seed=1).equals(d)


def test_decorrelate_destroys_cooccurrence():
    rng = np.random.default_rng(2)
    n = 4000
    a = rng.random(n) < 0.3
    b = np.where(a, rng.random(n) < 0.8, rng.random(n) < 0.05)
    t = pd.DataFrame({"image_id": np.arange(n).astype(str), "report_id": np.arange(n),
                      "split": "train", "A": a.astype(int), "B": b.astype(int)})
    before = C.lift_summary(t[["A", "B"]].to_numpy(), ["A", "B"], [("A", "B")])[0]
    d = C.decorrelate(t, ["A", "B"], seed=0)
    after = C.lift_summary(d[["A", "B"]].to_numpy(), ["A", "B"], [("A", "B")])[0]
    assert before > 2.5 and abs(after - 1) < 0.15
    # lift by brute force
    y = t[["A", "B"]].to_numpy()
    assert before == pytest.approx((y[:, 0] & y[:, 1]).mean() / (y[:, 0].mean() * y[:, 1].mean()))
