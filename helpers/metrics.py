"""Multi-label metrics shared by every protocol, with report-level bootstrap CIs.

For ``n`` images, ``k`` labels, binary targets ``Y`` (n, k), scores ``S`` (n, k) (higher = more
likely) and per-label thresholds ``t`` (k,), predictions are ``P = S >= t``. Metrics:

* macro / micro F1 (sklearn ``classification_report``), exact match (subset accuracy: all
  ``k`` labels right), per-label precision, recall, F1, predicted-positive rate;
* ranking metrics from the scores alone: LRAP (label ranking average precision), coverage
  error (how far down the ranking one must go to cover every true label; best = the number
  of true labels), ranking loss;
* per-label AUROC and their mean over labels with both classes present (macro AUROC).

Confidence intervals: 95% percentile bootstrap, resampling *reports* (an image's report is its
cluster), so two images of one report never land in different resamples independently.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

HEADLINE = ("f1_macro", "f1_micro", "exact_match", "lrap", "coverage_error", "ranking_loss", "auroc_macro")


def _ranking(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    """LRAP, coverage error and ranking loss of targets (n, k) and scores (n, k).

    Vectorised re-implementations of sklearn's ``label_ranking_average_precision_score``,
    ``coverage_error`` and ``label_ranking_loss`` (identical values, ties included; the tests
    check it): sklearn loops over samples in Python, which made bootstrap CIs the slowest step.
    """
    y = np.asarray(y).astype(bool)
    s = np.asarray(s, dtype=float)
    n, k = y.shape
    npos = y.sum(1)
    ge = s[:, None, :] >= s[:, :, None]  # ge[i, a, b]: label b scores at least as high as a
    rank = ge.sum(2)
    hits = (ge & y[:, None, :]).sum(2)
    prec = np.where(y, hits / rank, 0.0).sum(1) / np.maximum(npos, 1)
    lrap = np.where((npos == 0) | (npos == k), 1.0, prec)
    cover = np.where(y, rank, 0).max(1)
    bad = (y[:, :, None] & ~y[:, None, :] & (s[:, :, None] <= s[:, None, :])).sum((1, 2))
    denom = npos * (k - npos)
    rl = np.where(denom > 0, bad / np.maximum(denom, 1), 0.0)
    return {"lrap": float(lrap.mean()), "coverage_error": float(cover.mean()), "ranking_loss": float(rl.mean())}


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
    out: dict[str, Any] = {
        "f1_macro": float(rep["macro avg"]["f1-score"]),
        "f1_micro": float(rep["micro avg"]["f1-score"]),
        "exact_match": float((pred == y).all(1).mean()),
        **_ranking(y, s),
        "auroc_macro": float(np.nanmean(auc)) if np.isfinite(auc).any() else float("nan"),
        "per_label": {
            name: {"precision": float(rep[name]["precision"]), "recall": float(rep[name]["recall"]),
                   "f1": float(rep[name]["f1-score"]), "support": int(rep[name]["support"]),
                   "prevalence": float(y[:, j].mean()), "predicted_rate": float(pred[:, j].mean()),
                   "auroc": None if np.isnan(auc[j]) else float(auc[j])}
            for j, name in enumerate(label_names)},
    }
    return out


def _headline(y: np.ndarray, s: np.ndarray, pred: np.ndarray) -> np.ndarray:
    y, pred = np.asarray(y).astype(bool), np.asarray(pred).astype(bool)
    r = _ranking(y, s)
    auc = per_label_auroc(y, s)
    f1m, f1u = _f1(y, pred)
    return np.array([f1m, f1u, (pred == y).all(1).mean(), r["lrap"], r["coverage_error"], r["ranking_loss"],
                     np.nanmean(auc) if np.isfinite(auc).any() else np.nan])


def _resamples(groups: Sequence, n_boot: int, seed: int):
    """Yield ``n_boot`` row-index arrays, each drawing ``len(unique(groups))`` groups with replacement
    (all rows of a drawn group come together). Deterministic for a ``seed``."""
    uniq, inv = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield np.concatenate([members[g] for g in rng.integers(0, len(uniq), len(uniq))])


def bootstrap_ci(y: np.ndarray, s: np.ndarray, pred: np.ndarray, groups: Sequence, n_boot: int = 500,
                 seed: int = 0, alpha: float = 0.05) -> dict[str, list[float]]:
    """95% percentile CIs of the headline metrics, resampling ``groups`` (report ids).

    Deterministic for a given ``seed``. Returns metric -> [low, high].
    """
    stats = np.array([_headline(y[idx], s[idx], pred[idx]) for idx in _resamples(groups, n_boot, seed)])
    lo, hi = np.nanpercentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    return {m: [float(a), float(b)] for m, a, b in zip(HEADLINE, lo, hi)}


def evaluate(y: np.ndarray, scores: np.ndarray, thresholds: np.ndarray | float,
             label_names: Sequence[str], groups: Sequence | None = None, n_boot: int = 500,
             seed: int = 0) -> dict[str, Any]:
    """Point metrics plus bootstrap CIs (when ``groups`` is given and ``n_boot > 0``).

    Parameters
    ----------
    y : (n, k) 0/1 targets. scores : (n, k) real scores. thresholds : (k,) or a scalar.
    groups : (n,) report id per image, the bootstrap's resampling unit.
    """
    y = np.asarray(y).astype(int)
    s = np.asarray(scores, dtype=float)
    if y.shape != s.shape:
        raise ValueError(f"targets {y.shape} and scores {s.shape} differ in shape")
    t = np.broadcast_to(np.asarray(thresholds, dtype=float), (y.shape[1],))
    pred = (s >= t).astype(int)
    out = point_metrics(y, s, pred, label_names)
    out["thresholds"] = {n: float(v) for n, v in zip(label_names, t)}
    out["n_images"] = int(len(y))
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
    vals = np.array([fn(idx) for idx in _resamples(groups, n_boot, seed)], dtype=float)
    lo, hi = np.nanpercentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    return np.asarray(fn(np.arange(len(groups))), dtype=float), lo, hi


def bootstrap_stat(fn, groups: Sequence, n_boot: int = 500, seed: int = 0,
                   alpha: float = 0.05) -> tuple[float, float, float]:
    """Point value and 95% percentile CI of ``fn(idx)`` under a report-level bootstrap.

    ``fn`` takes an index array into the rows (all rows for the point value) and returns a float.
    """
    v, lo, hi = bootstrap_values(fn, groups, n_boot, seed, alpha)
    return float(v), float(lo), float(hi)


def headline_table(result: dict[str, Any]):
    """The headline metrics of :func:`evaluate` output as a table: metric x (test, CI low, CI high)."""
    import pandas as pd

    return pd.DataFrame({k: [result[k], *result["ci95"][k]] for k in HEADLINE},
                        index=["test", "CI low", "CI high"]).T


def write_metrics(path, setting: str, metrics: dict[str, Any], params: dict[str, Any],
                  stamp: dict[str, Any], **extra: Any):
    """Write one run's metrics JSON atomically: setting, metrics (with CIs), params, stamp."""
    from .io import atomic_write_json

    return atomic_write_json(path, {"setting": setting, "metrics": metrics, "params": params,
                                    "stamp": stamp, **extra})


def save_scores(path, image_ids: Sequence[str], scores: np.ndarray, y: np.ndarray, groups: Sequence,
                thresholds: np.ndarray) -> None:
    """Save one setting's test scores (n, k), targets (n, k), report ids and thresholds (k,).

    Later chapters compare settings image by image (paired bootstrap) from these files.
    """
    import io as _io

    from .io import atomic_write_bytes

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
                                f"run that chapter first (python -m helpers.run {made_by or '<chapter>'})")
    with np.load(p) as z:
        d = {k: z[k] for k in z.files}
    if image_ids is not None and list(d["image_ids"]) != [str(i) for i in image_ids]:
        raise ValueError(f"{p} holds scores for other test images than this run (different profile, "
                         f"limit or split); re-run {made_by or 'the chapter that wrote it'} with the same parameters")
    return d


def paired_difference(fn_a, fn_b, groups: Sequence, n_boot: int = 500, seed: int = 0) -> tuple[float, float, float]:
    """Point value and 95% CI of ``fn_a(idx) - fn_b(idx)`` with one shared report-level resample."""
    return bootstrap_stat(lambda idx: fn_a(idx) - fn_b(idx), groups, n_boot, seed)
