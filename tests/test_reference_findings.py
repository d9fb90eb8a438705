"""Chance-level scorers, AUPRC / Brier / ECE / Platt, seed-aware bootstrap, artefact names:
each against sklearn or a hand computation. (Finding records and their verdicts: the
referee suite, tests/referee/.)"""

import numpy as np
import pytest

from helpers.book import artefacts
from helpers.analysis import baselines, metrics

LABELS = ["A", "B", "No Finding"]


def test_auprc_equals_sklearn_with_ties():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    y = rng.random((200, 4)) < [0.05, 0.2, 0.5, 0.8]
    s = np.round(rng.random((200, 4)) + 0.3 * y, 1)  # rounding makes ties
    ours = metrics.per_label_ap(y, s)
    ref = [average_precision_score(y[:, j], s[:, j]) for j in range(4)]
    assert np.allclose(ours, ref)


def test_auprc_of_constant_scores_is_prevalence():
    y = np.array([[1], [0], [0], [0]])
    assert metrics.per_label_ap(y, np.zeros((4, 1)))[0] == pytest.approx(0.25)


def test_brier_and_ece_by_hand():
    y = np.array([[1], [0], [1], [0]])
    p = np.array([[0.9], [0.1], [0.6], [0.6]])
    c = metrics.calibration(y, p, n_bins=2)
    assert c["brier"] == pytest.approx((0.01 + 0.01 + 0.16 + 0.36) / 4)
    # bin [0, .5): one image, p .1, y 0 -> gap .1; bin [.5, 1]: p mean .7, y mean 2/3 -> gap 1/30
    assert c["ece"] == pytest.approx(0.25 * 0.1 + 0.75 * abs(2 / 3 - 0.7))
    with pytest.raises(ValueError, match="probabilities"):
        metrics.calibration(y, p + 1)


def test_platt_recovers_a_known_calibration_map():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, (4000, 1))
    y = (rng.random((4000, 1)) < metrics.sigmoid(0.5 * z - 1.0)).astype(int)
    a, b = metrics.fit_platt(z, y)
    assert a[0] == pytest.approx(0.5, abs=0.08) and b[0] == pytest.approx(-1.0, abs=0.12)
    a1, b1 = metrics.fit_platt(z, y, slope=False)
    assert a1[0] == 1.0
    assert metrics.sigmoid(z + b1).mean() == pytest.approx(y.mean(), abs=0.01)  # ML intercept matches the rate


def test_intercept_changes_lrap_not_auroc():
    rng = np.random.default_rng(2)
    y = (rng.random((300, 3)) < [0.1, 0.3, 0.6]).astype(int)
    z = rng.normal(size=(300, 3)) + y
    shifted = z + np.array([-3.0, 0.0, 3.0])
    assert np.allclose(metrics.per_label_auroc(y, z), metrics.per_label_auroc(y, shifted))
    assert metrics.ranking_metrics(y, z)["lrap"] != pytest.approx(metrics.ranking_metrics(y, shifted)["lrap"])


def test_lrap_of_a_constant_ranking_by_hand():
    # every image ranks A > B > No Finding; image 1 has B only (rank 2, precision 1/2),
    # image 2 has A only (1), image 3 has No Finding only (1/3)
    y = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]])
    s = np.tile([3.0, 2.0, 1.0], (3, 1))
    assert metrics.ranking_metrics(y, s)["lrap"] == pytest.approx((0.5 + 1 + 1 / 3) / 3)


def _split(n=120, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < [0.1, 0.3, 0.0]).astype(int)
    y[:, 2] = (y[:, :2].sum(1) == 0).astype(int)
    return y


