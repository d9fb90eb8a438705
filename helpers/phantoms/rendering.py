"""Synthetic frontal chest radiographs ("phantoms") with exact per-finding masks.

The ``demo`` profile cannot ship IU-Xray's images, so it renders one phantom per frontal image
id from that image's *real* report labels. Anatomy and finding placement are grounded in real
annotations shipped with torchxrayvision, and each finding has its own drawing function (see
:mod:`helpers.phantoms.drawers`: :data:`FINDING_DRAWERS`, and :data:`DRAWING_FAMILY` for the
findings that share drawing code).

**Random streams.** Every image has a base seed (:func:`seed_for`: image id, style,
:data:`VERSION`). The anatomy, each finding and the acquisition draw from their own streams,
``np.random.default_rng([seed, key(name)])`` (:func:`stream`), so an image can be re-rendered
with one finding added or removed (:func:`render_counterfactual`) and no pixel outside that
finding's mask changes.

**Labels -> what is drawn.** :func:`render` takes the report's three-valued labels (1 positive,
-1 uncertain, 0 negative, NaN not mentioned), never the binarised ones, so the uncertainty
policy changes labels only, never pixels. Per finding, from its own stream:

1. presence: a positive or uncertain finding is drawn, another is not. With label noise
   (``noise``, from :func:`noise_rates`: the text labeler against the human MeSH coding) a
   positive is left out with probability P(MeSH=0 | text=1), an uncertain one with
   P(MeSH=0 | text=-1), and an unlabelled one (0 or NaN) is drawn with P(MeSH=1 | text=0/NaN).
   This treats MeSH as the image's truth: an upper-end assumption, since MeSH also misses.
2. conspicuity ``c`` in (0, 1]: in the ``target`` style (the demo's IU-Xray images) a fraction
   :data:`SUBTLE_FRACTION` of drawn findings is subtle (``c`` ~ U :data:`SUBTLE_RANGE`), the
   rest clear (U :data:`CLEAR_RANGE`); the ``source`` style (the pretraining corpus, standing
   in for the textbook-clear figures of BiomedCLIP's figure-caption pairs) has no subtle ones;
   Cardiomegaly (whose subtlety is the overlap of the cardiothoracic-ratio distributions,
   :data:`~helpers.phantoms.drawers.CTR_NORMAL`, :data:`~helpers.phantoms.drawers.CTR_CARDIOMEGALY`)
   and Support Devices (metal) have ``c = 1``. Uncertain (hedged) findings are drawn at
   ``c`` times :data:`HEDGE_FACTOR`.

**Masks.** Stored as one 16-bit PNG per image: bit ``k`` set where finding
``CHEXPERT_LABELS[k]`` was drawn (a label left out by noise has no mask; one added by noise
has one). A finding's mask is the set of output pixels whose value can depend on a pixel the
finding changed: its support (where its layer changes the attenuation map; soft shapes are
truncated, e.g. a blob where it exceeds 0.2 of its peak) dilated by the blur kernel's radius
(:func:`blur_radius`: 1 px for ``source``, 2 px for ``target``), then carried through the
positioning warp (bilinear footprint), together with the anatomical region where that is larger
(Cardiomegaly: the whole enlarged heart; Fracture: a disk around the break; Support Devices:
the device dilated by 1 px). Hence the counterfactual guarantee: with and without a finding,
the images are identical outside its mask.

Two styles, ``source`` and ``target``, differ in contrast, gamma, texture, noise, blur and
positioning: the distribution shift the study is about.

Pixel values: uint8, 0 = no attenuation (black, air), 255 = metal. Image size: ``size`` x
``size`` pixels (default 224).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np
import pandas as pd

from helpers.phantoms import drawers as F
from helpers.data.labels import CHEXPERT_LABELS
from helpers.phantoms.drawers import (DRAWING_FAMILY, FINDING_DRAWERS, _pkg, finding_boxes,  # noqa: F401
                               lung_templates)
from helpers.book.progress import bar as tqdm
from helpers.storage import (
    atomic_write_bytes,
    atomic_write_csv,
    read_cache,
    remove_stale_temps,
    sha256_bytes,
)
from helpers.workers import pool

VERSION = "3"
"""Bump when rendering changes: part of every seed and of the manifest's cache key."""

LABEL_BIT = {c: i for i, c in enumerate(CHEXPERT_LABELS)}

