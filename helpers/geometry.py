"""Class geometry of an embedding space: inter- and intra-class distances and their ratio.

Definitions (multi-label: an image counts toward *every* class it is positive for). For image
embeddings ``E`` (n, d) (raw, unnormalised, as the seed study measures them) and targets ``Y``
(n, k), the centroid of class ``j`` is ``c_j = mean{E_i : Y_ij = 1}``. Then

* intra-class distance of ``j``: ``intra_j = mean{ |E_i - c_j| : Y_ij = 1 }`` (Euclidean);
* inter-class distance of ``j``: ``inter_j = mean{ |c_j - c_l| : l != j }``;
* overall: ``intra = mean_j intra_j``, ``inter`` = mean over all pairs ``j < l`` of
  ``|c_j - c_l|``, and ``ratio = inter / intra`` (higher: classes further apart relative to
  their spread).

Classes with fewer than ``min_count`` members are left out (their centroid is noise). Distances
carry the embedding's scale; the ratio is scale-free, so it is the number to compare across models.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def class_geometry(emb: np.ndarray, y: np.ndarray, min_count: int = 5) -> dict[str, np.ndarray | float]:
    """Per-class and overall distances.

    Returns ``intra`` (k,), ``inter`` (k,) (NaN for classes left out), ``used`` (k,) bool and the
    overall ``intra_all``, ``inter_all`` and ``ratio_all`` floats.
    """
    e = np.asarray(emb, dtype=np.float64)
    y = np.asarray(y).astype(bool)
    k = y.shape[1]
    used = y.sum(0) >= min_count
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
    return {"intra": intra, "inter": inter, "used": used, "intra_all": intra_all, "inter_all": inter_all,
            "ratio_all": inter_all / intra_all if intra_all else float("nan")}


def geometry_with_ci(emb: np.ndarray, y: np.ndarray, groups: Sequence, labels: Sequence[str],
                     n_boot: int = 200, seed: int = 0, min_count: int = 5) -> dict:
    """Overall inter, intra, ratio with report-level bootstrap 95% CIs, plus per-label values.

    Returns ``{"inter", "intra", "ratio", "inter_ci", "intra_ci", "ratio_ci", "per_label"}``;
    ``per_label`` maps label -> {inter, intra, ratio, n} (point values).
    """
    from .metrics import bootstrap_values

    keys = ("inter_all", "intra_all", "ratio_all")

    def overall(idx: np.ndarray) -> list[float]:
        g = class_geometry(emb[idx], y[idx], min_count)
        return [g[k] for k in keys]

    _, lo, hi = bootstrap_values(overall, groups, n_boot, seed)  # one geometry per resample
    g = class_geometry(emb, y, min_count)
    out: dict = {}
    for i, (key, name) in enumerate(zip(keys, ("inter", "intra", "ratio"))):
        out[name], out[f"{name}_ci"] = g[key], [float(lo[i]), float(hi[i])]
    out["per_label"] = {c: {"inter": float(g["inter"][j]), "intra": float(g["intra"][j]),
                            "ratio": float(g["inter"][j] / g["intra"][j]), "n": int(np.asarray(y)[:, j].sum())}
                        for j, c in enumerate(labels) if g["used"][j]}
    return out


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
