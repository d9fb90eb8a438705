"""Partner pairs by lift, the observational partner shift, and the causal effect machinery."""

import numpy as np
import pytest

from helpers.analysis import cooccurrence


def test_cooccurrence_pairs_and_partner_shift():
    rng = np.random.default_rng(4)
    n = 2000
    a = rng.random(n) < 0.2
    b = np.where(a, rng.random(n) < 0.7, rng.random(n) < 0.05)  # b follows a
    c = rng.random(n) < 0.2  # independent
    y = np.stack([a, b, c], 1).astype(int)
    pairs = cooccurrence.partner_pairs(y, ["A", "B", "C"])
    assert [(p[0], p[1]) for p in pairs] == [("A", "B")]
    # a score for A that leaks B: raised wherever B is present
    s = np.stack([a + 0.5 * b + 0.1 * rng.random(n), b.astype(float), c.astype(float)], 1)
    assert cooccurrence.partner_shift(s, y, 0, 1) > 0.3
    clean = np.stack([a + 0.1 * rng.random(n), b, c], 1).astype(float)
    assert abs(cooccurrence.partner_shift(clean, y, 0, 1)) < 0.05


def test_independent_pairs_have_lift_near_one():
    rng = np.random.default_rng(5)
    y = (rng.random((4000, 3)) < [0.2, 0.2, 0.2]).astype(int)
    labels = ["A", "B", "C"]
    assert cooccurrence.partner_pairs(y, labels) == []
    assert len(cooccurrence.independent_pairs(y, labels)) == 3


def test_percentile_and_causal_effect_by_hand():
    ref = np.array([0.0, 1.0, 2.0, 3.0])
    assert cooccurrence.percentile_in(ref, np.array([3.0, 0.0, 10.0])) == pytest.approx([0.875, 0.125, 1.0])
    cf = cooccurrence.Counterfactuals(pairs=[(0, 1), (1, 0)], kinds=["partner", "independent"],
                                      pair=np.array([0, 0, 1]), row=np.array([5, 6, 7]),
                                      with_b=np.zeros((3, 2, 2), np.uint8),
                                      without_b=np.zeros((3, 2, 2), np.uint8))
    reference = np.stack([ref, ref], 1)
    with_b = np.array([[3.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    without_b = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    eff = cooccurrence.causal_effects(cf, with_b, without_b, reference)
    assert eff == pytest.approx([0.75, 0.0, 0.0])  # item 3 scores label 1 (pair (1, 0))
    everything = np.arange(3)
    assert cooccurrence.mean_effect(cf, eff, "partner")(everything) == pytest.approx(0.375)
    assert cooccurrence.mean_effect(cf, eff, "independent")(everything) == pytest.approx(0.0)


def test_independent_controls_match_the_partners_drawing_families():
    from helpers.analysis import cooccurrence as C

    family = {"A": "blob", "B": "blob", "C": "rim", "D": "disk", "E": "blob", "F": "rim"}
    partners = [("A", "B", 30, 3.0), ("A", "C", 25, 2.0)]  # same family, then different
    independent = [("C", "D", 9, 1.1), ("A", "E", 8, 1.0), ("C", "F", 7, 0.9)]
    got = C.matched_independent(partners, independent, family)
    assert got == [("A", "E", 8, 1.0), ("C", "D", 9, 1.1)]
    assert C.matched_independent(partners, [("C", "D", 9, 1.1)], family) == [("C", "D", 9, 1.1)]
