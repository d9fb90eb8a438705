"""Multi-label metrics shared by every protocol, with report-level bootstrap CIs.

For ``n`` images, ``k`` labels, binary targets ``Y`` (n, k), scores ``S`` (n, k) (higher = more
likely) and per-label thresholds ``t`` (k,), predictions are ``P = S >= t``. Metrics:

* macro / micro F1 (sklearn ``classification_report``), exact match (subset accuracy: all
  ``k`` labels right), per-label precision, recall, F1, predicted-positive rate;
* ranking metrics from the scores alone: LRAP (label ranking average precision), coverage
  error (how far down the ranking one must go to cover every true label; best = the number
  of true labels), ranking loss;
* per-label AUROC and their mean over labels with both classes present (macro AUROC);
* per-label AUPRC (average precision, as sklearn's ``average_precision_score``) and its macro
  mean: its chance level is the label's prevalence, not 0.5, so it shows what AUROC hides on
  rare labels;
* calibration of probabilities ``p`` (n, k): Brier score ``mean (p - y)^2`` and expected
  calibration error with :data:`ECE_BINS` equal-width bins on [0, 1], both per label and
  averaged over labels (:func:`calibration`).

F1 is reported both ways: *macro* (the mean of per-label F1, every label counts the same; the
one compared with the original study's "F1") and *micro* (pooled over all image-label pairs, dominated by
the frequent labels).

Confidence intervals: 95% percentile bootstrap, resampling *reports* (an image's report is its
cluster), so two images of one report never land in different resamples independently. A
result stores each metric's interval under ``ci95`` (``result["ci95"]["auroc_macro"]``);
``Estimate.read(result, "auroc_macro")`` (:mod:`helpers.analysis.estimate`) reads the two
together.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
from helpers.analysis.estimate import Estimate
from helpers.book.artefacts import write_result
from helpers.storage import atomic_write_bytes

HEADLINE = ("f1_macro", "f1_micro", "exact_match", "lrap", "coverage_error", "ranking_loss", "auroc_macro",
            "auprc_macro")
ECE_BINS = 10
"""Equal-width probability bins of the expected calibration error."""


def ranking_metrics(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    """LRAP, coverage error and ranking loss of targets (n, k) and scores (n, k).

    With ``rank_ia = |{b : s_ib >= s_ia}|`` (label ``a``'s rank on image ``i``, ties
    counted against it) and ``Y_i`` the image's true labels:
    ``LRAP = mean_i mean_{a in Y_i} |{b in Y_i : s_ib >= s_ia}| / rank_ia`` (1 for an
    image with no or all labels) and ``coverage = mean_i max_{a in Y_i} rank_ia``.
    Vectorised re-implementations of sklearn's
    ``label_ranking_average_precision_score``, ``coverage_error`` and
    ``label_ranking_loss`` (identical values, ties included; the tests check it):
    sklearn loops over samples in Python, which made bootstrap CIs the slowest step.
    """
    lrap, cover, loss = _ranking_rows(y, s)
    return {"lrap": float(lrap.mean()), "coverage_error": float(cover.mean()),
            "ranking_loss": float(loss.mean())}


def per_label_auroc(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Per-label AUROC (k,) by the Mann-Whitney rank formula (ties averaged, as sklearn);
    NaN for a label with one class only."""
    from scipy.stats import rankdata

    y = np.asarray(y).astype(bool)
    r = rankdata(np.asarray(s, dtype=float), axis=0)
    npos = y.sum(0)
    nneg = len(y) - npos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((r * y).sum(0) - npos * (npos + 1) / 2) / (npos * nneg)
    return np.where((npos > 0) & (nneg > 0), auc, np.nan)


