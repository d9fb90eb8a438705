"""Does a classifier use a finding's co-occurring partner as a cue? (chapter 3)

Labels co-occur in real reports: an enlarged heart comes with edema, an opacity with
atelectasis. A classifier trained on such labels can learn the partner ``b`` as evidence for
``a``. Two tests, both on within-label percentiles so that settings with different score scales
compare:

* **observational partner shift** (:func:`partner_shift`): among test images *without* ``a``,
  the mean percentile of ``a``'s score on images that have ``b`` minus that on images without
  it;
* **causal partner effect** (:func:`causal_effect`, ``demo`` only): the same image rendered
  twice, with and without ``b`` (counterfactual phantoms: every pixel outside ``b``'s region is
  identical), and the change in ``a``'s percentile.

Pairs are chosen from the *training* labels by their lift ``P(a, b) / (P(a) P(b))``: partners
(lift well above 1) for the finding, independent pairs (lift near 1) for its negative control.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from helpers.data.images import geometric_transform
from helpers.phantoms import rendering
from helpers.phantoms.rendering import seed_for
from helpers.workers import process_map

PARTNER_LIFT = 1.5
"""Minimum lift of a co-occurring pair."""
INDEPENDENT_LIFT = (0.67, 1.5)
"""Lift range of an independent (control) pair."""


def pairs_by_lift(y: np.ndarray, labels: Sequence[str], min_lift: float, max_lift: float = np.inf,
                  min_count: int = 20, min_expected: float = 0.0) -> list[tuple[str, str, int, float]]:
    """Unordered label pairs whose lift in ``y`` (n, k) lies in ``[min_lift, max_lift)``.

    A pair needs at least ``min_count`` images with both labels and ``min_expected`` under
    independence (``n P(a) P(b)``). Returns (a, b, count, lift), strongest lift first; "No Finding"
    is excluded (it is defined by the others' absence).
    """
    y = np.asarray(y).astype(int)
    n = len(y)
    out = []
    for i, a in enumerate(labels):
        for j, b in enumerate(labels):
            if j <= i or "No Finding" in (a, b):
                continue
            both = int((y[:, i] & y[:, j]).sum())
            expected = y[:, i].sum() * y[:, j].sum() / max(n, 1)
            if both < min_count or expected < min_expected or expected == 0:
                continue
            lift = both / expected
            if min_lift <= lift < max_lift:
                out.append((a, b, both, float(lift)))
    return sorted(out, key=lambda r: -r[3])


def partner_pairs(y: np.ndarray, labels: Sequence[str]) -> list[tuple[str, str, int, float]]:
    """Co-occurring pairs of the training labels: lift >= :data:`PARTNER_LIFT`, >= 20 images."""
    return pairs_by_lift(y, labels, PARTNER_LIFT, min_count=20)


def independent_pairs(y: np.ndarray, labels: Sequence[str]) -> list[tuple[str, str, int, float]]:
    """Control pairs: lift within :data:`INDEPENDENT_LIFT`, >= 5 images with both and >= 5 expected."""
    lo, hi = INDEPENDENT_LIFT
    return pairs_by_lift(y, labels, lo, hi, min_count=5, min_expected=5)


def matched_independent(partners: Sequence[tuple], independent: Sequence[tuple],
                        family: dict[str, str]) -> list[tuple]:
    """Control pairs for the causal test, one per partner pair, matched on drawing family.

    Adding partner ``b`` can raise ``a``'s score because the two share drawing code (a blob
    looks like a blob), whatever co-occurrence taught the probe. For every partner pair the
    control is an unused independent pair with the same relation between its two findings'
    drawing families (``family``: label -> family name; same family or not), the first in
    ``independent``'s order (strongest lift first); a partner pair with no such independent
    pair gets none. The partner effect minus the control's is then the co-occurrence cue
    with the shared-drawing effect taken out.
    """
    def same(pair):
        return family.get(pair[0]) == family.get(pair[1])

    used: set[int] = set()
    out = []
    for p in partners:
        pick = next((i for i, q in enumerate(independent) if i not in used and same(q) == same(p)),
                    None)
        if pick is not None:
            used.add(pick)
            out.append(independent[pick])
    return out


def directed(pairs: Sequence[tuple], labels: Sequence[str]) -> list[tuple[int, int]]:
    """Both directions (a <- b and b <- a) of each pair, as label indices."""
    idx = {c: i for i, c in enumerate(labels)}
    return [(idx[a], idx[b]) for a, b, *_ in pairs] + [(idx[b], idx[a]) for a, b, *_ in pairs]


def percentiles(scores: np.ndarray) -> np.ndarray:
    """Within-label percentiles (n, k) in [0, 1] of scores (n, k); ties share their mean rank."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=float)
    return (rankdata(s, axis=0) - 1) / max(len(s) - 1, 1)


def partner_shift(scores: np.ndarray, y: np.ndarray, j: int, k: int) -> float:
    """How much label ``k``'s presence raises label ``j``'s score where ``j`` is absent.

    Mean percentile of ``j`` on rows with ``j = 0, k = 1`` minus that on rows with
    ``j = 0, k = 0`` (0: no shift; NaN if a group is empty). Shapes: scores, y (n, k).
    """
    pct = percentiles(scores[:, [j]])[:, 0]
    neg = y[:, j] == 0
    with_k, without_k = neg & (y[:, k] == 1), neg & (y[:, k] == 0)
    if not with_k.any() or not without_k.any():
        return float("nan")
    return float(pct[with_k].mean() - pct[without_k].mean())