def test_reference_scorers_by_hand():
    ytr, yva, yte = _split(200, 0), _split(80, 1), _split(100, 2)
    groups = np.arange(len(yte))
    res = baselines.reference_results(ytr, yva, yte, LABELS, groups, n_boot=20, n_draws=10)
    nf_only = res["no-finding-only"]
    assert nf_only["exact_match"] == pytest.approx(yte[:, 2].mean())
    assert nf_only["auroc_macro"] == pytest.approx(0.5)
    allpos = res["all-positive"]
    prev = yte.mean(0)
    assert allpos["f1_macro"] == pytest.approx(np.mean(2 * prev / (1 + prev)))
    assert allpos["coverage_error"] == pytest.approx(3.0)  # all tied: every label at rank 3
    assert res["prevalence"]["auroc_macro"] == pytest.approx(0.5)
    assert res["random"]["runs"] == 10 and 0.35 < res["random"]["auroc_macro"] < 0.65
    assert all(r["image_independent"] for r in res.values())
    with pytest.raises(ValueError, match="unknown reference scorer"):
        baselines.reference_result("oracle", ytr, yva, yte, LABELS, groups)


def test_bootstrap_runs_covers_seed_variance():
    groups = np.arange(50)
    y = np.zeros(50)
    # two "seeds" whose values differ by 1 everywhere: the CI must span both
    runs = [y, y + 1.0]
    point, lo, hi = metrics.bootstrap_runs(lambda idx, r: runs[r[0]][idx].mean(), groups, (2,), 200)
    assert point == pytest.approx(0.5) and lo == pytest.approx(0.0) and hi == pytest.approx(1.0)
    # one run: no seed variance, zero-width interval for constant data
    p1, l1, h1 = metrics.bootstrap_runs(lambda idx, r: runs[0][idx].mean(), groups, (1,), 200)
    assert (p1, l1, h1) == (0.0, 0.0, 0.0)


def test_evaluate_over_runs_averages_point_metrics():
    rng = np.random.default_rng(3)
    y = (rng.random((60, 3)) < 0.3).astype(int)
    s = rng.random((3, 60, 3))
    r = metrics.evaluate(y, s, 0.5, LABELS, np.arange(60), n_boot=30)
    singles = [metrics.evaluate(y, s[i], 0.5, LABELS)["auroc_macro"] for i in range(3)]
    assert r["runs"] == 3 and r["auroc_macro"] == pytest.approx(np.mean(singles))
    assert r["per_run"]["auroc_macro"] == pytest.approx(singles)


def test_artefact_names_per_model(tmp_path, monkeypatch):
    monkeypatch.setenv("IUXRAY_OUTPUT_DIR", str(tmp_path))
    a = artefacts.Artefacts("full", "local-dir:/models/clip")
    b = artefacts.Artefacts("full", "local-dir:/other/clip")
    assert a.dir != b.dir and a.dir.parent == b.dir.parent
    assert artefacts.model_slug("hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224") == \
        "hf-hub-microsoft-BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    assert a.scores("ft", "permuted", 2).name == "ft_test_scores-permuted-seed2.npz"
    with pytest.raises(ValueError, match="unknown variant"):
        a.scores("ft", "shuffled")
    with pytest.raises(ValueError, match="unknown setting"):
        a.metrics("xx")


def test_label_prior_loss_equals_torch_bce_of_the_prevalence():
    import torch

    rng = np.random.default_rng(5)
    ytr = (rng.random((300, 4)) < [0.05, 0.2, 0.5, 0.9]).astype(int)
    yv = (rng.random((80, 4)) < [0.05, 0.2, 0.5, 0.9]).astype(int)
    p = torch.tensor(ytr.mean(0), dtype=torch.float64).expand(80, 4)
    ref = torch.nn.functional.binary_cross_entropy(p, torch.tensor(yv, dtype=torch.float64))
    assert baselines.label_prior_loss(ytr, yv) == pytest.approx(float(ref))
    # the best constant predictor on its own data: no constant does better
    best = baselines.label_prior_loss(yv, yv)
    for q in (0.1, 0.3, 0.7):
        other = -(yv * np.log(q) + (1 - yv) * np.log(1 - q)).mean()
        assert best <= other + 1e-12
