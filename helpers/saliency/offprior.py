"""Off-prior phantoms: lesions away from where the location prior puts its mass (chapter 6).

Chapter 6's location prior is, per label, the mean of that label's training regions. The
phantoms place each finding where radiologists' boxes put it, the very positions the prior is
built from, so on the study's test images "a map beats the location prior" is partly decided
by the renderer. This module builds a test set on which knowing where a finding usually is
does not help:

1. the prior's **top-mass region** of a label (:func:`top_mass_region`): its highest-valued
   pixels that together hold :data:`TOP_MASS` of the prior's total mass;
2. a pair's **prior overlap** (:func:`prior_overlap`): the share of its region's pixels inside
   that label's top-mass region;
3. **off-prior pairs** (:func:`off_prior_pairs`): every test report with a drawn finding is
   rendered again with fresh random streams (a new patient, new finding positions, sizes and
   conspicuity: the renderer's own distribution, unchanged), round after round, and a pair is
   kept when its region's prior overlap is at most :data:`MAX_OVERLAP`. The subset is *selected*
   from the renderer's output, never drawn by a changed renderer, so every lesion in it is one
   the renderer could have produced for the study; it is the tail of the position distribution
   that the prior does not cover.

The pairs are test pairs (test reports; the models never trained on them) and are grouped by
report for the bootstrap, like the study's. The selection (which renders, which pairs) is cached
in ``data_dir()/cache/offprior-<key>.json``, keyed by everything the pixels and the selection
depend on; a cached selection is re-rendered (a few hundred phantoms) rather than stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np
import pandas as pd

from helpers.book.study import LocPairs
from helpers.config import data_dir
from helpers.data.images import PixelCache, geometric_transform
from helpers.phantoms import rendering
from helpers.phantoms.rendering import mask_of, seed_for
from helpers.saliency.positive_control import ControlConfig, Marked, mark_regions
from helpers.storage import (atomic_write_json, read_json_cache, read_npy_cache, sha256_bytes,
                             write_npy_cache)
from helpers.workers import process_map

TOP_MASS = 0.5
"""Share of the location prior's mass that defines its top-mass region."""
MAX_OVERLAP = 0.1
"""Largest share of a region inside the prior's top-mass region for an off-prior pair."""
CACHE_VERSION = "2"


def top_mass_region(prior_map: np.ndarray, mass: float = TOP_MASS) -> np.ndarray:
    """The smallest set of highest-valued pixels of ``prior_map`` (S, S), values >= 0, that
    holds at least ``mass`` of its total: bool (S, S). Pixels tied with the last one taken are
    included (so the region never depends on array order); an all-zero map gives an empty
    region."""
    p = np.clip(np.nan_to_num(np.asarray(prior_map, dtype=np.float64)), 0, None)
    total = p.sum()
    if total <= 0:
        return np.zeros(p.shape, bool)
    v = np.sort(p.ravel())[::-1]
    k = int(np.searchsorted(np.cumsum(v) / total, mass - 1e-12))
    return p >= v[min(k, len(v) - 1)]


def prior_overlap(masks: np.ndarray, labels: Sequence[str], prior: Mapping[str, np.ndarray],
                  mass: float = TOP_MASS) -> np.ndarray:
    """Per pair (n,): the share of the region ``masks[i]`` (bool (S, S)) inside the top-mass
    region of its label's prior map; NaN for an empty region or a label the prior lacks."""
    return overlap_with(masks, labels, top_mass_regions(prior, mass))


def top_mass_regions(prior: Mapping[str, np.ndarray], mass: float = TOP_MASS
                     ) -> dict[str, np.ndarray]:
    """:func:`top_mass_region` of every label's prior map: label -> bool (S, S)."""
    return {str(c): top_mass_region(m, mass) for c, m in prior.items()}


def overlap_with(masks: np.ndarray, labels: Sequence[str], tops: Mapping[str, np.ndarray]
                 ) -> np.ndarray:
    """:func:`prior_overlap` with the top-mass regions already computed (``tops``)."""
    out = np.full(len(masks), np.nan)
    for i, (m, c) in enumerate(zip(np.asarray(masks, dtype=bool), labels)):
        if str(c) in tops and m.any():
            out[i] = float((m & tops[str(c)]).sum() / m.sum())
    return out


