"""Metrics agree with sklearn on hand-made cases; bootstrap CIs are sane and deterministic."""

import numpy as np
import pytest
from sklearn.metrics import coverage_error, f1_score, label_ranking_average_precision_score, roc_auc_score

from helpers.analysis import metrics as M

Y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 1]])
S = np.array([[.9, .2, .1], [.3, .8, .2], [.6, .7, .1], [.2, .1, .9], [.4, .3, .6], [.1, .9, .3]])
NAMES = ["a", "b", "c"]


def test_point_metrics_match_sklearn():
    out = M.evaluate(Y, S, 0.5, NAMES)
    pred = (S >= 0.5).astype(int)
    assert out["f1_macro"] == pytest.approx(f1_score(Y, pred, average="macro"))
    assert out["f1_micro"] == pytest.approx(f1_score(Y, pred, average="micro"))
    assert out["exact_match"] == pytest.approx((pred == Y).all(1).mean())
    assert out["lrap"] == pytest.approx(label_ranking_average_precision_score(Y, S))
    assert out["coverage_error"] == pytest.approx(coverage_error(Y, S))
    for j, n in enumerate(NAMES):
        assert out["per_label"][n]["auroc"] == pytest.approx(roc_auc_score(Y[:, j], S[:, j]))
    assert out["auroc_macro"] == pytest.approx(np.mean([roc_auc_score(Y[:, j], S[:, j]) for j in range(3)]))


def test_hand_computed_exact_match_and_rates():
    y = np.array([[1, 0], [0, 1]])
    s = np.array([[0.9, 0.8], [0.1, 0.7]])
    out = M.evaluate(y, s, [0.5, 0.5], ["x", "z"])
    assert out["exact_match"] == 0.5  # second row right, first has a false positive
    assert out["per_label"]["z"]["predicted_rate"] == 1.0 and out["per_label"]["z"]["prevalence"] == 0.5
    assert out["coverage_error"] == 1.0  # each row's one true label is ranked first
    worse = M.evaluate(np.array([[0, 1], [1, 0]]), np.array([[0.9, 0.2], [0.9, 0.2]]), 0.5, ["x", "z"])
    assert worse["coverage_error"] == 1.5  # row 1: the true label is ranked second; row 2: first
    assert worse["lrap"] == 0.75  # precision at the true label's rank: 1/2 and 1


def test_label_with_one_class_has_no_auroc():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    out = M.evaluate(y, np.random.default_rng(0).random((3, 2)), 0.5, ["x", "z"])
    assert out["per_label"]["z"]["auroc"] is None and np.isfinite(out["auroc_macro"])


def test_bootstrap_contains_estimate_and_is_deterministic():
    rng = np.random.default_rng(1)
    y = (rng.random((200, 4)) < 0.3).astype(int)
    s = y * 0.6 + rng.random((200, 4)) * 0.7
    groups = np.repeat(np.arange(100), 2)
    a = M.evaluate(y, s, 0.5, list("abcd"), groups, n_boot=200, seed=3)
    b = M.evaluate(y, s, 0.5, list("abcd"), groups, n_boot=200, seed=3)
    assert a["ci95"] == b["ci95"]
    for m in M.HEADLINE:
        lo, hi = a["ci95"][m]
        assert lo <= a[m] <= hi, m
    c = M.evaluate(y, s, 0.5, list("abcd"), groups, n_boot=200, seed=4)
    assert c["ci95"] != a["ci95"]


def test_tuned_thresholds_maximise_f1():
    rng = np.random.default_rng(0)
    y = (rng.random((300, 3)) < 0.2).astype(int)
    s = y * 0.5 + rng.random((300, 3))
    t = M.tune_thresholds(y, s)
    for j in range(3):
        best = f1_score(y[:, j], s[:, j] >= t[j])
        for cand in np.unique(s[:, j]):
            assert f1_score(y[:, j], s[:, j] >= cand) <= best + 1e-12


def test_threshold_for_label_without_positives_predicts_nothing():
    t = M.tune_thresholds(np.array([[0], [0]]), np.array([[0.2], [0.7]]))
    assert t[0] > 0.7


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match="targets .* and scores .* differ"):
        M.evaluate(Y, S[:, :2], 0.5, NAMES)


def test_bootstrap_stat_point_inside_ci():
    rng = np.random.default_rng(0)
    x = rng.random(100)
    groups = np.repeat(np.arange(50), 2)
    e = M.bootstrap_stat(lambda idx: x[idx].mean(), groups, n_boot=300, seed=0)
    assert e.value == pytest.approx(x.mean()) and e.contains(e.value)
    assert M.bootstrap_stat(lambda idx: x[idx].mean(), groups, n_boot=300, seed=0) == e


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_metrics_equal_sklearn(seed):
    from sklearn.metrics import (coverage_error, f1_score, label_ranking_average_precision_score,
                                 label_ranking_loss, roc_auc_score)

    rng = np.random.default_rng(seed)
    y = (rng.random((120, 6)) < 0.25).astype(int)
    y[0] = 0
    y[1] = 1  # all-negative and all-positive rows
    s = np.round(rng.random((120, 6)), 1)  # many ties
    pred = (s >= 0.5).astype(int)
    r = M.ranking_metrics(y, s)
    assert r["lrap"] == pytest.approx(label_ranking_average_precision_score(y, s))
    assert r["coverage_error"] == pytest.approx(coverage_error(y, s))
    assert r["ranking_loss"] == pytest.approx(label_ranking_loss(y, s))
    np.testing.assert_allclose(M.per_label_auroc(y, s), [roc_auc_score(y[:, j], s[:, j]) for j in range(6)])
    assert M._f1(y.astype(bool), pred.astype(bool)) == pytest.approx(
        (f1_score(y, pred, average="macro", zero_division=0), f1_score(y, pred, average="micro", zero_division=0)))
