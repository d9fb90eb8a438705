"""Class geometry of an embedding space: inter- and intra-class distances and their ratio.

Definitions (multi-label: an image counts toward *every* class it is positive for). For image
embeddings ``E`` (n, d) (raw, unnormalised, as the original study measures them) and targets ``Y``
(n, k), the centroid of class ``j`` is ``c_j = mean{E_i : Y_ij = 1}``. Then

* intra-class distance of ``j``: ``intra_j = mean{ |E_i - c_j| : Y_ij = 1 }`` (Euclidean);
* inter-class distance of ``j``: ``inter_j = mean{ |c_j - c_l| : l != j }``;
* overall: ``intra = mean_j intra_j``, ``inter`` = mean over all pairs ``j < l`` of
  ``|c_j - c_l|``, and ``ratio = inter / intra`` (higher: classes further apart relative to
  their spread).

Classes with fewer than ``min_count`` members are left out (their centroid is noise). Distances
carry the embedding's scale; the ratio is scale-free, so it is the number to compare across models.

Confidence intervals (:func:`geometry_with_ci`) resample reports. The class set is fixed once,
on the whole test split (classes with at least ``min_count`` distinct images), so every
replicate averages over the same classes. A bootstrap replicate draws some images twice: they
count twice in a centroid (as weights) but only once toward a class's size. A replicate in which
a class of the set has fewer than two *distinct* images (no spread can be measured) is dropped,
and the number of dropped replicates is reported (``dropped``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from helpers.analysis.estimate import Estimate, table_record
from helpers.analysis.metrics import bootstrap_runs


def class_geometry(emb: np.ndarray, y: np.ndarray, min_count: int = 5,
                   classes: np.ndarray | None = None) -> dict[str, np.ndarray | float]:
    """Per-class and overall distances.

    ``classes`` (k,) bool fixes the class set (default: classes with ``min_count``
    members). Returns ``intra`` (k,), ``inter`` (k,) (NaN for classes left out),
    ``used`` (k,) bool and the overall ``intra_all``, ``inter_all`` and ``ratio_all``
    floats.
    """
    e = np.asarray(emb, dtype=np.float64)
    y = np.asarray(y).astype(bool)
    k = y.shape[1]
    used = (y.sum(0) >= min_count if classes is None
            else np.asarray(classes, bool) & y.any(0))
    cent = np.full((k, e.shape[1]), np.nan)
    intra = np.full(k, np.nan)
    for j in np.flatnonzero(used):
        m = e[y[:, j]]
        cent[j] = m.mean(0)
        intra[j] = np.linalg.norm(m - cent[j], axis=1).mean()
    idx = np.flatnonzero(used)
    dist = np.linalg.norm(cent[idx, None, :] - cent[None, idx, :], axis=-1)
    inter = np.full(k, np.nan)
    if len(idx) > 1:
        inter[idx] = dist.sum(1) / (len(idx) - 1)
        inter_all = float(dist[np.triu_indices(len(idx), 1)].mean())
    else:
        inter_all = float("nan")
    intra_all = float(np.nanmean(intra)) if used.any() else float("nan")
    return {"intra": intra, "inter": inter, "used": used,
            "intra_all": intra_all, "inter_all": inter_all,
            "ratio_all": inter_all / intra_all if intra_all else float("nan")}


def geometry_with_ci(emb: np.ndarray | Sequence[np.ndarray], y: np.ndarray, groups: Sequence,
                     labels: Sequence[str], n_boot: int = 200, seed: int = 0,
                     min_count: int = 5) -> dict:
    """Overall inter, intra, ratio with report-level bootstrap 95% CIs, plus per-label values.

    ``emb`` is one embedding matrix (n, d) or a list of them, one per training seed: then the
    point values are means over seeds and every replicate also resamples the seeds and
    averages over them (:func:`metrics.bootstrap_runs`: an interval for the mean). Returns a
    table of estimates (:func:`helpers.analysis.estimate.table_record`: ``"inter"``,
    ``"intra"``, ``"ratio"`` with their intervals under ``"ci95"``) plus ``"per_label"``,
    ``"classes"``, ``"dropped"``, ``"n_boot"`` and ``"runs"``; ``per_label`` maps label ->
    {inter, intra, ratio, n} (point values, first seed).
    """

    runs = [emb] if isinstance(emb, np.ndarray) else list(emb)
    y = np.asarray(y).astype(bool)
    classes = y.sum(0) >= min_count  # fixed once, on the whole split
    keys = ("inter_all", "intra_all", "ratio_all")
    dropped, last = [0], [None]

    def overall(idx: np.ndarray, r: tuple[int, ...]) -> list[float]:
        if not spread_measurable(y, idx, classes):
            if idx is not last[0]:  # one replicate may call once per drawn seed
                dropped[0] += 1
                last[0] = idx
            return [np.nan] * 3
        g = class_geometry(runs[r[0]][idx], y[idx], classes=classes)
        return [g[k] for k in keys]

    point, lo, hi = bootstrap_runs(overall, groups, (len(runs),), n_boot, seed)
    g = class_geometry(runs[0], y, classes=classes)
    out: dict = table_record({name: Estimate.of(point[i], [lo[i], hi[i]])
                              for i, name in enumerate(("inter", "intra", "ratio"))})
    out.update({"classes": [c for c, u in zip(labels, classes) if u], "dropped": dropped[0],
                "n_boot": n_boot, "runs": len(runs)})
    out["per_label"] = {c: {"inter": float(g["inter"][j]), "intra": float(g["intra"][j]),
                            "ratio": float(g["inter"][j] / g["intra"][j]), "n": int(y[:, j].sum())}
                        for j, c in enumerate(labels) if g["used"][j]}
    return out


def spread_measurable(y: np.ndarray, idx: np.ndarray, classes: np.ndarray) -> bool:
    """Whether every class of ``classes`` has at least two *distinct* images among rows ``idx``."""
    u = np.unique(idx)
    return bool((y[u][:, classes].sum(0) >= 2).all())


def ratio_fn(runs: Sequence[np.ndarray], y: np.ndarray, min_count: int = 5):
    """``fn(idx, r)``: the overall ratio of run ``r`` on rows ``idx``, over the class set fixed on
    all rows of ``y`` (for paired differences between settings)."""
    y = np.asarray(y).astype(bool)
    classes = y.sum(0) >= min_count

    def fn(idx: np.ndarray, r: int = 0) -> float:
        if not spread_measurable(y, idx, classes):
            return float("nan")
        return class_geometry(runs[r][idx], y[idx], classes=classes)["ratio_all"]

    return fn


def primary_label(y: np.ndarray, labels: Sequence[str], highlight: Sequence[str]) -> np.ndarray:
    """One colour label per image for scatter plots: the rarest of ``highlight`` it has, else "other".

    y : (n, k) targets; returns (n,) strings.
    """
    y = np.asarray(y).astype(bool)
    cols = [list(labels).index(h) for h in highlight]
    order = sorted(range(len(cols)), key=lambda i: y[:, cols[i]].sum())  # rarest first
    out = np.full(len(y), "other", dtype=object)
    for i in reversed(order):  # rarest written last, so it wins
        out[y[:, cols[i]]] = highlight[i]
    return out
