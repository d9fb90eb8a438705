"""Does a classifier use a finding's co-occurring partner as a cue? (chapter 3)

Labels co-occur in real reports: an enlarged heart comes with edema, an opacity with
atelectasis. A classifier trained on such labels can learn the partner ``b`` as evidence for
``a``. Two tests, both on within-label percentiles so that settings with different score scales
compare:

* **observational partner shift** (:func:`partner_shift`): among test images *without* ``a``,
  the mean percentile of ``a``'s score on images that have ``b`` minus that on images without
  it;
* **causal partner effect** (:func:`causal_effects`, ``demo`` only): the same image rendered
  twice, with and without ``b`` (counterfactual phantoms: every pixel outside ``b``'s region is
  identical), and the change in ``a``'s percentile.

Pairs are chosen from the *training* labels by their lift ``P(a, b) / (P(a) P(b))``: partners
(lift well above 1) for the finding, independent pairs (lift near 1) for its negative control.
In the causal test each partner pair has its own control (:func:`matched_pairs`): an
independent pair whose two findings share drawing code exactly when the partners' do, rendered
on **the same source images** (:func:`draw_items`), so "partner effect minus matched-independent
effect" is paired image by image.

**The decorrelated world** (:func:`decorrelate`, :func:`decorrelated_embeddings`): every label
column permuted independently across training (and, separately, validation) reports, so each
label keeps its prevalence but no two co-occur beyond chance; phantoms rendered from those
labels (the same patients: same image ids and seeds) and embedded by the same model. A probe
fitted there has no co-occurrence to learn, so its partner effect must vanish; one that
persists comes from the renderer or the model, not from training labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from helpers.config import data_dir
from helpers.data.images import PixelCache, geometric_transform
from helpers.phantoms import rendering
from helpers.phantoms.rendering import seed_for
from helpers.protocols.embeddings import compute_image_embeddings
from helpers.storage import read_npy_cache, sha256_bytes, write_npy_cache
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
    return [c for _, c in matched_pairs(partners, independent, family) if c is not None]


def matched_pairs(partners: Sequence[tuple], independent: Sequence[tuple],
                  family: dict[str, str]) -> list[tuple[tuple, tuple | None]]:
    """Every partner pair with its control (the rule of :func:`matched_independent`), in
    ``partners``' order: ``[(partner, control or None), ...]``. Each independent pair serves
    one partner pair at most; the first in ``independent``'s order that has the same family
    relation (both findings from one drawing family, or not) is taken."""
    def same(pair):
        return family.get(pair[0]) == family.get(pair[1])

    used: set[int] = set()
    out: list[tuple[tuple, tuple | None]] = []
    for p in partners:
        pick = next((i for i, q in enumerate(independent) if i not in used and same(q) == same(p)),
                    None)
        if pick is not None:
            used.add(pick)
        out.append((p, None if pick is None else independent[pick]))
    return out


UNMATCHED = "partner (no matched control)"
"""Kind of a partner pair left out of the causal test: no independent pair has its family
relation (e.g. two findings of one drawing family that always co-occur)."""


@dataclass
class Design:
    """The directed pairs of the causal test: ``pairs`` (a, b) label indices, ``kinds``
    ("partner", "independent" or :data:`UNMATCHED`) and ``twin`` (for a partner, the index of
    its matched control's pair, and vice versa; -1 for none). Twins are rendered on the same
    source images."""

    pairs: list[tuple[int, int]]
    kinds: list[str]
    twin: list[int]


def causal_design(matched: Sequence[tuple[tuple, tuple | None]], labels: Sequence[str],
                  n_pairs: int) -> Design:
    """The first ``n_pairs`` partner pairs that have a control, each in both directions, each
    direction twinned with its control's same direction (a <- b with c <- d, b <- a with
    d <- c); partner pairs without a control met on the way are kept as :data:`UNMATCHED`
    (rendered and shown, not tested)."""
    idx = {c: i for i, c in enumerate(labels)}
    pairs, kinds, twin = [], [], []
    used = 0
    for partner, control in matched:
        if used >= n_pairs:
            break
        pa, pb = idx[partner[0]], idx[partner[1]]
        if control is None:
            pairs += [(pa, pb), (pb, pa)]
            kinds += [UNMATCHED] * 2
            twin += [-1, -1]
            continue
        ca, cb = idx[control[0]], idx[control[1]]
        k = len(pairs)
        pairs += [(pa, pb), (pb, pa), (ca, cb), (cb, ca)]
        kinds += ["partner", "partner", "independent", "independent"]
        twin += [k + 2, k + 3, k, k + 1]
        used += 1
    return Design(pairs, kinds, twin)


def draw_items(y: np.ndarray, candidates: np.ndarray, design: Design, per_pair: int,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Source images of every directed pair: ``(pair index (m,), row (m,))``.

    A pair (a, b) draws up to ``per_pair`` rows of ``candidates`` without label ``a``
    (``y``: (n, k) binary targets indexed by row), at random, in increasing order; a pair
    whose twin was drawn before re-uses its twin's rows, which were drawn among rows
    without either pair's ``a``, so both effects are measured on the same images.
    """
    rng = np.random.default_rng(seed)
    y = np.asarray(y)
    candidates = np.asarray(candidates, dtype=int)
    rows_of: dict[int, np.ndarray] = {}
    for p, (a, _) in enumerate(design.pairs):
        t = design.twin[p]
        if t >= 0 and t in rows_of:
            rows_of[p] = rows_of[t]
            continue
        ok = y[candidates, a] == 0
        if t >= 0:
            ok &= y[candidates, design.pairs[t][0]] == 0
        cand = candidates[ok]
        rows_of[p] = np.sort(rng.choice(cand, min(per_pair, len(cand)), replace=False))
    pair = np.concatenate([np.full(len(rows_of[p]), p, int) for p in range(len(design.pairs))]
                          or [np.zeros(0, int)])
    row = np.concatenate([rows_of[p] for p in range(len(design.pairs))] or [np.zeros(0, int)])
    return pair, row


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

    ``pairs``: directed (a, b) label indices; ``kinds``: "partner", "independent" or
    :data:`UNMATCHED` per pair; ``twin``: per pair, its matched pair's index (-1: none);
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
    twin: list[int] | None = None


