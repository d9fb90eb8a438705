"""Reference scorers: what a metric reads when the image is never looked at.

Every metric of the book is read against these floors, computed on the same split with the same
metrics code (:func:`metrics.evaluate`) and the same report-level bootstrap:

* ``random``: uniform random scores in [0, 1], thresholds tuned on validation scores of the same
  kind; the metrics are the mean over ``n_draws`` independent draws and the CI also resamples the
  draw (the draws play the part of training seeds);
* ``prevalence``: every image gets the training prevalence of each label as its score;
  thresholds tuned on validation like the real settings (with one score per label that means
  "predict the label for every image" wherever that has a better validation F1 than never);
* ``no-finding-only``: "No Finding" for every image and nothing else (score 1 for No Finding,
  0 elsewhere, threshold 0.5): the exact-match floor of a data set where most reports are normal;
* ``all-positive``: every label for every image (scores 1, threshold 0.5): the F1 of a scorer
  that never says no.

All four are *image-independent*: a real setting earns credit only for what it adds beyond them.
Ranking metrics (LRAP, coverage error) of ``prevalence`` show how much a label prior alone
achieves: the labels ranked by frequency, the same ranking for every image.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from helpers.analysis.metrics import evaluate, tune_thresholds

SCORERS = ("random", "prevalence", "no-finding-only", "all-positive")
"""Reference scorer names, in the order the pages list them."""
N_DRAWS = 50
"""Random draws averaged for the ``random`` scorer."""


def _check(name: str) -> str:
    if name not in SCORERS:
        raise ValueError(f"unknown reference scorer {name!r}; valid: {', '.join(SCORERS)}")
    return name


def constant_scores(name: str, prevalence: np.ndarray, n: int, labels: Sequence[str]) -> np.ndarray:
    """Scores (n, k) of a deterministic reference scorer (every row identical)."""
    k = len(labels)
    if _check(name) == "prevalence":
        row = np.asarray(prevalence, dtype=float)
    elif name == "no-finding-only":
        if "No Finding" not in labels:
            raise ValueError("the no-finding-only scorer needs a 'No Finding' label")
        row = (np.asarray(labels) == "No Finding").astype(float)
    elif name == "all-positive":
        row = np.ones(k)
    else:
        raise ValueError("the random scorer has no constant scores; use reference_result")
    return np.broadcast_to(row, (n, k)).copy()


def reference_result(name: str, y_train: np.ndarray, y_val: np.ndarray, y_test: np.ndarray,
                     labels: Sequence[str], groups_test: Sequence, n_boot: int = 500,
                     n_draws: int = N_DRAWS, seed: int = 0) -> dict[str, Any]:
    """Test metrics (with CIs) of one reference scorer, in :func:`metrics.evaluate`'s format.

    ``y_train``, ``y_val``, ``y_test``: 0/1 targets (n, k) of the three splits; only the
    training prevalence and the validation targets (for thresholds) shape the scorer.
    """

    y_val, y_test = np.asarray(y_val).astype(int), np.asarray(y_test).astype(int)
    if _check(name) == "random":
        rng = np.random.default_rng([seed, 12345])
        draws = [(rng.random(y_val.shape), rng.random(y_test.shape)) for _ in range(n_draws)]
        scores = np.stack([t for _, t in draws])
        thr = np.stack([tune_thresholds(y_val, v) for v, _ in draws])
    else:
        prev = np.asarray(y_train, dtype=float).mean(0)
        scores = constant_scores(name, prev, len(y_test), labels)
        thr = (tune_thresholds(y_val, constant_scores(name, prev, len(y_val), labels))
               if name == "prevalence" else np.full(len(labels), 0.5))
    out = evaluate(y_test, scores, thr, labels, groups_test, n_boot=n_boot, seed=seed)
    out["scorer"] = name
    out["image_independent"] = True
    return out


def reference_results(y_train: np.ndarray, y_val: np.ndarray, y_test: np.ndarray,
                      labels: Sequence[str], groups_test: Sequence, n_boot: int = 500,
                      scorers: Sequence[str] = SCORERS, n_draws: int = N_DRAWS,
                      seed: int = 0) -> dict[str, dict[str, Any]]:
    """:func:`reference_result` for every scorer in ``scorers``: name -> result."""
    return {s: reference_result(s, y_train, y_val, y_test, labels, groups_test, n_boot, n_draws, seed)
            for s in scorers}


LOWER_IS_BETTER = ("coverage_error", "ranking_loss", "brier", "ece")


def label_prior_loss(y_train: np.ndarray, y: np.ndarray, eps: float = 1e-6) -> float:
    """Mean binary cross-entropy on targets ``y`` (n, k) of a predictor that knows only each
    label's training prevalence (the loss a model reaches by learning the label frequencies and
    nothing of the images): ``-mean_ij [y_ij log p_j + (1 - y_ij) log(1 - p_j)]``, ``p`` clipped
    to ``[eps, 1 - eps]``."""
    p = np.clip(np.asarray(y_train, dtype=float).mean(0), eps, 1 - eps)
    y = np.asarray(y, dtype=float)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
