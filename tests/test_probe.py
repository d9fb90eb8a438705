"""Linear probe: C chosen on val, separable data is learned, co-occurrence statistics."""

import numpy as np
import pytest
import torch

from helpers.protocols import probe as P


DIRECTIONS = np.random.default_rng(42).normal(size=(3, 16))  # one signal per label, shared by all splits


def _data(n, rng, d=16, k=3):
    y = (rng.random((n, k)) < 0.3).astype(int)
    e = y @ DIRECTIONS + 0.8 * rng.normal(size=(n, d)) + 5.0  # offset: normalisation must cope
    return e, y


def test_probe_learns_and_picks_C_on_val():
    rng = np.random.default_rng(0)
    etr, ytr = _data(400, rng)
    eva, yva = _data(200, rng)
    ete, yte = _data(200, rng)
    p = P.fit_probe(etr, ytr, eva, yva, Cs=[0.001, 0.1, 1.0])
    assert set(p.val_auroc_by_C) == {0.001, 0.1, 1.0}
    assert p.val_auroc_by_C[p.C] == max(p.val_auroc_by_C.values())
    from helpers.analysis.metrics import per_label_auroc

    assert np.nanmean(per_label_auroc(yte, p.decision_function(ete))) > 0.9
    assert p.coef.shape == (3, 16) and p.fit_s > 0


def test_torch_logits_match_numpy():
    rng = np.random.default_rng(1)
    e, y = _data(100, rng)
    p = P.fit_probe(e, y, e, y, Cs=[1.0])
    t = p.torch_logits(torch.tensor(e, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(t, p.decision_function(e), rtol=1e-6, atol=1e-8)


def test_single_class_label_gets_constant_score():
    rng = np.random.default_rng(2)
    e, y = _data(100, rng)
    y[:, 1] = 0
    p = P.fit_probe(e, y, e, y, Cs=[1.0])
    s = p.decision_function(e)
    assert np.ptp(s[:, 1]) == 0


def test_bad_parameters_are_named():
    e, y = _data(20, np.random.default_rng(3))
    with pytest.raises(ValueError, match="class_weight"):
        P.fit_probe(e, y, e, y, class_weight="auto")
    with pytest.raises(ValueError, match="Cs"):
        P.fit_probe(e, y, e, y, Cs=[])


def test_probe_round_trips(tmp_path):
    e, y = _data(60, np.random.default_rng(5))
    p = P.fit_probe(e, y, e, y, Cs=[1.0])
    P.save_probe(tmp_path / "p.npz", p)
    q = P.load_probe(tmp_path / "p.npz")
    np.testing.assert_array_equal(q.decision_function(e), p.decision_function(e))
    with pytest.raises(FileNotFoundError, match="03_linear_probe"):
        P.load_probe(tmp_path / "missing.npz")


@pytest.mark.parametrize("class_weight", ["balanced", None])
def test_vectorised_fit_equals_sklearn_optimum(class_weight):
    """All labels and Cs in one batched solve reach sklearn's LogisticRegression optimum (same
    objective: class weights, unpenalised intercept), checked against a tightly converged sklearn."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(6)
    e, y = _data(300, rng)
    x = (e - e.mean(0)) / e.std(0)
    y[:, 2] = (rng.random(300) < 0.05).astype(int)  # a rare label: balanced weights matter
    Cs = [0.01, 1.0, 10.0]
    for tol, atol in ((1e-9, 1e-5), (1e-6, 1e-3)):  # tight, and the default tolerance
        path = P._fit_path(x, y, Cs, class_weight, max_iter=5000, tol=tol)
        for C in Cs:
            coef, icpt = path[C]
            for j in range(3):
                ref = LogisticRegression(C=C, class_weight=class_weight, tol=1e-10, max_iter=10000).fit(x, y[:, j])
                np.testing.assert_allclose(x @ coef[j] + icpt[j], ref.decision_function(x), rtol=atol, atol=atol,
                                           err_msg=f"C={C} label {j} tol={tol}")
                if tol < 1e-8:
                    np.testing.assert_allclose(coef[j], ref.coef_[0], rtol=atol, atol=atol)


def test_vectorised_fit_uses_the_weights():
    """Balanced and unweighted fits differ on an imbalanced label (the weights are not ignored)."""
    rng = np.random.default_rng(7)
    e, y = _data(300, rng)
    y[:, 0] = (rng.random(300) < 0.05).astype(int)
    x = (e - e.mean(0)) / e.std(0)
    a = P._fit_path(x, y, [1.0], "balanced", 1000)[1.0]
    b = P._fit_path(x, y, [1.0], None, 1000)[1.0]
    assert a[1][0] > b[1][0] + 1.0  # balanced weighting lifts the rare label's intercept