def per_label_ap(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Per-label average precision (k,): ``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct
    score thresholds, exactly as sklearn's ``average_precision_score`` (ties share a threshold);
    NaN for a label with no positive. Its chance level is the label's prevalence.

    Vectorised over labels: the sum over thresholds equals the mean, over the positives, of
    the precision at the end of each positive's run of tied scores."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(s, dtype=float)
    n = len(y)
    if n == 0:
        return np.full(y.shape[1], np.nan)
    order = np.argsort(-s, axis=0, kind="stable")
    ss, yy = np.take_along_axis(s, order, 0), np.take_along_axis(y, order, 0)
    last = np.ones_like(yy)
    last[:-1] = ss[1:] != ss[:-1]  # the end of each run of tied scores
    rows = np.arange(n)[:, None]
    end = np.minimum.accumulate(np.where(last, rows, n)[::-1], axis=0)[::-1]
    tp = np.cumsum(yy, axis=0)
    precision_at_end = np.take_along_axis(tp, end, 0) / (end + 1)
    npos = yy.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (precision_at_end * yy).sum(0) / npos
    return np.where(npos > 0, ap, np.nan)


def _nanmean(v: np.ndarray) -> float:
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def calibration(y: np.ndarray, p: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Brier score and expected calibration error of probabilities ``p`` (n, k) for targets (n, k).

    Per label ``j``: ``brier_j = mean_i (p_ij - y_ij)^2``; ``ece_j = sum_b (n_b / n) |mean y - mean p|``
    over ``n_bins`` equal-width bins of ``p`` on [0, 1] (empty bins skipped). Returns the macro means
    ``brier``, ``ece`` and per-label lists ``brier_per_label``, ``ece_per_label``.
    """
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    if y.shape != p.shape:
        raise ValueError(f"targets {y.shape} and probabilities {p.shape} differ in shape")
    if not len(y):
        raise ValueError("calibration of no images: the targets and probabilities are empty")
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError("calibration needs probabilities in [0, 1]; apply a sigmoid to logits first")
    brier = ((p - y) ** 2).mean(0)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    ece = np.zeros(y.shape[1])
    for b in range(n_bins):
        m = bins == b
        nb = m.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            gap = np.abs((y * m).sum(0) - (p * m).sum(0)) / np.maximum(nb, 1)
        ece += nb / len(y) * gap
    return {"brier": float(brier.mean()), "ece": float(ece.mean()), "n_bins": n_bins,
            "brier_per_label": brier.tolist(), "ece_per_label": ece.tolist()}


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function, numerically safe for large |z|."""
    z = np.asarray(z, dtype=float)
    return np.exp(-np.logaddexp(0.0, -z))


def logit(p: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Inverse of :func:`sigmoid`, with ``p`` clipped to [eps, 1 - eps]."""
    p = np.clip(np.asarray(p, dtype=float), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def platt_targets(y: np.ndarray) -> np.ndarray:
    """Platt's smoothed targets (n,) for 0/1 labels (n,): ``(N+ + 1) / (N+ + 2)`` for a
    positive, ``1 / (N- + 2)`` for a negative (Platt 1999, sec. 2.2; sklearn's
    ``CalibratedClassifierCV(method="sigmoid")`` uses the same). They keep the fit finite on
    separable or one-class data, where the plain maximum-likelihood slope is infinite."""
    y = np.asarray(y) > 0
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return np.where(y, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))


def _logistic_newton(X: np.ndarray, t: np.ndarray, offset: np.ndarray | float = 0.0,
                     w0: np.ndarray | None = None, iters: int = 200) -> np.ndarray:
    """Minimise ``sum_i log(1 + e^{eta_i}) - t_i eta_i`` with ``eta = X w + offset`` (soft
    targets ``t`` in (0, 1): strictly convex with a finite minimum) by Newton's method with
    a backtracking line search, so every step lowers the loss, from ``w0`` (zeros by
    default). Returns ``w`` (d,)."""
    def loss(w):
        eta = X @ w + offset
        return float(np.sum(np.logaddexp(0.0, eta) - t * eta))

    w = np.zeros(X.shape[1]) if w0 is None else np.asarray(w0, dtype=float).copy()
    f = loss(w)
    for _ in range(iters):
        p = sigmoid(X @ w + offset)
        grad = X.T @ (p - t)
        hess = (X * (p * (1 - p))[:, None]).T @ X + 1e-12 * np.eye(X.shape[1])
        step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        lam = 1.0
        while lam > 1e-10:
            f_new = loss(w - lam * step)
            if f_new <= f:
                break
            lam /= 2
        else:
            break
        w, f_old, f = w - lam * step, f, f_new
        if np.abs(lam * step).max() < 1e-12 or f_old - f < 1e-14 * max(1.0, abs(f)):
            break
    return w


def fit_platt(z: np.ndarray, y: np.ndarray, slope: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-label Platt scaling ``p = sigmoid(a_j z + b_j)`` fitted on the *validation* split.

    ``z`` (n, k) logits and ``y`` (n, k) 0/1 targets. Maximum likelihood on Platt's smoothed
    targets (:func:`platt_targets`), by a damped Newton iteration on the standardised logits,
    so shifted (``z + 1e4``), tiny-spread, separable and one-class inputs all give the
    finite optimum (the tests compare it with sklearn's sigmoid calibration). A label whose
    logits are constant gets ``a = 0`` and only an intercept. With ``slope=False`` only the
    intercept ``b_j`` is fitted (``a_j = 1``): it moves each label's scores by a constant,
    which changes the ranking *across* labels (LRAP, coverage) but not within a label
    (AUROC). Returns ``(a, b)``, each (k,).
    """
    z, y = np.asarray(z, dtype=float), np.asarray(y, dtype=float)
    if z.ndim != 2 or z.shape != y.shape:
        raise ValueError(f"fit_platt needs logits and targets of one (n, k) shape, got "
                         f"{z.shape} and {y.shape}")
    n, k = z.shape
    a, b = np.ones(k), np.zeros(k)
    if n == 0:
        return a, b
    for j in range(k):
        t, zj = platt_targets(y[:, j]), z[:, j]
        prior = float(logit(t.mean()))
        if not slope:  # start where the mean probability matches the targets' mean
            b0 = prior - float(np.median(zj))
            b[j] = _logistic_newton(np.ones((n, 1)), t, offset=zj, w0=np.array([b0]))[0]
            continue
        mu, sd = zj.mean(), zj.std()
        if not sd > 1e-12 * max(1.0, abs(mu)):  # constant logits: no slope to fit
            a[j], b[j] = 0.0, _logistic_newton(np.ones((n, 1)), t)[0]
            continue
        w = _logistic_newton(np.stack([(zj - mu) / sd, np.ones(n)], 1), t,
                             w0=np.array([0.0, prior]))
        a[j], b[j] = w[0] / sd, w[1] - w[0] * mu / sd
    return a, b


def _f1(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Macro and micro F1 (zero when a label has no positive and no prediction), as sklearn."""
    tp = (pred & y).sum(0)
    fp = (pred & ~y).sum(0)
    fn = (~pred & y).sum(0)
    per = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    micro = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1)
    return float(per.mean()), float(micro)


def point_metrics(y: np.ndarray, s: np.ndarray, pred: np.ndarray,
                  label_names: Sequence[str]) -> dict[str, Any]:
    """All metrics for one sample (no CIs). Shapes: (n, k) each."""
    from sklearn.metrics import classification_report

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = classification_report(y, pred, target_names=list(label_names), output_dict=True,
                                    zero_division=0)
        auc = per_label_auroc(y, s)
        ap = per_label_ap(y, s)
    out: dict[str, Any] = {
        "f1_macro": float(rep["macro avg"]["f1-score"]),
        "f1_micro": float(rep["micro avg"]["f1-score"]),
        "exact_match": float((pred == y).all(1).mean()),
        **ranking_metrics(y, s),
        "auroc_macro": _nanmean(auc),
        "auprc_macro": _nanmean(ap),
        "prevalence_macro": float(y.mean(0).mean()),
        "per_label": {
            name: {"precision": float(rep[name]["precision"]), "recall": float(rep[name]["recall"]),
                   "f1": float(rep[name]["f1-score"]), "support": int(rep[name]["support"]),
                   "prevalence": float(y[:, j].mean()), "predicted_rate": float(pred[:, j].mean()),
                   "auroc": None if np.isnan(auc[j]) else float(auc[j]),
                   "auprc": None if np.isnan(ap[j]) else float(ap[j])}
            for j, name in enumerate(label_names)},
    }
    return out


def _ranking_rows(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image LRAP, coverage and ranking loss (n,) each (see :func:`ranking_metrics`)."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(s, dtype=float)
    k = y.shape[1]
    npos = y.sum(1)
    # ge[i, a, b]: label b scores at least as high as a
    ge = s[:, None, :] >= s[:, :, None]
    rank = ge.sum(2)
    hits = (ge & y[:, None, :]).sum(2)
    prec = np.where(y, hits / rank, 0.0).sum(1) / np.maximum(npos, 1)
    lrap = np.where((npos == 0) | (npos == k), 1.0, prec)
    cover = np.where(y, rank, 0).max(1)
    bad = (y[:, :, None] & ~y[:, None, :] & (s[:, :, None] <= s[:, None, :])).sum((1, 2))
    denom = npos * (k - npos)
    return lrap, cover, np.where(denom > 0, bad / np.maximum(denom, 1), 0.0)


class WeightedRun:
    """One run's targets, scores and predictions (n, k) prepared once, so that the headline
    metrics of any bootstrap resample come from the rows' multiplicities without sorting
    again (:meth:`headline`): the scores are sorted per label once, with each position's
    run of tied scores; per-image ranking metrics do not depend on the resample at all."""

    def __init__(self, y: np.ndarray, s: np.ndarray, pred: np.ndarray):
        self.y = np.asarray(y).astype(bool)
        s = np.asarray(s, dtype=float)
        self.pred = np.asarray(pred).astype(bool)
        n = len(s)
        self.order = np.argsort(-s, axis=0, kind="stable")
        ss = np.take_along_axis(s, self.order, 0)
        self.ys = np.take_along_axis(self.y, self.order, 0)
        rows = np.arange(n)[:, None]
        same = ss[1:] == ss[:-1]
        last = np.ones_like(ss, bool)
        last[:-1] = ~same
        first = np.ones_like(ss, bool)
        first[1:] = ~same
        self.end = np.minimum.accumulate(np.where(last, rows, n)[::-1], axis=0)[::-1]
        self.start = np.maximum.accumulate(np.where(first, rows, 0), axis=0)
        self.rows = np.column_stack(_ranking_rows(self.y, s))  # lrap, coverage, ranking loss
        self.exact = (self.pred == self.y).all(1)

    def headline(self, m: np.ndarray) -> np.ndarray:
        """:data:`HEADLINE` of the resample in which image ``i`` appears ``m[i]`` times;
        equal to :func:`_headline` on the repeated rows (the tests check it)."""
        m = np.asarray(m, dtype=float)
        ms = m[self.order]
        mpos, mneg = ms * self.ys, ms * ~self.ys
        cum_pos, cum_neg, cum_all = (np.cumsum(a, axis=0) for a in (mpos, mneg, ms))
        npos, nneg = cum_pos[-1], cum_neg[-1]
        neg_to_end = np.take_along_axis(cum_neg, self.end, 0)
        neg_before = (np.take_along_axis(cum_neg, self.start, 0)
                      - np.take_along_axis(mneg, self.start, 0))
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = (mpos * ((nneg - neg_to_end) + 0.5 * (neg_to_end - neg_before))).sum(0) / (
                npos * nneg)
            precision = (np.take_along_axis(cum_pos, self.end, 0)
                         / np.take_along_axis(cum_all, self.end, 0))
            ap = (mpos * np.nan_to_num(precision)).sum(0) / npos
        auc = np.where((npos > 0) & (nneg > 0), auc, np.nan)
        ap = np.where(npos > 0, ap, np.nan)
        tp = m @ (self.pred & self.y)
        fp = m @ (self.pred & ~self.y)
        fn = m @ (~self.pred & self.y)
        per = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1e-300), 0.0)
        micro = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1e-300)
        total = m.sum()
        lrap, cover, loss = (m @ self.rows) / total
        return np.array([per.mean(), micro, (m @ self.exact) / total, lrap, cover, loss,
                         _nanmean(auc), _nanmean(ap)])


def _headline(y: np.ndarray, s: np.ndarray, pred: np.ndarray) -> np.ndarray:
    y, pred = np.asarray(y).astype(bool), np.asarray(pred).astype(bool)
    r = ranking_metrics(y, s)
    auc = per_label_auroc(y, s)
    f1m, f1u = _f1(y, pred)
    return np.array([f1m, f1u, (pred == y).all(1).mean(), r["lrap"], r["coverage_error"], r["ranking_loss"],
                     _nanmean(auc), _nanmean(per_label_ap(y, s))])


def _resamples(groups: Sequence, n_boot: int, seed: int):
    """Yield ``n_boot`` row-index arrays, each drawing ``len(unique(groups))`` groups with replacement
    (all rows of a drawn group come together). Deterministic for a ``seed``."""
    uniq, inv = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield np.concatenate([members[g] for g in rng.integers(0, len(uniq), len(uniq))])


def _run_draws(n_runs: Sequence[int], rng: np.random.Generator) -> list[tuple[tuple[int, ...], int]]:
    """One replicate's training runs: every source with several runs resamples them with
    replacement (as many as it has); returns the distinct run combinations to average over,
    each with its weight (multiplicity).

    When every multi-run source has the same number of runs ``K`` (the usual case: one
    ``n_seeds`` for every trained side), the draws are paired into ``K`` combinations; for
    a statistic that is a sum of per-source terms (a paired difference) the average over them
    is the difference of the resampled means. Otherwise the full product of the draws.
    """
    import itertools
    from collections import Counter

    draws = [rng.integers(n, size=n) if n > 1 else np.zeros(1, int) for n in n_runs]
    sizes = {len(d) for d in draws if len(d) > 1}
    if len(sizes) <= 1:
        k = sizes.pop() if sizes else 1
        combos = [tuple(int(d[i % len(d)]) for d in draws) for i in range(k)]
    else:
        combos = [tuple(int(v) for v in c) for c in itertools.product(*draws)]
    return list(Counter(combos).items())


def bootstrap_replicates(fn, groups: Sequence, n_runs: Sequence[int] = (1,), n_boot: int = 500,
                         seed: int = 0, average=None) -> tuple[np.ndarray, np.ndarray]:
    """Point value and the ``n_boot`` bootstrap replicates of ``fn(idx, runs)``.

    ``n_runs[s]`` is the number of training runs (seeds, random draws) of source ``s``;
    ``runs`` is a tuple with one run index per source. Each replicate resamples the reports
    (``groups``) with replacement and, for each source, its runs with replacement, and
    averages ``fn`` over the drawn runs (:func:`_run_draws`): the spread is that of the
    **mean over runs**, the value printed as the point, which is the mean of
    ``fn(all rows, runs)`` over every combination of runs. ``fn`` may return a float or a
    vector. The report resamples depend only on ``(groups, n_boot, seed)``, so two calls with
    the same arguments are paired (the same resamples), whatever their ``fn``.
    ``average(idx, combos)``, when given, returns that weighted mean for all of a
    replicate's ``(runs, weight)`` combinations in one call (a vectorised ``fn``).
    Returns ``(point, replicates)``, shapes ``fn``'s and ``(n_boot, *fn's)``.
    """
    import itertools

    rng = np.random.default_rng([seed, 7919])  # its own stream: report resamples unchanged
    reps = []
    for idx in _resamples(groups, n_boot, seed):
        combos = _run_draws(n_runs, rng)
        if average is not None:
            reps.append(np.asarray(average(idx, combos), dtype=float))
            continue
        total = sum(w for _, w in combos)
        reps.append(sum(w * np.asarray(fn(idx, c), dtype=float) for c, w in combos) / total)
    everything = np.arange(len(groups))
    point = np.mean([np.asarray(fn(everything, r), dtype=float)
                     for r in itertools.product(*(range(n) for n in n_runs))], axis=0)
    return point, np.array(reps, dtype=float)


def percentile_ci(replicates: np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval ``(low, high)`` of bootstrap replicates (n_boot, ...); NaN
    replicates are ignored (all NaN: NaN)."""
    reps = np.asarray(replicates, dtype=float)
    if not len(reps) or not np.isfinite(reps).any():
        shape = reps.shape[1:]
        return np.full(shape, np.nan), np.full(shape, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column gives NaN
        lo, hi = np.nanpercentile(reps, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    return lo, hi


def bootstrap_runs(fn, groups: Sequence, n_runs: Sequence[int] = (1,),
                   n_boot: int = 500, seed: int = 0, alpha: float = 0.05, average=None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point value and 95% CI of ``fn(idx, runs)`` over reports *and* training runs.

    A two-level bootstrap (:func:`bootstrap_replicates`): each replicate resamples the
    test reports and, per source, its training runs with replacement, and averages over
    the drawn runs, so the interval is for the **mean over runs** printed as the point
    value (with 3 seeds a sensitivity check, not an estimate of the seed variance).
    Returns ``(point, low, high)``.
    """
    point, reps = bootstrap_replicates(fn, groups, n_runs, n_boot, seed, average)
    lo, hi = percentile_ci(reps, alpha)
    return point, lo, hi


def _stack_runs(scores: np.ndarray, thresholds, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores as (m, n, k) and thresholds as (m, k), for m training runs (m = 1 for one matrix)."""
    s = np.asarray(scores, dtype=float)
    s = s[None] if s.ndim == 2 else s
    t = np.asarray(thresholds, dtype=float)
    t = np.broadcast_to(t if t.ndim == 2 else np.broadcast_to(t, (k,))[None], (len(s), k))
    return s, t


def bootstrap_ci(y: np.ndarray, s: np.ndarray, pred: np.ndarray, groups: Sequence, n_boot: int = 500,
                 seed: int = 0, alpha: float = 0.05) -> dict[str, list[float]]:
    """95% percentile CIs of the headline metrics, resampling ``groups`` (report ids).

    ``s`` and ``pred`` are (n, k), or (m, n, k) for ``m`` training runs: then every replicate
    also draws one run (:func:`bootstrap_runs`). Deterministic for a given ``seed``.
    Returns metric -> [low, high].
    """
    s, pred = (np.asarray(a)[None] if np.asarray(a).ndim == 2 else np.asarray(a) for a in (s, pred))

    prepared = [WeightedRun(y, s[r], pred[r]) for r in range(len(s))]

    def average(idx, combos):  # a resample is its rows' multiplicities: nothing is re-sorted
        m = np.bincount(idx, minlength=len(y))
        total = sum(w for _, w in combos)
        return sum(w * prepared[c[0]].headline(m) for c, w in combos) / total

    _, lo, hi = bootstrap_runs(lambda idx, r: _headline(y[idx], s[r[0]][idx], pred[r[0]][idx]), groups,
                               (len(s),), n_boot, seed, alpha, average)
    return {m: [float(a), float(b)] for m, a, b in zip(HEADLINE, lo, hi)}


def _mean_runs(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Average the numeric fields of several :func:`point_metrics` results (one per run)."""
    if len(results) == 1:
        return results[0]

    def avg(vals: list) -> Any:
        if isinstance(vals[0], dict):
            return {k: avg([v[k] for v in vals]) for k in vals[0]}
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            return float(np.mean(vals))
        if all(v is None or isinstance(v, (int, float)) for v in vals):
            fin = [v for v in vals if v is not None]
            return float(np.mean(fin)) if fin else None
        return vals[0]

    out = avg(results)
    out["per_run"] = {m: [r[m] for r in results] for m in HEADLINE}
    return out


def evaluate(y: np.ndarray, scores: np.ndarray, thresholds: np.ndarray | float,
             label_names: Sequence[str], groups: Sequence | None = None, n_boot: int = 500,
             seed: int = 0) -> dict[str, Any]:
    """Point metrics plus bootstrap CIs (when ``groups`` is given and ``n_boot > 0``).

    Parameters
    ----------
    y : (n, k) 0/1 targets.
    scores : (n, k) real scores, or (m, n, k) for ``m`` training runs (seeds) of one setting:
        the point metrics are then the mean over runs (``runs``, ``per_run`` record them) and the
        CIs cover report resampling and run-to-run variance together (:func:`bootstrap_runs`).
    thresholds : a scalar, (k,), or (m, k) per run.
    groups : (n,) report id per image, the bootstrap's resampling unit.
    """
    y = np.asarray(y).astype(int)
    s, t = _stack_runs(scores, thresholds, y.shape[1])
    if y.shape != s.shape[1:]:
        raise ValueError(f"targets {y.shape} and scores {s.shape[1:]} differ in shape")
    if not len(y):
        raise ValueError("no images to evaluate: the targets and scores are empty (a split "
                         "or a `limit` that leaves no test image?)")
    pred = (s >= t[:, None, :]).astype(int)
    out = _mean_runs([point_metrics(y, s[r], pred[r], label_names) for r in range(len(s))])
    out["thresholds"] = {n: float(v) for n, v in zip(label_names, t.mean(0))}
    out["n_images"] = int(len(y))
    out["runs"] = int(len(s))
    if groups is not None and n_boot > 0:
        out["ci95"] = bootstrap_ci(y, s, pred, groups, n_boot, seed)
        out["n_reports"] = int(len(set(groups)))
        out["n_boot"] = n_boot
    return out


def tune_thresholds(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-label threshold maximising F1 on the given (validation) data: (k,).

    Candidates are the midpoints between sorted distinct scores; a label with no positive
    gets the threshold just above its maximum score (predict nothing).
    """
    y = np.asarray(y).astype(int)
    s = np.asarray(scores, dtype=float)
    out = np.empty(y.shape[1])
    for j in range(y.shape[1]):
        sj, yj = s[:, j], y[:, j]
        if yj.sum() == 0:
            out[j] = np.nextafter(sj.max(), np.inf)
            continue
        order = np.argsort(-sj, kind="stable")
        ss, yy = sj[order], yj[order]
        tp = np.cumsum(yy)
        k = np.arange(1, len(yy) + 1)
        f1 = 2 * tp / (k + yy.sum())
        last = np.r_[ss[1:] != ss[:-1], True]  # only cut between distinct scores
        f1 = np.where(last, f1, -1)
        i = int(np.argmax(f1))
        out[j] = ss[i] if i == len(ss) - 1 else (ss[i] + ss[i + 1]) / 2
    return out


def bootstrap_values(fn, groups: Sequence, n_boot: int = 500, seed: int = 0,
                     alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point values and 95% percentile CIs of a vector-valued ``fn(idx)`` (one resample serves
    every component). Returns (point, low, high), arrays shaped like ``fn``'s output."""
    return bootstrap_runs(lambda idx, r: fn(idx), groups, (1,), n_boot, seed, alpha)


def bootstrap_stat(fn, groups: Sequence, n_boot: int = 500, seed: int = 0,
                   alpha: float = 0.05) -> Estimate:
    """Point value and 95% percentile CI of ``fn(idx)`` under a report-level bootstrap (the
    interval covers test resampling).

    ``fn`` takes an index array into the rows (all rows for the point value) and returns a float.
    """
    v, lo, hi = bootstrap_values(fn, groups, n_boot, seed, alpha)
    return Estimate.of(v, [lo, hi])


def write_metrics(path, setting: str, metrics: dict[str, Any], params: dict[str, Any],
                  stamp: dict[str, Any], **extra: Any):
    """Write one run's metrics JSON in the result envelope (:func:`artefacts.write_result`):
    setting, metrics (with CIs), params, stamp."""

    return write_result(path, "metrics", stamp, params, setting=setting, metrics=metrics,
                        **extra)


def save_scores(path, image_ids: Sequence[str], scores: np.ndarray, y: np.ndarray, groups: Sequence,
                thresholds: np.ndarray) -> None:
    """Save one setting's test scores (n, k), targets (n, k), report ids and thresholds (k,).

    Later chapters compare settings image by image (paired bootstrap) from these files.
    """
    import io as _io


    buf = _io.BytesIO()
    np.savez(buf, image_ids=np.asarray(image_ids, dtype=str), scores=np.asarray(scores, dtype=np.float64),
             y=np.asarray(y, dtype=np.int8), groups=np.asarray(groups, dtype=str),
             thresholds=np.asarray(thresholds, dtype=np.float64))
    atomic_write_bytes(path, buf.getvalue())


def load_scores(path, image_ids: Sequence[str] | None = None, made_by: str = "") -> dict[str, np.ndarray]:
    """Load :func:`save_scores` output; with ``image_ids``, check it covers exactly those images.

    ``made_by`` names the chapter that writes the file, for the error message when it is missing.
    """
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p} is missing; it is written by {made_by or 'an earlier chapter'}: "
                                f"run that chapter first (python -m helpers.book.runner {made_by or '<chapter>'})")
    with np.load(p) as z:
        d = {k: z[k] for k in z.files}
    if image_ids is not None and list(d["image_ids"]) != [str(i) for i in image_ids]:
        raise ValueError(f"{p} holds scores for other test images than this run (different profile, "
                         f"limit or split); re-run {made_by or 'the chapter that wrote it'} with the same parameters")
    return d


def paired_difference(fn_a, fn_b, groups: Sequence, n_boot: int = 500, seed: int = 0,
                      n_runs: tuple[int, int] = (1, 1)) -> Estimate:
    """Point value and 95% CI of ``fn_a - fn_b`` with one shared report-level resample.

    With ``n_runs == (1, 1)`` the functions take the row indices, ``fn(idx)``. With several
    training runs per side they take ``fn(idx, run)``; each replicate draws one run of each side
    independently (:func:`bootstrap_runs`), so the CI includes both sides' seed variance.
    """
    if tuple(n_runs) == (1, 1):
        diff = lambda idx, r: fn_a(idx) - fn_b(idx)  # noqa: E731
    else:
        diff = lambda idx, r: fn_a(idx, r[0]) - fn_b(idx, r[1])  # noqa: E731
    v, lo, hi = bootstrap_runs(diff, groups, tuple(n_runs), n_boot, seed)
    return Estimate.of(v, [lo, hi])
