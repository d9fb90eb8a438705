"""Referee: Platt scaling against sklearn's sigmoid calibration, on adversarial logits.

The chapter-2 calibration verdict rests on :func:`helpers.analysis.metrics.fit_platt`. The reference is
sklearn's ``calibration._sigmoid_calibration`` (Platt's method with his smoothed targets, the
one ``CalibratedClassifierCV(method="sigmoid")`` uses; it returns ``P = 1 / (1 + exp(A f + B))``,
so ``a = -A``, ``b = -B``), and where sklearn's L-BFGS cannot reach the optimum (tiny spread),
the loss itself: ours must be at least as low.
"""

import numpy as np
import pytest
from sklearn.calibration import _sigmoid_calibration

from helpers.analysis import metrics as M


def _platt_loss(z, y, a, b):
    t = M.platt_targets(y)
    eta = a * z + b
    return float(np.sum(np.logaddexp(0.0, eta) - t * eta))


def _sklearn(z, y):
    A, B = _sigmoid_calibration(z, y)
    return -A, -B


def _case(kind, seed=0, n=300):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(int)
    z = rng.normal(0, 1, n) + 1.5 * y
    if kind == "shifted":
        z = z + 1e4
    elif kind == "tiny-spread":
        z = 5.0 + 1e-6 * z
    elif kind == "separable":
        z = np.where(y == 1, 2.0, -2.0) + 0.1 * rng.normal(size=n)
    elif kind == "one-class":
        y = np.zeros(n, int)
    elif kind == "rare":
        y = np.zeros(n, int)
        y[:2] = 1
    elif kind == "large":
        z = 40 * z
    return z, y


@pytest.mark.parametrize("kind", ["plain", "shifted", "separable", "one-class", "rare", "large"])
def test_platt_matches_sklearn(kind):
    z, y = _case(kind)
    (a,), (b,) = M.fit_platt(z[:, None], y[:, None])
    a_ref, b_ref = _sklearn(z, y)
    # the same probabilities, and a loss at least as low as the reference's
    np.testing.assert_allclose(M.sigmoid(a * z + b), M.sigmoid(a_ref * z + b_ref), atol=2e-3)
    assert _platt_loss(z, y, a, b) <= _platt_loss(z, y, a_ref, b_ref) + 1e-6
    assert np.isfinite(a) and np.isfinite(b) and abs(a * z.std()) < 1e3


def test_tiny_spread_reaches_the_optimum_sklearn_misses():
    """Logits within 1e-6 of each other carry the same ranking as the plain case: the fit
    must find the same probabilities (scale-free), where sklearn's L-BFGS stops early."""
    z, y = _case("tiny-spread")
    (a,), (b,) = M.fit_platt(z[:, None], y[:, None])
    z0, _ = _case("plain")
    (a0,), (b0,) = M.fit_platt(z0[:, None], y[:, None])
    np.testing.assert_allclose(M.sigmoid(a * z + b), M.sigmoid(a0 * z0 + b0), atol=1e-4)
    a_ref, b_ref = _sklearn(z, y)
    assert _platt_loss(z, y, a, b) <= _platt_loss(z, y, a_ref, b_ref) + 1e-9


def test_constant_logits_fit_only_an_intercept():
    y = np.r_[np.ones(3), np.zeros(7)].astype(int)
    (a,), (b,) = M.fit_platt(np.full((10, 1), 3.0), y[:, None])
    t = M.platt_targets(y)
    assert a == 0.0 and M.sigmoid(b) == pytest.approx(t.mean())


def test_intercept_only_keeps_the_slope_and_matches_a_brute_force_search():
    z, y = _case("shifted")
    (a,), (b,) = M.fit_platt(z[:, None], y[:, None], slope=False)
    grid = np.linspace(b - 1, b + 1, 2001)
    best = grid[np.argmin([_platt_loss(z, y, 1.0, g) for g in grid])]
    assert a == 1.0 and b == pytest.approx(best, abs=1e-3)


def test_calibration_after_platt_matches_sklearns_on_overconfident_logits():
    """The failure the book published (ECE 0.281 where sklearn gives 0.004): on over-confident
    zero-shot-like logits, Platt fitted on one half must calibrate the other half as well as
    sklearn's fit does, and better than the raw sigmoid."""
    rng = np.random.default_rng(3)
    y = (rng.random((2000, 3)) < [0.05, 0.2, 0.5]).astype(int)
    z = 30 * (rng.normal(size=y.shape) + 0.8 * y)
    fit, held = slice(0, 1000), slice(1000, None)
    a, b = M.fit_platt(z[fit], y[fit])
    ours = M.calibration(y[held], M.sigmoid(a * z[held] + b))["ece"]
    ref = np.stack([M.sigmoid(a_j * z[held, j] + b_j) for j, (a_j, b_j) in
                    enumerate(_sklearn(z[fit, j], y[fit, j]) for j in range(3))], 1)
    assert ours <= M.calibration(y[held], ref)["ece"] + 0.005
    assert ours < M.calibration(y[held], M.sigmoid(z[held]))["ece"] / 5