HEDGE_FACTOR = 0.5
"""Conspicuity multiplier of a finding the report mentions with uncertainty (label -1)."""
SUBTLE_FRACTION = 0.3
"""Fraction of drawn findings (other than Cardiomegaly and Support Devices) that are subtle."""
SUBTLE_RANGE = (0.3, 0.6)
CLEAR_RANGE = (0.6, 1.0)
FULL_CONSPICUITY = ("Cardiomegaly", "Support Devices")
NOISE_COLUMNS = ("miss_positive", "miss_uncertain", "extra")

Labels = Mapping[str, float] | Sequence[float]
NoiseRates = Mapping[str, Sequence[float]] | pd.DataFrame


@dataclass(frozen=True)
class Style:
    """Acquisition style: how the attenuation map becomes pixels.

    gamma, contrast: tone curve ``out = contrast * (x ** gamma - 0.5) + 0.5 + brightness``;
    noise: std of additive noise (fraction of full scale); grain: Gaussian blur sigma (px) of
    that noise (texture); blur: sigma (px) of the image blur (kernel truncated at radius
    ceil(2 * blur)); tilt_deg, shift, zoom: std of the random rotation (degrees), translation
    (fraction of size) and scale (fraction); gradient: amplitude of a smooth left-right
    exposure gradient. subtle_fraction: the share of drawn findings rendered subtle (see the
    module docstring).
    """

    name: str
    gamma: float
    contrast: float
    brightness: float
    noise: float
    grain: float
    blur: float
    tilt_deg: float
    shift: float
    zoom: float
    gradient: float
    subtle_fraction: float


STYLES: dict[str, Style] = {
    "source": Style("source", gamma=1.0, contrast=1.05, brightness=0.0, noise=0.015, grain=0.6,
                    blur=0.5, tilt_deg=1.0, shift=0.01, zoom=0.02, gradient=0.0,
                    subtle_fraction=0.0),
    "target": Style("target", gamma=0.75, contrast=0.85, brightness=0.05, noise=0.04, grain=1.4,
                    blur=0.9, tilt_deg=3.0, shift=0.03, zoom=0.05, gradient=0.1,
                    subtle_fraction=SUBTLE_FRACTION),
}


def get_style(name: str) -> Style:
    """The style called ``name``; an unknown name raises ``ValueError`` listing valid ones."""
    if name not in STYLES:
        raise ValueError(f"unknown phantom style {name!r}; valid styles: {', '.join(STYLES)}")
    return STYLES[name]


def seed_for(key: str, style: str) -> int:
    """Deterministic 32-bit seed from an image id (or any key), the style and :data:`VERSION`."""
    return int(hashlib.sha256(f"{key}|{style}|{VERSION}".encode()).hexdigest()[:8], 16)


def stream(seed: int, name: str) -> np.random.Generator:
    """The random stream of one part of an image: ``anatomy``, ``acquisition`` or a label."""
    key = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    return np.random.default_rng([int(seed), key])


def blur_radius(style: Style) -> int:
    """Half-width (px) of the acquisition blur kernel: ceil(2 sigma), 0 without blur."""
    return int(math.ceil(2 * style.blur)) if style.blur > 0 else 0


# --------------------------------------------------------------------------------------
# Labels, noise and conspicuity -> what is drawn
# --------------------------------------------------------------------------------------


def _state(v, label: str) -> int:
    """1 (positive), -1 (uncertain) or 0 (negative / not mentioned) from a label value."""
    if v is None:
        return 0
    try:
        f = float(v)
    except (TypeError, ValueError):
        f = float("inf")
    if math.isnan(f) or f == 0:
        return 0
    if f in (1, -1):
        return int(f)
    raise ValueError(f"label {label!r} has value {v!r}; expected 1, 0, -1 or NaN")


def _as_mapping(labels: Labels) -> Mapping[str, float]:
    if isinstance(labels, Mapping):
        unknown = set(labels) - set(CHEXPERT_LABELS)
        if unknown:
            raise ValueError(f"unknown labels {sorted(unknown)}; expected names from CHEXPERT_LABELS")
        return labels
    labels = list(labels)
    if len(labels) != len(CHEXPERT_LABELS):
        raise ValueError(f"labels has {len(labels)} values; expected {len(CHEXPERT_LABELS)} in CHEXPERT_LABELS order")
    return dict(zip(CHEXPERT_LABELS, labels))