def mean_shift(scores: np.ndarray, y: np.ndarray, pairs: Sequence[tuple[int, int]]):
    """A function of row indices: the mean :func:`partner_shift` over directed ``pairs``."""
    def fn(rows: np.ndarray) -> float:
        vals = [partner_shift(scores[rows], y[rows], j, k) for j, k in pairs]
        return float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")

    return fn


# --------------------------------------------------------------------------------------
# The causal test: counterfactual phantoms (demo profile)
# --------------------------------------------------------------------------------------


@dataclass
class Counterfactuals:
    """Test images rendered twice: without label ``a`` and with or without its partner ``b``.

    ``pairs``: directed (a, b) label indices; ``kinds``: "partner" or "independent" per pair;
    per item ``m``: ``pair`` (index into ``pairs``), ``row`` (study row of the source image),
    and the two renderings at the model's input geometry, ``with_b`` and ``without_b``
    (uint8 (m, S, S)). Every pixel outside ``b``'s region is identical in the two.
    """

    pairs: list[tuple[int, int]]
    kinds: list[str]
    pair: np.ndarray
    row: np.ndarray
    with_b: np.ndarray
    without_b: np.ndarray


def _render_pair(job: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Both renderings of one item (a process-pool job): ``a`` absent, ``b`` present / absent."""
    from PIL import Image


    labels, seed, style, a, b, noise, geo = job
    out = []
    for has_b in (True, False):
        img, _ = rendering.render(labels, seed, style, noise=noise, present={a: False, b: has_b})
        out.append(np.asarray(geo(Image.fromarray(img, mode="L")), dtype=np.uint8))
    return out[0], out[1]


def render_counterfactuals(study, pairs: Sequence[tuple[int, int]], kinds: Sequence[str],
                           per_pair: int = 30, seed: int = 0,
                           progress: bool = True) -> Counterfactuals:
    """Render ``per_pair`` test images without ``a`` for each directed pair, with and without
    ``b`` (demo profile: the study's phantom style and label-noise rates). Images are drawn at
    random among test images whose label ``a`` is 0."""

    if study.style is None:
        raise ValueError("counterfactual phantoms need the demo profile (rendered images); "
                         f"this study's images are {study.image_source}")
    rng = np.random.default_rng(seed)
    test, y = study.rows("test"), study.y()
    text_cols = [f"text:{c}" for c in study.labels]
    geo = geometric_transform(study.preprocess)
    items, jobs = [], []
    for p, (a, b) in enumerate(pairs):
        cand = test[y[test, a] == 0]
        for r in np.sort(rng.choice(cand, min(per_pair, len(cand)), replace=False)):
            items.append((p, r))
            labels = study.table.loc[r, text_cols].to_numpy(dtype=float)
            jobs.append((labels, seed_for(study.table.at[r, "image_id"], study.style), study.style,
                         study.labels[a], study.labels[b], study.noise, geo))
    if not jobs:
        raise ValueError("no test image qualifies for a counterfactual pair (every pair's label "
                         "a is present in every test image, or there are no pairs)")
    pix = process_map(_render_pair, jobs, progress=progress, desc="counterfactual phantoms")
    return Counterfactuals(list(pairs), list(kinds), np.array([i[0] for i in items], int),
                           np.array([i[1] for i in items], int),
                           np.stack([w for w, _ in pix]), np.stack([wo for _, wo in pix]))


def percentile_in(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Percentile (in [0, 1]) of each value within a reference sample (mid-rank for ties)."""
    ref = np.sort(np.asarray(reference, dtype=float))
    lo = np.searchsorted(ref, values, side="left")
    hi = np.searchsorted(ref, values, side="right")
    return (lo + hi) / (2 * len(ref))


def causal_effects(cf: Counterfactuals, scores_with: np.ndarray, scores_without: np.ndarray,
                   reference: np.ndarray) -> np.ndarray:
    """Per item: the change in label ``a``'s percentile when ``b`` is added (m,).

    ``scores_with``/``scores_without``: scores (m, k) of the two renderings; ``reference``:
    the setting's scores (n, k) on the real test images, which define the percentile scale.
    """
    a = np.array([cf.pairs[p][0] for p in cf.pair], int)
    m = np.arange(len(a))
    out = np.empty(len(a))
    for j in np.unique(a):
        sel = a == j
        out[sel] = (percentile_in(reference[:, j], scores_with[m[sel], j])
                    - percentile_in(reference[:, j], scores_without[m[sel], j]))
    return out


def mean_effect(cf: Counterfactuals, effects: np.ndarray, kind: str):
    """``fn(idx)``: the mean over ``kind`` pairs of each pair's mean effect among items ``idx``."""
    pair_ids = [p for p, k in enumerate(cf.kinds) if k == kind]

    def fn(idx: np.ndarray) -> float:
        e, p_of = effects[idx], cf.pair[idx]
        vals = [e[p_of == p].mean() for p in pair_ids if (p_of == p).any()]
        return float(np.mean(vals)) if vals else float("nan")

    return fn
