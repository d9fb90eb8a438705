"""Scoring a saliency map against a ground-truth region, CheXlocalize's way, with its chance level.

Every map ``M`` is an (S, S) array scaled to [0, 1] (min 0, max 1, as pytorch-grad-cam scales
its maps) and every region ``G`` an (S, S) bool mask at the model's input geometry. Per (image,
label) pair:

* **hit rate** (CheXlocalize's name for the pointing game): the map's most representative point
  is its maximum. Where several pixels share the maximum (within :data:`PEAK_TOL`), the hit is the
  fraction of them inside the region: the expected hit of a tie broken uniformly at random,
  never the first pixel in array order (:func:`pointing_game`). Its **chance level** depends
  on where a map *can* peak. For a map defined per pixel it is the region's area fraction
  ``|G| / S^2``. An attribution map is a ``g x g`` patch grid upsampled bilinearly to
  ``S x S``: it peaks near grid-cell centres or in the clamped edge strips, never uniformly,
  so its chance is ``sum_p w_p G_p`` with ``w`` the peak distribution of random grids
  upsampled the same way, found by Monte Carlo (:func:`peak_weights`, :func:`grid_chance`).
* **degenerate map**: one whose values are all equal (all zero, or constant, or not finite).
  It has no most representative point: it is scored at its chance level (the expected hit of
  a map that carries no information). Degenerate maps are counted per setting and method
  (:func:`is_degenerate`), and their IoU is that of their (empty) segmentation, 0.
* **IoU** of the segmentation ``{M > t}`` (strictly above, as CheXlocalize) with ``G`` (0
  when the segmentation is empty, as CheXlocalize's ``true_pos_only=False``), with ``t``
  tuned on validation pairs per pathology from CheXlocalize's grid 0.2, 0.3, ..., 0.7
  (:func:`tune_thresholds`); **mIoU** is its mean. Otsu's segmentation is CheXlocalize's
  (:func:`otsu_segmentation`).
* **CheXlocalize-literal** scores, a sensitivity check of the two conventions above: the hit
  of the *first* maximum in row-major order (``np.argmax``, as their ``eval.py``: ties and
  constant maps then score whatever pixel comes first), and the IoU of Otsu's segmentation
  with their default ``true_pos_only=True`` (undefined, and left out of the mean, when either
  mask is empty).
  A pathology with fewer than :data:`MIN_TUNE_PAIRS` validation pairs takes the threshold tuned
  on all validation pairs pooled; with fewer than that in total, Otsu's threshold of each map
  (CheXlocalize's default when no thresholds are given). No threshold is ever tuned on one or
  two images, and never on the pair it scores (pairs of the scored image's report are left out).
* **IoU@0.1**: the fraction of pairs with IoU >= 0.1 (the lenient end of ChestX-ray8's
  localisation thresholds; this project's earlier "hit rate").

Scores are computed batch by batch (:func:`pair_stats`), so maps never have to be held in
memory all at once, and summarised with report-level bootstrap CIs (:func:`summarise`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from helpers.analysis.estimate import Estimate, table_record
from helpers.analysis.metrics import bootstrap_values, paired_difference

PEAK_TOL = 1e-6
"""Two map values closer than this tie (maps are in [0, 1])."""
THRESHOLD_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
"""Segmentation thresholds searched on validation (CheXlocalize's ``np.arange(0.2, .8, .1)``)."""
MIN_TUNE_PAIRS = 10
"""Fewest validation pairs a threshold may be tuned on (per pathology, else pooled, else Otsu)."""
IOU_AT = 0.1
REFERENCE_MAPS = ("oracle", "uniform", "random", "random grid", "centre")
PEAK_DRAWS = 2000
"""Random grids behind each Monte-Carlo chance level (:func:`peak_weights`)."""


def normalise(maps: np.ndarray) -> np.ndarray:
    """Min-max scale each map (n, S, S) to [0, 1]; a constant or non-finite map becomes all zero."""
    m = np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    flat = m.reshape(len(m), -1)
    lo, hi = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
    rng = hi - lo
    out = np.where(rng > PEAK_TOL, (flat - lo) / np.where(rng > PEAK_TOL, rng, 1), 0.0)
    return out.reshape(m.shape).astype(np.float32)


def is_degenerate(maps: np.ndarray) -> np.ndarray:
    """(n,) bool: the map's values are all equal (within :data:`PEAK_TOL`) or not all finite."""
    flat = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    finite = np.isfinite(flat).all(1)
    f = np.where(np.isfinite(flat), flat, 0.0)
    return ~finite | (f.max(1) - f.min(1) <= PEAK_TOL)


def area_fraction(masks: np.ndarray) -> np.ndarray:
    """The chance level per pair (n,) of a map that peaks at a uniformly drawn pixel: the
    region's share of the image."""
    return np.asarray(masks, dtype=bool).reshape(len(masks), -1).mean(1)


def upsample_grid(grids: np.ndarray, size: int) -> np.ndarray:
    """Native maps (n, g, g) -> (n, size, size) exactly as the attribution methods do it
    (pytorch-grad-cam's ``scale_cam_image``: min-max scale, ``cv2.resize`` bilinear, min-max
    again)."""
    import cv2

    out = []
    for m in np.asarray(grids, dtype=np.float32):
        m = m - m.min()
        m = cv2.resize(m / (1e-7 + m.max()), (size, size))
        m = m - m.min()
        out.append(m / (1e-7 + m.max()))
    return np.asarray(out, dtype=np.float32).reshape(-1, size, size)


_PEAKS: dict = {}


def peak_weights(grid: int | None, size: int, n_draws: int = PEAK_DRAWS, seed: int = 0) -> np.ndarray:
    """Where a map that carries no information peaks: (size, size) weights summing to 1.

    ``grid = None``: a map defined per pixel, every pixel alike (weights ``1 / size^2``).
    ``grid = g``: the mean over ``n_draws`` random ``g x g`` grids (independent uniform
    values), upsampled as the methods upsample (:func:`upsample_grid`), of each map's tied
    maxima as a distribution (the tie convention of :func:`pointing_game`). Cached per
    arguments.
    """
    if grid is None or grid == size:
        return np.full((size, size), 1.0 / size ** 2)
    key = (int(grid), int(size), int(n_draws), int(seed))
    if key not in _PEAKS:
        rng = np.random.default_rng(seed)
        w = np.zeros(size * size)
        for start in range(0, n_draws, 250):
            m = upsample_grid(rng.random((min(250, n_draws - start), grid, grid)), size)
            flat = m.reshape(len(m), -1)
            peak = flat >= flat.max(1, keepdims=True) - PEAK_TOL
            w += (peak / peak.sum(1, keepdims=True)).sum(0)
        _PEAKS[key] = (w / n_draws).reshape(size, size)
    return _PEAKS[key]


def grid_chance(masks: np.ndarray, grid: int | None, n_draws: int = PEAK_DRAWS) -> np.ndarray:
    """The pointing game's chance level per pair (n,) for maps on a ``grid x grid`` native
    grid (``None``: per pixel, the area fraction): the expected hit of a map that carries no
    information, ``sum_p w_p G_p`` with ``w`` from :func:`peak_weights`."""
    masks = np.asarray(masks, dtype=bool)
    if not len(masks):
        return np.zeros(0)
    w = peak_weights(grid, masks.shape[-1], n_draws)
    return (masks.reshape(len(masks), -1) * w.reshape(1, -1)).sum(1)


def pointing_game(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Hit per pair (n,) in [0, 1]: the share of the map's maximal pixels inside the
    region.

    A unique maximum scores 1 or 0. Tied maxima score the fraction of them inside ``G``
    (the expected hit of a random tie-break); a degenerate map ties everywhere and so
    scores the region's area fraction, the chance level. Non-finite values count as 0.
    """
    flat = np.nan_to_num(np.asarray(maps, dtype=np.float64),
                         nan=0.0, posinf=0.0, neginf=0.0)
    flat = flat.reshape(len(flat), -1)
    g = np.asarray(masks, dtype=bool).reshape(len(flat), -1)
    peak = flat >= flat.max(1, keepdims=True) - PEAK_TOL
    return (peak & g).sum(1) / peak.sum(1)


def iou(maps: np.ndarray, masks: np.ndarray,
        threshold: float | np.ndarray) -> np.ndarray:
    """IoU (n,) of ``{maps > threshold}`` with the masks (strictly above, as
    CheXlocalize's ``mask > threshold``); ``threshold`` scalar or per pair (n,).

    An empty segmentation scores 0 (a pair whose region is empty too also scores 0).
    """
    t = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (len(maps),))
    return _iou(np.asarray(maps) > t[:, None, None], masks)


def _iou(seg: np.ndarray, masks: np.ndarray) -> np.ndarray:
    b, g = np.asarray(seg, dtype=bool), np.asarray(masks, dtype=bool)
    inter = (b & g).sum((1, 2))
    union = (b | g).sum((1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def otsu_segmentation(maps: np.ndarray) -> np.ndarray:
    """CheXlocalize's default segmentation of each map (n, S, S) -> bool (n, S, S).

    As their ``heatmap_to_segmentation.cam_to_segmentation``: min-max scale, ``np.uint8(255 *
    m)`` (truncating), Otsu's threshold (``cv2.threshold(..., THRESH_OTSU)``: strictly above),
    then every contour with more than one point drawn filled (PIL polygon, outline 1, fill 1),
    which fills holes and drops isolated pixels. A degenerate map: an empty segmentation.
    """
    import cv2
    from PIL import Image, ImageDraw

    maps = np.asarray(maps, dtype=np.float64)
    out = np.zeros(maps.shape, bool)
    for i, m in enumerate(maps):
        m = np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0) - np.nan_to_num(m).min()
        if not m.max() > PEAK_TOL:
            continue
        u8 = np.uint8(255 * (m / m.max()))
        thresh = cv2.threshold(u8, 0, int(u8.max()), cv2.THRESH_OTSU)[1]
        cnts = cv2.findContours(thresh, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
        cnts = cnts[0] if len(cnts) == 2 else cnts[1]
        canvas = Image.new("L", (m.shape[1], m.shape[0]), 0)
        draw = ImageDraw.Draw(canvas)
        for c in cnts:
            if len(c) > 1:
                draw.polygon([tuple(int(v) for v in pt[0]) for pt in c], outline=1, fill=1)
        out[i] = np.asarray(canvas, dtype=bool)
    return out


def literal_hit(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """CheXlocalize's hit (n,): the region's value at the *first* maximum in row-major order
    (``np.unravel_index(np.argmax(m))``, their ``eval.py``); NaN for an empty region."""
    flat = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    g = np.asarray(masks, dtype=bool).reshape(len(flat), -1)
    first = np.argmax(flat, axis=1)
    hit = g[np.arange(len(g)), first].astype(float)
    return np.where(g.any(1), hit, np.nan)


def pair_stats(maps: np.ndarray, masks: np.ndarray,
               chance: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Everything needed to score a batch of pairs, without keeping the maps.

    ``chance`` (n,): each pair's chance level for these maps (:func:`grid_chance`; default the
    area fraction, for maps defined per pixel). Returns ``hit`` (n,) (a degenerate map's hit is
    its chance level), ``chance`` (n,), ``degenerate`` (n,) bool, ``iou_grid`` (n, G): the IoU
    at every threshold of :data:`THRESHOLD_GRID`, ``iou_otsu`` (n,), and the
    CheXlocalize-literal ``hit_literal`` and ``iou_literal`` (n,; NaN where undefined).
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.shape != np.asarray(masks).shape:
        raise ValueError(f"maps {maps.shape} and masks {np.asarray(masks).shape} differ in shape")
    chance = area_fraction(masks) if chance is None else np.asarray(chance, dtype=float)
    deg = is_degenerate(maps)
    m = np.where(deg[:, None, None], 0.0, np.nan_to_num(maps, nan=0.0)).astype(np.float32)
    seg = otsu_segmentation(m)
    g = np.asarray(masks, dtype=bool)
    both = seg.reshape(len(seg), -1).any(1) & g.reshape(len(g), -1).any(1)
    return {"hit": np.where(deg, chance, pointing_game(m, masks)), "chance": chance,
            "degenerate": deg,
            "iou_grid": np.stack([iou(m, masks, t) for t in THRESHOLD_GRID], 1)
            if len(m) else np.zeros((0, len(THRESHOLD_GRID))),
            "iou_otsu": _iou(seg, masks),
            "hit_literal": literal_hit(np.nan_to_num(maps, nan=0.0), masks),
            "iou_literal": np.where(both, _iou(seg, masks), np.nan)}


def concat_stats(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Join :func:`pair_stats` of consecutive batches."""
    if not parts:
        return {"hit": np.zeros(0), "chance": np.zeros(0), "degenerate": np.zeros(0, bool),
                "iou_grid": np.zeros((0, len(THRESHOLD_GRID))), "iou_otsu": np.zeros(0),
                "hit_literal": np.zeros(0), "iou_literal": np.zeros(0)}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@dataclass
class Thresholds:
    """The segmentation threshold of every scored pair and where it came from.

    ``value`` (n,): the threshold (NaN where Otsu's per-map threshold was used); ``source``
    (n,): ``per-pathology``, ``pooled`` or ``otsu``; ``n_tuned`` (n,): how many validation pairs
    it was tuned on (0 for Otsu).
    """

    value: np.ndarray
    source: np.ndarray
    n_tuned: np.ndarray


def tune_thresholds(tune_stats: dict[str, np.ndarray], tune_labels: Sequence[str],
                    tune_groups: Sequence, labels: Sequence[str], groups: Sequence,
                    min_pairs: int = MIN_TUNE_PAIRS) -> Thresholds:
    """The threshold of each scored pair (``labels``, ``groups``: its pathology and report),
    tuned on validation pairs (``tune_*``) by the rule of the module docstring.

    For each scored pair, the validation pairs of its own report are left out first, so a pair
    never scores with a threshold tuned on itself (a no-op when the two sets share no report).
    The best threshold maximises the mean IoU (ties: the lowest threshold).
    """
    grid = np.asarray(THRESHOLD_GRID)
    ig = np.asarray(tune_stats["iou_grid"], dtype=np.float64)
    tl, tg = np.asarray(tune_labels, dtype=object), np.asarray(tune_groups, dtype=object)
    labels, groups = np.asarray(labels, dtype=object), np.asarray(groups, dtype=object)
    value = np.full(len(labels), np.nan)
    source = np.full(len(labels), "otsu", dtype=object)
    n_tuned = np.zeros(len(labels), int)
    cache: dict = {}
    for i, (lab, grp) in enumerate(zip(labels, groups)):
        if (lab, grp) not in cache:
            keep = tg != grp
            own = keep & (tl == lab)
            if own.sum() >= min_pairs:
                cache[(lab, grp)] = (grid[np.argmax(ig[own].mean(0))], "per-pathology", int(own.sum()))
            elif keep.sum() >= min_pairs:
                cache[(lab, grp)] = (grid[np.argmax(ig[keep].mean(0))], "pooled", int(keep.sum()))
            else:
                cache[(lab, grp)] = (np.nan, "otsu", 0)
        value[i], source[i], n_tuned[i] = cache[(lab, grp)]
    return Thresholds(value, source, n_tuned)


def tuned_iou(stats: dict[str, np.ndarray], thresholds: Thresholds) -> np.ndarray:
    """IoU per scored pair (n,) at its threshold (a grid column, or Otsu's)."""
    grid = np.asarray(THRESHOLD_GRID)
    out = np.asarray(stats["iou_otsu"], dtype=np.float64).copy()
    tuned = np.isfinite(thresholds.value)
    cols = np.array([int(np.argmin(np.abs(grid - v))) for v in thresholds.value[tuned]], int)
    out[tuned] = np.asarray(stats["iou_grid"])[np.flatnonzero(tuned), cols]
    return out


SUMMARY_KEYS = ("hit_rate", "chance", "hit_minus_chance", "miou", "iou@0.1", "hit_rate_literal",
                "miou_literal")
"""The summary's estimates; the last two are CheXlocalize-literal (first maximum; IoU with
``true_pos_only=True``, the mean over pairs where it is defined)."""


def per_pair_scores(stats: dict[str, np.ndarray], thresholds: Thresholds) -> dict[str, np.ndarray]:
    """The per-pair values behind :data:`SUMMARY_KEYS` (n,) each, and ``degenerate``."""
    i = tuned_iou(stats, thresholds)
    n = len(stats["hit"])
    return {"hit_rate": stats["hit"], "chance": stats["chance"],
            "hit_minus_chance": stats["hit"] - stats["chance"], "miou": i,
            "iou@0.1": (i >= IOU_AT).astype(float), "degenerate": stats["degenerate"],
            "hit_rate_literal": stats.get("hit_literal", np.full(n, np.nan)),
            "miou_literal": stats.get("iou_literal", np.full(n, np.nan))}


def summarise(stats: dict[str, np.ndarray], thresholds: Thresholds, labels: Sequence[str],
              groups: Sequence, n_boot: int = 200, seed: int = 0) -> dict:
    """Hit rate, its chance level, hit minus chance, mIoU and IoU@0.1 with report-level 95% CIs.

    Returns a table of estimates (:func:`helpers.analysis.estimate.table_record`: each of
    :data:`SUMMARY_KEYS` with its interval under ``"ci95"``) plus ``n_pairs``,
    ``n_degenerate``, ``threshold_sources`` (counts), ``per_label`` (label -> hit rate, chance,
    mIoU, n, threshold) and ``per_pair`` (the arrays, for paired comparisons).
    """

    per = per_pair_scores(stats, thresholds)
    labels = np.asarray(labels, dtype=object)
    if len(labels):
        cols = np.stack([per[k] for k in SUMMARY_KEYS], 1).astype(float)
        v, lo, hi = bootstrap_values(lambda idx: _nanmean_cols(cols[idx]), groups, n_boot, seed)
    else:
        v = lo = hi = np.full(len(SUMMARY_KEYS), np.nan)
    out = table_record({k: Estimate.of(v[j], [lo[j], hi[j]]) for j, k in enumerate(SUMMARY_KEYS)})
    out.update({"n_pairs": int(len(labels)), "n_degenerate": int(np.sum(per["degenerate"]))})
    src, cnt = np.unique(thresholds.source.astype(str), return_counts=True)
    out["threshold_sources"] = {str(s): int(c) for s, c in zip(src, cnt)}
    out["per_label"] = {
        str(c): {"hit_rate": float(per["hit_rate"][labels == c].mean()),
                 "chance": float(per["chance"][labels == c].mean()),
                 "miou": float(per["miou"][labels == c].mean()), "n": int((labels == c).sum()),
                 "threshold": _first(thresholds, labels == c)}
        for c in dict.fromkeys(labels)}
    out["per_pair"] = per
    return out


def _nanmean_cols(a: np.ndarray) -> np.ndarray:
    """Column means ignoring NaN (an all-NaN column: NaN, without a warning)."""
    ok = np.isfinite(a)
    return np.where(ok.any(0), np.where(ok, a, 0).sum(0) / np.maximum(ok.sum(0), 1), np.nan)


def _first(thresholds: Thresholds, sel: np.ndarray) -> str:
    i = int(np.flatnonzero(sel)[0])
    v = thresholds.value[i]
    if not np.isfinite(v):
        return "Otsu"
    return f"{v:.1f} ({thresholds.source[i]}, n={thresholds.n_tuned[i]})"


def paired_gain(a: np.ndarray, b: np.ndarray, groups: Sequence, n_boot: int = 200,
                seed: int = 0) -> Estimate:
    """Mean of ``a - b`` over the same pairs (n,) and its report-level 95% CI (missing, with
    no pair)."""

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not len(a):
        return Estimate(None)
    return paired_difference(lambda i: a[i].mean(), lambda i: b[i].mean(), groups, n_boot, seed)


# --------------------------------------------------------------------------------------
# Reference maps: what a map scores without a model
# --------------------------------------------------------------------------------------


def reference_maps(kind: str, masks: np.ndarray, seed: int = 0, grid: int | None = None) -> np.ndarray:
    """Maps (n, S, S) in [0, 1] that validate the scoring on the pairs' own regions.

    * ``oracle``: the true region blurred with a Gaussian of sigma ``S/32`` (must score near 1);
    * ``uniform``: the same value everywhere (degenerate: its hit is exactly the chance level);
    * ``random``: independent uniform noise per pixel (its hit should match the area fraction);
    * ``random grid``: independent uniform noise on the models' ``grid x grid`` patch grid,
      upsampled as their maps are (its hit should match :func:`grid_chance`);
    * ``centre``: a Gaussian bump of sigma ``S/4`` at the image centre (a fixed guess that never
      looks at the image; it scores the share of regions that cover the centre).
    """
    import cv2

    masks = np.asarray(masks, dtype=bool)
    n, S = len(masks), masks.shape[-1] if masks.ndim == 3 else 0
    if kind == "oracle":
        sig = S / 32
        return normalise(np.stack([cv2.GaussianBlur(m.astype(np.float32), (0, 0), sig) for m in masks])
                         if n else np.zeros((0, S, S)))
    if kind == "uniform":
        return np.zeros((n, S, S), np.float32)
    if kind == "random":
        return np.random.default_rng(seed).random((n, S, S), dtype=np.float32)
    if kind == "random grid":
        g = grid or S
        return upsample_grid(np.random.default_rng(seed).random((n, g, g)), S) if n else \
            np.zeros((0, S, S), np.float32)
    if kind == "centre":
        yy, xx = np.mgrid[:S, :S] - (S - 1) / 2
        bump = np.exp(-(xx ** 2 + yy ** 2) / (2 * (S / 4) ** 2)).astype(np.float32)
        return np.broadcast_to(normalise(bump[None])[0], (n, S, S)).copy()
    raise ValueError(f"unknown reference map {kind!r}; valid: {', '.join(REFERENCE_MAPS)}")


def location_prior(train_masks: np.ndarray, train_labels: Sequence[str]) -> dict[str, np.ndarray]:
    """Per label, the mean of its training regions scaled to [0, 1]: (S, S) float each.

    The same map for every image: it knows where a finding usually is, without looking.
    """
    labs = np.asarray(train_labels, dtype=object)
    out = {}
    for c in dict.fromkeys(labs):
        out[str(c)] = normalise(np.asarray(train_masks)[labs == c].mean(0, dtype=np.float32)[None])[0]
    return out


def prior_maps(prior: dict[str, np.ndarray], labels: Sequence[str], size: int) -> np.ndarray:
    """The location prior's map of each pair (n, S, S); all zero for a label it never saw."""
    return np.stack([prior.get(str(c), np.zeros((size, size), np.float32)) for c in labels]) \
        if len(labels) else np.zeros((0, size, size), np.float32)


# --------------------------------------------------------------------------------------
# Map similarity (model randomisation) and human agreement
# --------------------------------------------------------------------------------------


def downsample(maps: np.ndarray, factor: int = 4) -> np.ndarray:
    """Block means of ``factor x factor`` pixels: (n, S, S) -> (n, S/f, S/f) float32."""
    m = np.asarray(maps, dtype=np.float32)
    n, S = m.shape[0], m.shape[-1]
    f = max(1, int(factor))
    s = S // f
    return m[:, :s * f, :s * f].reshape(n, s, f, s, f).mean((2, 4))


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation (n,) between paired maps (n, h, w); NaN where either is constant.

    Adebayo et al.'s similarity of a map with the map of a randomised model.
    """
    from scipy.stats import rankdata

    ra = rankdata(np.asarray(a).reshape(len(a), -1), axis=1)
    rb = rankdata(np.asarray(b).reshape(len(b), -1), axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1), np.nan)


def representative_point(mask: np.ndarray) -> tuple[int, int] | None:
    """A region's most representative point: its most interior pixel (the maximum of the distance
    to the region's edge), for a human reader's "pointing game". ``None`` for an empty region."""
    import cv2

    m = np.asarray(mask, dtype=np.uint8)
    if not m.any():
        return None
    d = cv2.distanceTransform(np.pad(m, 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(d)), d.shape)
    return int(r), int(c)


def reader_agreement(reader_masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Agreement of every pair of readers on the (image, label) pairs both annotated.

    ``reader_masks``: reader -> (n, S, S) bool (empty where that reader drew nothing). For each
    ordered pair of readers (a, b) and each pair both annotated: the IoU of a's region with b's,
    and whether a's most representative point lies inside b's region (a human "hit").
    Returns ``{"pair": (m,) pair index, "iou": (m,), "hit": (m,)}``, one row per (a, b, pair).
    """
    names = sorted(reader_masks)
    rows = []
    for a in names:
        for b in names:
            if a == b:
                continue
            ma, mb = np.asarray(reader_masks[a], bool), np.asarray(reader_masks[b], bool)
            for i in np.flatnonzero(ma.reshape(len(ma), -1).any(1) & mb.reshape(len(mb), -1).any(1)):
                r, c = representative_point(ma[i])
                overlap = iou(ma[i][None].astype(np.float32), mb[i][None], 0.5)[0]
                rows.append((i, overlap, float(mb[i][r, c])))
    arr = np.array(rows, dtype=float).reshape(-1, 3)
    return {"pair": arr[:, 0].astype(int), "iou": arr[:, 1], "hit": arr[:, 2]}


# --------------------------------------------------------------------------------------
# Which model may score which image (annotated images inside a training split)
# --------------------------------------------------------------------------------------


def fold_assignment(groups: Sequence, k: int, seed: int = 0) -> np.ndarray:
    """A fold id in ``0..k-1`` for each scored row (n,), whole reports in one fold.

    Reports are shuffled with ``seed`` and dealt round-robin, so folds differ by at most one
    report.
    """
    if k < 1:
        raise ValueError(f"k (number of folds) must be >= 1, got {k!r}")
    g = np.asarray(groups, dtype=object)
    uniq = list(dict.fromkeys(g))
    order = np.random.default_rng(seed).permutation(len(uniq))
    fold_of = {uniq[j]: int(i % k) for i, j in enumerate(order)}
    return np.array([fold_of[x] for x in g], dtype=int)


def holdout_training_rows(train_rows: np.ndarray, train_groups: Sequence, scored_groups: Sequence,
                          folds: np.ndarray) -> list[np.ndarray]:
    """For each fold ``f``: the training rows a model may be fitted on to score fold ``f``'s rows,
    i.e. every training row whose report is not among fold ``f``'s scored reports."""
    train_rows = np.asarray(train_rows)
    tg = np.asarray(train_groups, dtype=object)
    sg = np.asarray(scored_groups, dtype=object)
    out = []
    for f in range(int(folds.max()) + 1 if len(folds) else 0):
        held = set(sg[folds == f])
        out.append(train_rows[np.array([g not in held for g in tg], dtype=bool)])
    return out