def _rates(noise: NoiseRates | None) -> dict[str, tuple[float, float, float]]:
    """Noise rates as label -> (miss_positive, miss_uncertain, extra), validated."""
    if noise is None:
        return {}
    if isinstance(noise, pd.DataFrame):
        noise = {lab: [noise.at[lab, c] for c in NOISE_COLUMNS] for lab in noise.index}
    out = {}
    for lab, v in noise.items():
        r = tuple(float(x) for x in v)
        if lab not in FINDING_DRAWERS or len(r) != 3 or not all(0 <= x <= 1 for x in r):
            raise ValueError(f"noise[{lab!r}] = {v!r} is not valid; expected a finding label with three "
                             f"probabilities {NOISE_COLUMNS} (see noise_rates)")
        out[lab] = r
    return out


def _check_keys(name: str, d: Mapping | None) -> None:
    bad = set(d or {}) - set(FINDING_DRAWERS)
    if bad:
        raise ValueError(f"{name} names {sorted(bad)}; expected finding labels {list(FINDING_DRAWERS)}")


def _decide(label: str, state: int, rng: np.random.Generator, rates: Mapping,
            conspicuity: Mapping[str, float] | None, present: Mapping[str, bool] | None,
            subtle_fraction: float = SUBTLE_FRACTION) -> float | None:
    """The finding's conspicuity if it is drawn, else None. Always takes the same three draws
    from the finding's stream first, so its geometry does not depend on the decision."""
    u_noise, u_subtle, u_c = rng.random(3)
    miss_pos, miss_unc, extra = rates.get(label, (0.0, 0.0, 0.0))
    drawn = {1: u_noise >= miss_pos, -1: u_noise >= miss_unc, 0: u_noise < extra}[state]
    if present is not None and label in present:
        drawn = bool(present[label])
    if not drawn:
        return None
    if conspicuity is not None and label in conspicuity:
        c = float(conspicuity[label])
        if not 0 < c <= 1:
            raise ValueError(f"conspicuity[{label!r}] = {c}; expected a value in (0, 1]")
        return c
    if label in FULL_CONSPICUITY:
        base = 1.0
    else:
        lo, hi = SUBTLE_RANGE if u_subtle < subtle_fraction else CLEAR_RANGE
        base = lo + (hi - lo) * u_c
    return base * (HEDGE_FACTOR if state == -1 else 1.0)


def _plan(labels: Labels, seed: int, noise: NoiseRates | None, conspicuity: Mapping[str, float] | None,
          present: Mapping[str, bool] | None,
          subtle_fraction: float = SUBTLE_FRACTION) -> dict[str, tuple[float, np.random.Generator]]:
    labels = _as_mapping(labels)
    _check_keys("conspicuity", conspicuity)
    _check_keys("present", present)
    rates = _rates(noise)
    out = {}
    for label in FINDING_DRAWERS:
        rng = stream(seed, label)
        c = _decide(label, _state(labels.get(label), label), rng, rates, conspicuity, present,
                    subtle_fraction)
        if c is not None:
            out[label] = (c, rng)
    return out


def finding_plan(labels: Labels, seed: int, noise: NoiseRates | None = None,
                 conspicuity: Mapping[str, float] | None = None,
                 present: Mapping[str, bool] | None = None, style: str = "target") -> dict[str, float]:
    """Which findings :func:`render` draws for these arguments, with their conspicuity
    (label -> c in (0, 1]); cheap (no rendering)."""
    plan = _plan(labels, seed, noise, conspicuity, present, get_style(style).subtle_fraction)
    return {lab: c for lab, (c, _) in plan.items()}


