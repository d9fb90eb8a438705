"""Referee: the ranking, threshold-free and calibration metrics against sklearn or a brute-force
definition, on adversarial inputs (ties, constant scores, all-negative and all-positive rows
and labels, a single image, shifted and tiny-spread scores, empty input)."""

import itertools

import numpy as np
import pytest
from sklearn.metrics import (average_precision_score, coverage_error,
                             label_ranking_average_precision_score, label_ranking_loss,
                             roc_auc_score)

from helpers.analysis import metrics as M


def _cases():
    rng = np.random.default_rng(0)
    y = (rng.random((60, 5)) < [0.05, 0.2, 0.5, 0.8, 0.3]).astype(int)
    y[0], y[1] = 0, 1
    base = rng.random((60, 5)) + 0.5 * y
    yield "plain", y, base
    yield "ties", y, np.round(base, 1)
    yield "constant", y, np.zeros_like(base)
    yield "shifted", y, base + 1e6
    yield "tiny-spread", y, 1 + 1e-9 * base
    yield "separable", y, y + 0.0
    yield "one image", y[2:3], base[2:3]


@pytest.mark.parametrize("name, y, s", list(_cases()), ids=[c[0] for c in _cases()])
def test_ranking_metrics_equal_sklearn(name, y, s):
    r = M.ranking_metrics(y, s)
    assert r["lrap"] == pytest.approx(label_ranking_average_precision_score(y, s))
    assert r["coverage_error"] == pytest.approx(coverage_error(y, s))
    assert r["ranking_loss"] == pytest.approx(label_ranking_loss(y, s))


@pytest.mark.parametrize("name, y, s", list(_cases())[:-1], ids=[c[0] for c in _cases()][:-1])
def test_auroc_and_auprc_equal_sklearn(name, y, s):
    for j in range(y.shape[1]):
        both = 0 < y[:, j].sum() < len(y)
        auc = M.per_label_auroc(y, s)[j]
        ap = M.per_label_ap(y, s)[j]
        if both:
            assert auc == pytest.approx(roc_auc_score(y[:, j], s[:, j]))
        else:
            assert np.isnan(auc)
        if y[:, j].sum():
            assert ap == pytest.approx(average_precision_score(y[:, j], s[:, j]))
        else:
            assert np.isnan(ap)


def _lrap_brute(y, s):
    """LRAP straight from its definition, one image and one label at a time."""
    out = []
    for yi, si in zip(y, s):
        pos = np.flatnonzero(yi)
        if len(pos) in (0, len(yi)):
            out.append(1.0)
            continue
        out.append(np.mean([sum(si[b] >= si[a] for b in pos) / sum(si >= si[a]) for a in pos]))
    return float(np.mean(out))


def test_lrap_against_its_definition_on_every_tiny_case():
    """Every 0/1 target row and every ranking (with ties) of 3 labels, exhaustively."""
    rows = list(itertools.product([0, 1], repeat=3))
    scores = list(itertools.product([0.0, 0.5, 1.0], repeat=3))
    y = np.array([r for r in rows for _ in scores])
    s = np.array([sc for _ in rows for sc in scores])
    assert M.ranking_metrics(y, s)["lrap"] == pytest.approx(_lrap_brute(y, s))


def _ece_brute(y, p, n_bins):
    eces = []
    for j in range(y.shape[1]):
        total = 0.0
        for b in range(n_bins):
            lo, hi = b / n_bins, (b + 1) / n_bins
            inb = [(pi, yi) for pi, yi in zip(p[:, j], y[:, j])
                   if lo <= pi < hi or (b == n_bins - 1 and pi == 1.0)]
            if inb:
                ps, ys = zip(*inb)
                total += len(inb) / len(y) * abs(np.mean(ys) - np.mean(ps))
        eces.append(total)
    return float(np.mean(eces))


@pytest.mark.parametrize("kind", ["plain", "edges", "constant", "one image"])
def test_ece_against_its_definition(kind):
    rng = np.random.default_rng(1)
    y = (rng.random((50, 3)) < 0.3).astype(int)
    p = rng.random((50, 3))
    if kind == "edges":
        p = rng.choice([0.0, 0.1, 0.5, 0.9, 1.0], size=(50, 3))
    elif kind == "constant":
        p = np.full((50, 3), 0.3)
    elif kind == "one image":
        y, p = y[:1], p[:1]
    c = M.calibration(y, p)
    assert c["ece"] == pytest.approx(_ece_brute(y, p, M.ECE_BINS))
    assert c["brier"] == pytest.approx(((p - y) ** 2).mean())


def test_empty_input_is_refused_with_a_message():
    with pytest.raises(ValueError, match="no images"):
        M.evaluate(np.zeros((0, 3)), np.zeros((0, 3)), 0.5, list("abc"))
    with pytest.raises(ValueError, match="empty"):
        M.calibration(np.zeros((0, 3)), np.zeros((0, 3)))


def test_bootstrap_ci_is_unchanged_by_the_vectorised_average():
    rng = np.random.default_rng(5)
    n, k = 40, 4
    y = (rng.random((n, k)) < 0.4).astype(int)
    s = rng.random((6, n, k))
    pred = s >= 0.5
    groups = np.repeat(np.arange(20), 2)
    fast = M.bootstrap_ci(y, s, pred, groups, n_boot=30)
    _, lo, hi = M.bootstrap_runs(lambda idx, r: M._headline(y[idx], s[r[0]][idx], pred[r[0]][idx]),
                                 groups, (6,), 30)
    for j, m in enumerate(M.HEADLINE):
        assert fast[m] == pytest.approx([lo[j], hi[j]], rel=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_weighted_headline_equals_the_repeated_rows(seed):
    """A bootstrap resample as multiplicities (nothing re-sorted) against the headline of
    the resampled rows themselves: ties, duplicates, a label without positives, one with
    every image positive, images left out (multiplicity 0)."""
    rng = np.random.default_rng(seed)
    n, k = 25, 6
    y = (rng.random((n, k)) < 0.3).astype(int)
    y[:, 0], y[:, 1] = 0, 1
    s = np.round(rng.random((n, k)), 1)
    pred = rng.random((n, k)) < 0.4
    run = M.WeightedRun(y, s, pred)
    for _ in range(5):
        idx = rng.integers(0, n, n)
        want = M._headline(y[idx], s[idx], pred[idx])
        got = run.headline(np.bincount(idx, minlength=n))
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(run.headline(np.ones(n)), M._headline(y, s, pred), rtol=1e-10,
                               equal_nan=True)