def bits_to_input(bits: np.ndarray, size: int) -> np.ndarray:
    """A uint16 finding bitmask (h, w) -> (size, size) at the model's input geometry (centre
    square, nearest neighbour): every label's region equals
    :func:`helpers.saliency.explain.to_input_geometry` of its own mask."""
    h, w = bits.shape
    s = min(h, w)
    sq = bits[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return cv2.resize(np.ascontiguousarray(sq), (size, size), interpolation=cv2.INTER_NEAREST)


def _render(job: tuple) -> tuple[np.ndarray, np.ndarray]:
    """One fresh phantom (a process-pool job): (image, bitmask) at the model's input geometry."""
    from PIL import Image

    labels, seed, style, noise, geo, size = job
    img, bits = rendering.render(labels, seed, style, noise=noise)
    return (np.asarray(geo(Image.fromarray(img, mode="L")), dtype=np.uint8),
            bits_to_input(bits, size))


@dataclass
class OffPrior:
    """Off-prior test pairs and their images.

    ``pairs``: :class:`~helpers.book.study.LocPairs` whose ``row`` indexes ``pixels`` (an
    in-memory :class:`~helpers.data.images.PixelCache`, uint8 (m, S, S)) and whose
    ``image_id`` names the source image and render round (``<id>#<round>``); ``overlap`` (n,):
    each pair's prior overlap; ``bits`` uint16 (m, S, S): every drawn finding's region per
    image; ``positives`` (m, k): the source report's binary labels; ``n_rendered``: phantoms
    rendered to find them; ``n_examined``: pairs examined (positive label, non-empty region),
    ``examined_by_label`` the same per label, and ``found_by_label`` how many of those were
    off-prior (before the first ``n_pairs`` were kept): found / examined is each label's
    off-prior share.
    """

    pairs: LocPairs
    pixels: PixelCache
    overlap: np.ndarray
    bits: np.ndarray
    positives: np.ndarray
    n_rendered: int
    n_examined: int
    examined_by_label: dict[str, int]
    found_by_label: dict[str, int]

    def marked(self, labels: Sequence[str], cfg: ControlConfig) -> Marked:
        """The images with every positive finding marked as the positive control sees them
        (:func:`helpers.saliency.positive_control.mark_regions`)."""
        out = np.array(self.pixels.pixels)
        for r in range(len(out)):
            regions = {c: mask_of(self.bits[r], c) for j, c in enumerate(labels)
                       if c != "No Finding" and self.positives[r, j]}
            out[r] = mark_regions(out[r], regions, labels, cfg)
        return Marked(out, np.arange(len(out)))


def _candidates(study) -> np.ndarray:
    """Test rows with at least one positive drawn finding."""
    y = study.y()
    drawn = [j for j, c in enumerate(study.labels) if c != "No Finding"]
    test = study.rows("test")
    return test[y[np.ix_(test, drawn)].any(1)]


def selection_key(study, prior: Mapping[str, np.ndarray], params: dict) -> str:
    """What the selection depends on, hashed (16 hex): renderer version, style, noise rates,
    model input geometry, the prior maps, the parameters and the candidate images' labels."""
    rows = _candidates(study)
    text = study.table.loc[rows, [f"text:{c}" for c in study.labels]].to_numpy(float)
    noise = "" if study.noise is None else study.noise[list(rendering.NOISE_COLUMNS)].to_csv()
    pri = sha256_bytes(b"".join(c.encode() + np.asarray(prior[c], np.float32).tobytes()
                                for c in sorted(prior)), 16)
    head = (f"{CACHE_VERSION}|{rendering.VERSION}|{study.style}|{noise}|{study.loader.geometry}|"
            f"{study.info.image_size}|{pri}|{json.dumps(params, sort_keys=True)}")
    ids = "\n".join(f"{i}|{v}" for i, v in zip(study.table.image_id.to_numpy()[rows],
                                               text.tolist()))
    return sha256_bytes(f"{head}\n{ids}".encode(), 16)


def _render_round(study, rows: np.ndarray, rnd: int, seed: int, progress: bool, desc: str
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Round ``rnd``'s fresh phantoms of study ``rows``: [(image, bitmask)] as :func:`_render`."""
    geo = geometric_transform(study.preprocess)
    cols = [f"text:{c}" for c in study.labels]
    jobs = [(study.table.loc[r, cols].to_numpy(dtype=float),
             seed_for(f"{study.table.at[r, 'image_id']}|off-prior|{seed}|{rnd}", study.style),
             study.style, study.noise, geo, study.info.image_size) for r in rows]
    return process_map(_render, jobs, progress=progress, desc=desc)


def _select(study, tops: Mapping[str, np.ndarray], rows: np.ndarray,
            rendered: Sequence[tuple[np.ndarray, np.ndarray]], rnd: int, max_overlap: float
            ) -> tuple[list[tuple[int, int, str, float]], dict[str, int]]:
    """The off-prior pairs of one round's renders: [(row, round, label, overlap)], and the
    number of pairs examined per label."""
    y = study.y()
    out, examined = [], {}
    for r, (_, bits) in zip(rows, rendered):
        for j, c in enumerate(study.labels):
            if c == "No Finding" or not y[r, j]:
                continue
            m = mask_of(bits, c)
            if not m.any():
                continue
            examined[c] = examined.get(c, 0) + 1
            ov = overlap_with(m[None], [c], tops)[0]
            if np.isfinite(ov) and ov <= max_overlap:
                out.append((int(r), rnd, c, float(ov)))
    return out, examined


def off_prior_pairs(study, prior: Mapping[str, np.ndarray], n_pairs: int = 200,
                    max_rounds: int = 10, max_overlap: float = MAX_OVERLAP,
                    mass: float = TOP_MASS, seed: int = 0, progress: bool = True) -> OffPrior:
    """Up to ``n_pairs`` off-prior test pairs (see the module docstring), demo profile only.

    Rounds ``0, 1, ...`` (at most ``max_rounds``) render every test image with a positive
    drawn finding anew from its report's labels with the seed
    ``seed_for("<image id>|off-prior|<seed>|<round>")``; a (render, positive label) pair whose
    region is non-empty and has prior overlap <= ``max_overlap`` (top-mass share ``mass``) is
    kept, in round and row order, until ``n_pairs`` are kept. ``prior``: label -> (S, S) map
    (:func:`helpers.saliency.regions.location_prior`). Progress on the console.
    """
    if study.style is None:
        raise ValueError("off-prior pairs are rendered phantoms: they need the demo profile; "
                         f"this study's images are {study.image_source}")
    params = {"n_pairs": int(n_pairs), "max_rounds": int(max_rounds),
              "max_overlap": float(max_overlap), "mass": float(mass), "seed": int(seed)}
    rows = _candidates(study)
    path = data_dir() / "cache" / f"offprior-{selection_key(study, prior, params)}.json"
    need = {"pairs", "n_rendered", "n_examined", "examined_by_label", "found_by_label"}
    rec = read_json_cache(path, lambda d: None if need <= set(d) else "keys missing")
    rendered: dict = {}
    if rec is None:
        kept, n_rendered, examined = [], 0, {}
        tops = top_mass_regions(prior, mass)
        for rnd in range(max_rounds):
            if len(kept) >= n_pairs:
                break
            got = _render_round(study, rows, rnd, seed, progress,
                                f"off-prior phantoms (round {rnd + 1})")
            new, ex = _select(study, tops, rows, got, rnd, max_overlap)
            keep = {r for r, *_ in new}
            rendered.update({(int(r), rnd): g for r, g in zip(rows, got) if r in keep})
            kept += new
            n_rendered += len(rows)
            examined = {c: examined.get(c, 0) + ex.get(c, 0) for c in {*examined, *ex}}
        found = pd.Series([c for _, _, c, _ in kept], dtype=object).value_counts()
        rec = {"pairs": kept[:n_pairs], "n_rendered": n_rendered,
               "n_examined": sum(examined.values()),
               "examined_by_label": dict(sorted(examined.items())),
               "found_by_label": {str(k): int(v) for k, v in sorted(found.items())}}
        atomic_write_json(path, rec)
    return _assemble(study, rec, seed, progress, path.with_suffix(""), rendered)


def _assemble(study, rec: dict, seed: int, progress: bool, stem: Path, rendered: dict
              ) -> OffPrior:
    """The selected images (``rendered`` by the selection just now, else cached beside it as
    ``<stem>-pixels.npy`` and ``<stem>-bits.npy``, else rendered again: deterministic, the same
    pixels) and the pairs."""
    S = study.info.image_size
    images = list(dict.fromkeys((r, rnd) for r, rnd, _, _ in rec["pairs"]))
    order = [(r, k) for k in sorted({k for _, k in images}) for r, k2 in images if k2 == k]
    at = {key: i for i, key in enumerate(order)}
    shape = (len(order), S, S)
    pix_path, bits_path = (stem.with_name(f"{stem.name}-{n}.npy") for n in ("pixels", "bits"))
    pix = bits = None
    if not rendered:
        pix = read_npy_cache(pix_path, shape=shape, dtype=np.uint8)
        bits = read_npy_cache(bits_path, shape=shape, dtype=np.uint16)
    if pix is None or bits is None:
        got = [rendered[key] for key in order] if rendered else [
            x for k in sorted({k for _, k in images})
            for x in _render_round(study, np.array([r for r, k2 in order if k2 == k], int),
                                   k, seed, progress, "off-prior phantoms")]
        pix = np.stack([g[0] for g in got]) if got else np.zeros(shape, np.uint8)
        bits = np.stack([g[1] for g in got]) if got else np.zeros(shape, np.uint16)
        write_npy_cache(pix_path, pix)
        write_npy_cache(bits_path, bits)
    t = study.table
    table = pd.DataFrame(
        {"row": [at[(r, k)] for r, k, _, _ in rec["pairs"]],
         "image_id": [f"{t.at[r, 'image_id']}#{k}" for r, k, _, _ in rec["pairs"]],
         "report_id": [t.at[r, "report_id"] for r, _, _, _ in rec["pairs"]],
         "label": [c for _, _, c, _ in rec["pairs"]], "split": "test"})
    bits_a = np.asarray(bits)
    masks = (np.stack([mask_of(bits_a[i], c) for i, c in zip(table.row, table.label)])
             if len(table) else np.zeros((0, S, S), bool))
    src = np.array([r for r, _ in order], int)
    return OffPrior(LocPairs(table, masks),
                    PixelCache.in_memory(pix, "off-prior"),
                    np.array([ov for *_, ov in rec["pairs"]], float), bits_a,
                    study.y()[src] if len(src) else np.zeros((0, len(study.labels)), int),
                    int(rec["n_rendered"]), int(rec["n_examined"]),
                    {str(k): int(v) for k, v in rec["examined_by_label"].items()},
                    {str(k): int(v) for k, v in rec["found_by_label"].items()})