def noise_rates(table: pd.DataFrame) -> pd.DataFrame:
    """Per-finding label-noise rates from the text labeler against the MeSH coding.

    Parameters
    ----------
    table : one row per report with ``text:<label>`` (1, 0, -1, NaN) and
        ``mesh:<label>`` (0/1) columns, e.g. ``LabelTable.reports`` (the table
        chapter 1 compares).

    Returns
    -------
    One row per drawn finding (index ``label``):
    ``miss_positive`` = P(MeSH=0 | text=1), ``miss_uncertain`` = P(MeSH=0 | text=-1),
    ``extra`` = P(MeSH=1 | text=0 or NaN), and the group sizes ``n_positive``,
    ``n_uncertain``, ``n_unlabelled``. A rate whose group is empty is 0 (no evidence of
    noise).
    """
    need = [f"{p}:{c}" for c in FINDING_DRAWERS for p in ("text", "mesh")]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks columns {missing[:3]}...; expected text:<label> "
                         "and mesh:<label> for every finding "
                         "(LabelTable.reports has them)")
    def rate(mesh: pd.Series, sel: np.ndarray, value: int) -> float:
        return float((mesh[sel] == value).mean()) if sel.any() else 0.0

    rows = []
    for lab in FINDING_DRAWERS:
        t, m = table[f"text:{lab}"], table[f"mesh:{lab}"].astype(float)
        pos, unc = (t == 1).to_numpy(), (t == -1).to_numpy()
        neg = ~(pos | unc)
        rows.append({"label": lab,
                     "miss_positive": rate(m, pos, 0),
                     "miss_uncertain": rate(m, unc, 0),
                     "extra": rate(m, neg, 1),
                     "n_positive": int(pos.sum()), "n_uncertain": int(unc.sum()),
                     "n_unlabelled": int(neg.sum())})
    return pd.DataFrame(rows).set_index("label")


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------


def _compose(an: F.Anatomy, layers: Mapping[str, F.Layer]) -> np.ndarray:
    """The attenuation map (S, S) float32: anatomy and findings painted stage by stage."""
    def stage(img: np.ndarray, name: str) -> np.ndarray:
        for lab, layer in layers.items():
            if F.FINDING_STAGE[lab] == name:
                img = layer.apply(img)
        return img

    img = np.where(an.body, 0.55, 0.06).astype(np.float32)
    img = np.where(an.lungs, 0.2 + an.lung_tex, img)
    img = np.where(an.med & an.body, np.float32(0.68), img)
    img = stage(img, "mediastinum")
    img = np.where(an.heart_mask(), np.float32(0.7), img)
    img = stage(img, "heart")
    spine = np.abs(an.xx - an.mid) < 0.045 * an.W
    img = img + np.where(spine & an.body, np.float32(0.08), 0) + np.where((an.ribs > 0) & an.body, np.float32(0.1), 0)
    img = stage(img, "bone")
    img = img + an.marks
    for name in ("air", "lung", "pleura", "device"):
        img = stage(img, name)
    return img.astype(np.float32)


def _noise_field(st: Style, rng: np.random.Generator, S: int) -> np.ndarray:
    """Acquisition noise (S, S), std ``st.noise`` (fraction of full scale), grain-blurred."""
    noise = rng.normal(0, 1, (S, S)).astype(np.float32)
    if st.grain > 0:
        noise = cv2.GaussianBlur(noise, (0, 0), st.grain)
        noise /= max(noise.std(), 1e-6)
    return st.noise * noise