def _render_pair(job: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Both renderings of one item (a process-pool job): ``a`` absent, ``b`` present / absent."""
    from PIL import Image

    labels, seed, style, a, b, noise, geo = job
    out = []
    for has_b in (True, False):
        img, _ = rendering.render(labels, seed, style, noise=noise, present={a: False, b: has_b})
        out.append(np.asarray(geo(Image.fromarray(img, mode="L")), dtype=np.uint8))
    return out[0], out[1]


def render_counterfactuals(study, design: Design, per_pair: int = 30, seed: int = 0,
                           progress: bool = True) -> Counterfactuals:
    """Render ``per_pair`` test images without ``a`` for each directed pair of ``design``,
    with and without ``b`` (demo profile: the study's phantom style and label-noise rates).
    Images are drawn by :func:`draw_items` among test images whose label ``a`` is 0; twinned
    pairs share their images."""

    if study.style is None:
        raise ValueError("counterfactual phantoms need the demo profile (rendered images); "
                         f"this study's images are {study.image_source}")
    test, y = study.rows("test"), study.y()
    text_cols = [f"text:{c}" for c in study.labels]
    geo = geometric_transform(study.preprocess)
    pair, row = draw_items(y, test, design, per_pair, seed)
    jobs = [(study.table.loc[r, text_cols].to_numpy(dtype=float),
             seed_for(study.table.at[r, "image_id"], study.style), study.style,
             study.labels[design.pairs[p][0]], study.labels[design.pairs[p][1]], study.noise, geo)
            for p, r in zip(pair, row)]
    if not jobs:
        raise ValueError("no test image qualifies for a counterfactual pair (every pair's label "
                         "a is present in every test image, or there are no pairs)")
    pix = process_map(_render_pair, jobs, progress=progress, desc="counterfactual phantoms")
    return Counterfactuals(list(design.pairs), list(design.kinds), pair, row,
                           np.stack([w for w, _ in pix]), np.stack([wo for _, wo in pix]),
                           list(design.twin))


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


# --------------------------------------------------------------------------------------
# The decorrelated world: labels that do not co-occur, rendered (demo profile)
# --------------------------------------------------------------------------------------


def decorrelate(table: pd.DataFrame, labels: Sequence[str], seed: int = 0,
                by: str = "split") -> pd.DataFrame:
    """A copy of ``table`` whose label columns are permuted independently across reports.

    ``table``: one row per image with ``report_id``, ``by`` (the split) and, for each label
    ``c`` of ``labels``, the binary column ``c`` and, where present, the report's three-valued
    ``text:c`` (what the renderer reads). Within each group of ``by``, each label draws its own
    permutation of the group's reports, and every image of report ``r`` receives, for that
    label, the values of report ``perm(r)`` (binary and three-valued together, so the
    uncertainty policy stays consistent). Each label's prevalence over reports is unchanged in
    every group; which labels a report has together is chance. Other columns are untouched.
    """
    out = table.copy()
    rng = np.random.default_rng(seed)
    for _, g in table.groupby(by, sort=True, observed=True):
        first = g.drop_duplicates("report_id")
        where = pd.Index(first.report_id).get_indexer(g.report_id)
        for c in labels:
            perm = rng.permutation(len(first))
            for col in [c, f"text:{c}"]:
                if col in table.columns:
                    out.loc[g.index, col] = first[col].to_numpy()[perm][where]
    return out


def _render_plain(job: tuple) -> np.ndarray:
    """One phantom at the model's input geometry (a process-pool job)."""
    from PIL import Image

    labels, seed, style, noise, geo = job
    img, _ = rendering.render(labels, seed, style, noise=noise)
    return np.asarray(geo(Image.fromarray(img, mode="L")), dtype=np.uint8)


def decorrelated_key(study, table: pd.DataFrame) -> str:
    """What the decorrelated world's embeddings depend on, hashed (16 hex): the renderer's
    :data:`~helpers.phantoms.rendering.VERSION`, style and noise rates, the model's weights and
    input geometry and normalisation, and every image id with its (permuted) labels."""
    noise = "" if study.noise is None else study.noise[list(rendering.NOISE_COLUMNS)].to_csv()
    cols = [f"text:{c}" for c in study.labels]
    rows = "\n".join(f"{i}|{v}" for i, v in zip(table.image_id.astype(str),
                                                 table[cols].to_numpy(dtype=float).tolist()))
    head = (f"{rendering.VERSION}|{study.style}|{noise}|{study.info.weights_sha256}|"
            f"{study.loader.geometry}|{tuple(study.info.mean)}|{tuple(study.info.std)}")
    return sha256_bytes(f"{head}\n{rows}".encode(), 16)


def decorrelated_embeddings(study, splits: Sequence[str] = ("train", "val"), seed: int = 0,
                            progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The decorrelated world of ``splits``: ``(rows (n,), targets (n, k), embeddings (n, d))``.

    ``rows``: the study rows of ``splits`` (sorted); ``targets``: their binary labels after
    :func:`decorrelate` (each split permuted on its own); ``embeddings``: the study model's
    image embeddings (unnormalised, float32) of phantoms rendered from those labels, with the
    same image ids (seeds: the same patients), style and label-noise rates as the study's.
    Rendered in memory (a progress bar on the console) and cached on disk as
    ``decorrelated_emb-<key>.npy`` (:func:`decorrelated_key`), so a second call only loads.
    """
    if study.style is None:
        raise ValueError("the decorrelated world renders phantoms: it needs the demo profile; "
                         f"this study's images are {study.image_source}")
    rows = np.sort(np.concatenate([study.rows(s) for s in splits]))
    table = decorrelate(study.table.loc[rows], study.labels, seed)
    y = table[list(study.labels)].to_numpy(dtype=int)
    path = data_dir() / "cache" / f"decorrelated_emb-{decorrelated_key(study, table)}.npy"
    hit = read_npy_cache(path, shape=(len(rows), None), dtype=np.float32, finite=True)
    if hit is not None:
        return rows, y, hit
    geo = geometric_transform(study.preprocess)
    text = table[[f"text:{c}" for c in study.labels]].to_numpy(dtype=float)
    jobs = [(lab, seed_for(str(iid), study.style), study.style, study.noise, geo)
            for lab, iid in zip(text, table.image_id)]
    pix = process_map(_render_plain, jobs, progress=progress, desc="decorrelated phantoms")
    emb = compute_image_embeddings(study.model, PixelCache.in_memory(np.stack(pix), "decorrelated"),
                                   study.info.mean, study.info.std, device=study.device,
                                   progress=progress).astype(np.float32)
    write_npy_cache(path, emb)
    return rows, y, emb


def lift_summary(y: np.ndarray, labels: Sequence[str], pairs: Sequence[tuple]) -> np.ndarray:
    """The lift ``P(a, b) / (P(a) P(b))`` in ``y`` (n, k) of each pair (a, b, ...) of
    ``pairs`` (NaN where a label never occurs): (len(pairs),)."""
    y = np.asarray(y).astype(bool)
    idx = {c: i for i, c in enumerate(labels)}
    out = []
    for a, b, *_ in pairs:
        pa, pb = y[:, idx[a]].mean(), y[:, idx[b]].mean()
        both = (y[:, idx[a]] & y[:, idx[b]]).mean()
        out.append(both / (pa * pb) if pa * pb > 0 else np.nan)
    return np.array(out, dtype=float)