def _acquire(img: np.ndarray, st: Style, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Exposure gradient, tone curve, blur, noise and positioning: (uint8 image, 2x3 warp)."""
    S = img.shape[0]
    sign = rng.choice([-1, 1])
    noise = _noise_field(st, rng, S)
    M = cv2.getRotationMatrix2D((S / 2, S / 2), rng.normal(0, st.tilt_deg), 1 + rng.normal(0, st.zoom))
    M[:, 2] += rng.normal(0, st.shift * S, 2)
    xx = np.arange(S, dtype=np.float32)[None, :]
    img = np.clip(img, 0, 1) + st.gradient * (xx / S - 0.5) * sign
    img = np.clip(img, 0, 1) ** st.gamma
    img = (st.contrast * (img - 0.5) + 0.5 + st.brightness).astype(np.float32)
    r = blur_radius(st)
    if r:
        img = cv2.GaussianBlur(img, (2 * r + 1, 2 * r + 1), st.blur)
    img = cv2.warpAffine(np.clip(img + noise, 0, 1), M, (S, S), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0.03)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), M


def _output_mask(layer: F.Layer, r: int, M: np.ndarray) -> np.ndarray:
    """The output pixels whose value can depend on the layer (see the module docstring)."""
    S = layer.support.shape[0]
    pre = layer.support.astype(np.uint8)
    if r:
        pre = cv2.dilate(pre, np.ones((2 * r + 1, 2 * r + 1), np.uint8))
    if layer.region is not None:
        pre = pre | layer.region.astype(np.uint8)
    out = cv2.warpAffine(pre.astype(np.float32), M, (S, S), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out > 0


def render(labels: Labels, seed: int, style: str = "source", size: int = 224,
           conspicuity: Mapping[str, float] | None = None, noise: NoiseRates | None = None,
           present: Mapping[str, bool] | None = None, with_anatomy: bool = False):
    """Render one phantom.

    Parameters
    ----------
    labels : the report's labels, a mapping by name or a sequence in CHEXPERT_LABELS order:
        1 positive, -1 uncertain (drawn at reduced conspicuity), 0 or NaN absent. Binary 0/1
        labels work too.
    seed : base seed (see :func:`seed_for`): same seed and arguments give identical pixels.
    style : ``source`` or ``target``.
    size : output side in pixels.
    conspicuity : optional label -> c in (0, 1], overriding the drawn conspicuity of those findings.
    noise : optional label-noise rates (:func:`noise_rates`); None draws exactly the labels.
    present : optional label -> bool, forcing a finding in or out (after noise): counterfactuals.

    Returns
    -------
    image : uint8 (size, size), grey levels.
    masks : uint16 (size, size), bit k set where finding ``CHEXPERT_LABELS[k]`` was drawn.
    anatomy : only with ``with_anatomy=True``: dict of bool (size, size) masks ``lungs`` and
        ``body`` in output coordinates.
    """
    st = get_style(style)
    plan = _plan(labels, seed, noise, conspicuity, present, st.subtle_fraction)
    an = F.anatomy(stream(seed, "anatomy"), size)
    layers = {lab: FINDING_DRAWERS[lab](an, rng, c) for lab, (c, rng) in plan.items()}
    out, M = _acquire(_compose(an, layers), st, stream(seed, "acquisition"))
    r = blur_radius(st)
    bits = np.zeros((size, size), np.uint16)
    for lab, layer in layers.items():
        bits |= _output_mask(layer, r, M).astype(np.uint16) << LABEL_BIT[lab]
    if with_anatomy:
        warp = lambda m: cv2.warpAffine(m.astype(np.uint8), M, (size, size),  # noqa: E731
                                        flags=cv2.INTER_NEAREST).astype(bool)
        return out, bits, {"lungs": warp(an.lungs), "body": warp(an.body)}
    return out, bits


def render_counterfactual(labels: Labels, seed: int, toggle: str, style: str = "source", size: int = 224,
                          noise: NoiseRates | None = None,
                          conspicuity: Mapping[str, float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same phantom with finding ``toggle`` forced present and forced absent.

    Everything else (anatomy, the other findings after noise, acquisition) is identical, and
    the two images differ only inside the returned mask. The present copy's conspicuity is the
    one ``render`` would draw (times :data:`HEDGE_FACTOR` when the label is uncertain).

    Returns (image with, image without, bool mask (size, size) of ``toggle`` in the first).
    """
    if toggle not in FINDING_DRAWERS:
        raise ValueError(f"toggle={toggle!r} is not a drawn finding; expected one of {list(FINDING_DRAWERS)}")
    kw = dict(style=style, size=size, noise=noise, conspicuity=conspicuity)
    with_, bits = render(labels, seed, present={toggle: True}, **kw)
    without, _ = render(labels, seed, present={toggle: False}, **kw)
    return with_, without, mask_of(bits, toggle)


def mask_of(bits: np.ndarray, label: str) -> np.ndarray:
    """Boolean mask (H, W) of one finding from a uint16 bitmask."""
    return (bits >> LABEL_BIT[label]) & 1 == 1


def resolvability(style: str = "target", size: int = 224, input_size: int = 160, patch: int = 16,
                  n: int = 8, seed: int = 0) -> pd.DataFrame:
    """Can the model see each finding at its input resolution?

    For each finding, ``n`` phantoms with only that finding (natural conspicuity draws) are
    rendered with and without it (:func:`render_counterfactual`), and the difference and the
    mask are resized to ``input_size`` (phantoms are square, so the model's resize and centre
    crop is a plain resize: area averaging for the image, nearest neighbour for the mask).

    Returns one row per finding: ``family``; medians over the renders of ``area_px`` (mask area
    at input size), ``area_patches`` (in ``patch`` x ``patch`` patches), ``thickness_px``
    (diameter of the largest disk inside the mask), ``contrast`` (95th percentile of |with -
    without| inside the mask, grey levels), ``cnr`` (contrast / ``noise_sd``, the acquisition
    noise's std at input size); ``frac_resolvable``, the fraction of renders with area >= one
    patch and cnr >= 1; and ``resolvable`` (median area >= one patch and median cnr >= 1) with
    ``reason`` saying which test fails.
    """
    st = get_style(style)
    rs = lambda a, f: cv2.resize(a, (input_size, input_size), interpolation=f)  # noqa: E731
    nrng = np.random.default_rng(seed)
    noise_sd = float(np.mean([rs(_noise_field(st, nrng, size) * 255, cv2.INTER_AREA).std() for _ in range(4)]))
    rows = []
    for lab in FINDING_DRAWERS:
        per = []
        for i in range(n):
            a, b, m = render_counterfactual({lab: 1}, seed_for(f"resolvability-{seed}-{i}", style), lab, style, size)
            d = np.abs(rs(a.astype(np.float32) - b.astype(np.float32), cv2.INTER_AREA))
            mk = rs(m.astype(np.uint8), cv2.INTER_NEAREST)
            area = int(mk.sum())
            thick = 2 * float(cv2.distanceTransform(mk, cv2.DIST_L2, 3).max()) if area else 0.0
            contrast = float(np.percentile(d[mk > 0], 95)) if area else 0.0
            per.append((area, thick, contrast, area >= patch ** 2 and contrast >= noise_sd))
        area, thick, contrast, ok = (np.array(v, float) for v in zip(*per))
        small, faint = np.median(area) < patch ** 2, np.median(contrast) < noise_sd
        rows.append({"label": lab, "family": DRAWING_FAMILY[lab], "area_px": np.median(area),
                     "area_patches": np.median(area) / patch ** 2, "thickness_px": np.median(thick),
                     "contrast": np.median(contrast), "noise_sd": noise_sd, "cnr": np.median(contrast) / noise_sd,
                     "frac_resolvable": ok.mean(), "resolvable": not (small or faint),
                     "reason": ", ".join(r for r, f in (("smaller than one patch", small),
                                                          ("contrast below the noise", faint)) if f)})
    return pd.DataFrame(rows).set_index("label")


# --------------------------------------------------------------------------------------
# Generating a data set
# --------------------------------------------------------------------------------------


def _png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _render_one(job: tuple[str, tuple[float, ...], str, int, str, dict]) -> dict:
    key, labels, style, size, folder, rates = job
    img, bits = render(labels, seed_for(key, style), style, size, noise=rates)
    d = Path(folder)
    ip, mp = d / "images" / f"{key}.png", d / "masks" / f"{key}.png"
    data = _png(img)
    atomic_write_bytes(ip, data)
    atomic_write_bytes(mp, _png(bits))
    return {"image_id": key, "style": style, "path": str(ip.relative_to(d)),
            "mask_path": str(mp.relative_to(d)), "sha256": sha256_bytes(data)}


MANIFEST_FLUSH = 256
"""Rendered phantoms between two writes of the manifest (an interrupted run keeps what it wrote)."""
MANIFEST_COLUMNS = ("image_id", "key", "style", "path", "mask_path", "sha256", "mask_sha256")


def image_key(image_id: str, labels: Sequence[float], style: str, size: int, rates: Mapping) -> str:
    """What one phantom's pixels depend on, hashed (16 hex): generator :data:`VERSION`, style,
    size, noise rates, the image id (its seed) and its 14 label values."""
    lab = ",".join("nan" if math.isnan(float(v)) else repr(float(v)) for v in labels)
    return sha256_bytes(f"{VERSION}|{get_style(style)}|{size}|{json.dumps(sorted(rates.items()))}|"
                        f"{image_id}|{lab}".encode(), 16)


def generate(table: pd.DataFrame, folder: str | os.PathLike, style: str = "source",
             size: int = 224, workers: int | None = None, progress: bool = True,
             noise: NoiseRates | None = None) -> pd.DataFrame:
    """Render a phantom per row of ``table`` into ``folder``, re-using every phantom already there.

    Parameters
    ----------
    table : one row per image: ``image_id`` and the report's three-valued ``text:<label>``
        columns (1, 0, -1, NaN; used when all 14 are present) or else the 14 binary label columns.
    folder : output folder; receives ``images/<id>.png``, ``masks/<id>.png`` and
        ``manifest.csv``, one row per phantom ever rendered there (image_id, key: :func:`image_key`,
        style, path, mask_path, sha256 and mask_sha256: the first 12 hex digits of the SHA-256 of
        the image and mask PNG bytes).
    workers : processes (default: all cores).
    noise : label-noise rates (:func:`noise_rates`), or None for none.

    Returns the manifest rows of ``table``'s images, in its order (paths relative to ``folder``).
    Phantoms are cached per image: one whose key (what its pixels depend on) is in the manifest
    and whose image and mask still have the recorded SHA-256 is re-used, whatever table it was
    rendered for, so a run on a subset (``limit``) renders a subset of the same files and the
    next full run renders only the rest. A changed, truncated or missing PNG is rendered again;
    an unreadable manifest counts as empty (with a warning). The manifest is written every
    :data:`MANIFEST_FLUSH` phantoms, so an interrupted run resumes where it stopped.
    """

    get_style(style)
    folder = Path(folder)
    three = [f"text:{c}" for c in CHEXPERT_LABELS]
    cols = three if set(three) <= set(table.columns) else list(CHEXPERT_LABELS)
    missing = [c for c in ["image_id", *cols] if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks columns {missing}; expected image_id and the 14 text:<label> "
                         f"three-valued labels or the 14 binary labels")
    rates = _rates(noise)
    man_path = folder / "manifest.csv"
    for sub in ("images", "masks"):
        remove_stale_temps(folder / sub)
    ids = [str(i) for i in table.image_id]
    labels = table[cols].to_numpy(dtype=float)
    keys = {iid: image_key(iid, y, style, size, rates) for iid, y in zip(ids, labels)}
    old = read_cache(man_path, lambda p: pd.read_csv(p, dtype=str, keep_default_na=False),
                     lambda m: None if set(MANIFEST_COLUMNS) <= set(m.columns)
                     else f"columns {list(m.columns)}, expected {list(MANIFEST_COLUMNS)}")
    index = {} if old is None else {r["image_id"]: r for r in old[list(MANIFEST_COLUMNS)].to_dict("records")}
    wanted = {iid: index[iid] for iid in ids if iid in index and index[iid]["key"] == keys[iid]}
    rows = _verified_rows(folder, wanted)
    jobs = [(iid, tuple(float(v) for v in y), style, size, str(folder), rates)
            for iid, y in zip(ids, labels) if iid not in rows]
    if jobs or old is None or len(old) != len(index):
        (folder / "key.txt").unlink(missing_ok=True)  # the whole-table key of earlier versions
        done = 0
        for r in _imap(_render_one, jobs, workers, progress, f"phantoms ({style})"):
            r.setdefault("mask_sha256", sha256_bytes((folder / r["mask_path"]).read_bytes()))
            index[r["image_id"]] = rows[r["image_id"]] = {**r, "key": keys[r["image_id"]]}
            done += 1
            if done % MANIFEST_FLUSH == 0:
                _write_manifest(man_path, index)
        _write_manifest(man_path, index)
    return pd.DataFrame([rows[i] for i in ids], columns=list(MANIFEST_COLUMNS))


def _write_manifest(path: Path, index: Mapping[str, Mapping]) -> None:
    atomic_write_csv(path, pd.DataFrame([index[k] for k in sorted(index)], columns=list(MANIFEST_COLUMNS)))


def _verified_rows(folder: Path, man: Mapping[str, Mapping]) -> dict[str, dict]:
    """The manifest rows whose image and mask PNGs still have the recorded SHA-256 (12 hex)."""
    def digest(p: Path) -> str | None:
        try:
            return sha256_bytes(p.read_bytes())
        except OSError:
            return None

    return {iid: dict(r) for iid, r in man.items()
            if digest(folder / r["path"]) == r["sha256"] and digest(folder / r["mask_path"]) == r["mask_sha256"]}


def _imap(fn, jobs: list, workers: int | None, progress: bool, desc: str):
    """``map`` over a process pool (order kept) with a tqdm bar, yielding as results arrive; the
    pool's workers die with this process (:func:`workers.pool`)."""


    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(jobs) < 16:
        yield from (fn(j) for j in tqdm(jobs, desc=desc, disable=not progress))
        return
    with pool(workers) as p:
        yield from tqdm(p.imap(fn, jobs, chunksize=16), total=len(jobs), desc=desc, disable=not progress)


def style_table() -> pd.DataFrame:
    """The styles' parameters as a table (one row per style)."""
    return pd.DataFrame([asdict(s) for s in STYLES.values()]).set_index("name")
