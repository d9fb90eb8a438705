"""Synthetic frontal chest radiographs ("phantoms") with exact per-finding masks.

The ``demo`` profile cannot ship IU-Xray's images, so it renders one phantom per frontal image
id, whose findings are that image's *real* labels. The anatomy and the placement of findings
are grounded in real annotations that ship inside torchxrayvision:

* lung fields: one of the 424 usable two-lung masks of ``semantic_masks_v7labs_lungs.zip``
  (517 files; 82 empty and 11 with other than two lung components are skipped), randomly
  deformed;
* finding positions and sizes: radiologists' boxes, sampled per class. NIH ChestX-ray14
  (``BBox_List_2017.csv.gz``, 1024x1024 images, normalised to [0, 1]) for Atelectasis,
  Effusion, Infiltrate, Mass, Nodule, Pneumonia, Pneumothorax; VinDr-CXR
  (``vinbigdata-train.csv.gz``) for Consolidation, Pleural thickening and Aortic enlargement.
  VinDr's file carries no image sizes, so its boxes are expressed relative to the
  radiologist's heart box of the same image (images that have one) and mapped onto the
  phantom's heart.

Every finding is drawn together with its exact pixel mask, the ground truth that Grad-CAM
is scored against. Masks are stored as one 16-bit PNG per image: bit ``k`` set where finding
``CHEXPERT_LABELS[k]`` is. Two styles, ``source`` and ``target``, differ in contrast, gamma,
texture, noise, blur and positioning: the distribution shift the study is about.

Pixel values: uint8, 0 = no attenuation (black, air), 255 = metal. Image size: ``size`` x
``size`` pixels (default 224).
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np
import pandas as pd

from .io import atomic_write_bytes, atomic_write_csv, sha256_bytes
from .labels import CHEXPERT_LABELS

VERSION = "2"
"""Bump when rendering changes: part of every seed and of the manifest's cache key."""

LABEL_BIT = {c: i for i, c in enumerate(CHEXPERT_LABELS)}


@dataclass(frozen=True)
class Style:
    """Acquisition style: how the attenuation map becomes pixels.

    gamma, contrast: tone curve ``out = contrast * (x ** gamma - 0.5) + 0.5 + brightness``;
    noise: std of additive noise (fraction of full scale); grain: Gaussian blur sigma (px) of
    that noise (texture); blur: sigma (px) of the image blur; tilt_deg, shift, zoom: std of
    the random rotation (degrees), translation (fraction of size) and scale (fraction);
    gradient: amplitude of a smooth left-right exposure gradient.
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


STYLES: dict[str, Style] = {
    "source": Style("source", gamma=1.0, contrast=1.05, brightness=0.0, noise=0.015, grain=0.6,
                    blur=0.5, tilt_deg=1.0, shift=0.01, zoom=0.02, gradient=0.0),
    "target": Style("target", gamma=0.75, contrast=0.85, brightness=0.05, noise=0.04, grain=1.4,
                    blur=0.9, tilt_deg=3.0, shift=0.03, zoom=0.05, gradient=0.1),
}


def get_style(name: str) -> Style:
    """The style called ``name``; an unknown name raises ``ValueError`` listing valid ones."""
    if name not in STYLES:
        raise ValueError(f"unknown phantom style {name!r}; valid styles: {', '.join(STYLES)}")
    return STYLES[name]


def _pkg(name: str) -> Path:
    from .data import package_file

    return package_file(name)


@lru_cache(maxsize=4)
def lung_templates(size: int = 224) -> np.ndarray:
    """Usable two-lung masks from torchxrayvision, resized: bool array (n, size, size).

    A mask is usable when it has exactly two components larger than 300 px at 224 px (one on
    each side of the midline) covering 15-60% of the image. Decoding the 517 files takes
    about 12 s, so the result is cached in ``data_dir()/cache``.
    """
    from .config import data_dir

    cache = data_dir() / "cache" / f"lung_templates-v{VERSION}-{size}.npy"
    if cache.is_file():
        try:
            packed = np.load(cache)
            return np.unpackbits(packed, axis=-1)[..., :size].astype(bool)
        except (ValueError, OSError):
            pass  # corrupt cache: rebuild below
    out = _decode_lung_templates(size)
    import io as _io

    buf = _io.BytesIO()
    np.save(buf, np.packbits(out, axis=-1))
    atomic_write_bytes(cache, buf.getvalue())
    return out


def _decode_lung_templates(size: int) -> np.ndarray:
    out = []
    with zipfile.ZipFile(_pkg("semantic_masks_v7labs_lungs.zip")) as z:
        for n in sorted(z.namelist()):
            if n.endswith("/"):
                continue
            a = cv2.imdecode(np.frombuffer(z.read(n), np.uint8), cv2.IMREAD_GRAYSCALE)
            if a is None:
                continue
            m = cv2.resize((a > 0).astype(np.uint8), (224, 224), interpolation=cv2.INTER_NEAREST)
            k, lab, st, _ = cv2.connectedComponentsWithStats(m)
            big = np.flatnonzero(st[1:, 4] > 300) + 1
            if len(big) != 2 or not 0.15 < m.mean() < 0.6:
                continue
            cx = sorted(st[b, 0] + st[b, 2] / 2 for b in big)
            if not cx[0] < 112 < cx[1]:
                continue
            m = np.isin(lab, big).astype(np.uint8)
            if size != 224:
                m = cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST)
            out.append(m.astype(bool))
    return np.stack(out)


@lru_cache(maxsize=1)
def finding_boxes() -> dict[str, np.ndarray]:
    """Radiologists' boxes per finding class: name -> float array (n, 4) of (cx, cy, w, h).

    NIH classes are in image fractions; the VinDr classes (``vindr:...``) are in heart
    units: ((cx - heart_cx) / heart_w, (cy - heart_cy) / heart_h, w / heart_w, h / heart_h).
    """
    nih = pd.read_csv(_pkg("BBox_List_2017.csv.gz")).iloc[:, :6]
    nih.columns = ["image", "label", "x", "y", "w", "h"]
    out = {}
    for label, g in nih.groupby("label"):
        x, y, w, h = (g[c].to_numpy() / 1024.0 for c in ("x", "y", "w", "h"))
        out[label] = np.stack([x + w / 2, y + h / 2, w, h], 1)
    v = pd.read_csv(_pkg("vinbigdata-train.csv.gz")).dropna(subset=["x_min"])
    heart = v[v.class_name == "Cardiomegaly"].groupby("image_id")[["x_min", "y_min", "x_max", "y_max"]].mean()
    for cls in ("Consolidation", "Pleural thickening", "Aortic enlargement"):
        g = v[v.class_name == cls].merge(heart.add_suffix("_h"), left_on="image_id", right_index=True, how="inner")
        hw, hh = g.x_max_h - g.x_min_h, g.y_max_h - g.y_min_h
        hcx, hcy = (g.x_min_h + g.x_max_h) / 2, (g.y_min_h + g.y_max_h) / 2
        cx, cy = (g.x_min + g.x_max) / 2, (g.y_min + g.y_max) / 2
        arr = np.stack([((cx - hcx) / hw).to_numpy(), ((cy - hcy) / hh).to_numpy(),
                        ((g.x_max - g.x_min) / hw).to_numpy(), ((g.y_max - g.y_min) / hh).to_numpy()], 1)
        out[f"vindr:{cls}"] = arr[np.isfinite(arr).all(1)]
    return out


def seed_for(key: str, style: str) -> int:
    """Deterministic 32-bit seed from an image id (or any key), the style and :data:`VERSION`."""
    return int(hashlib.sha256(f"{key}|{style}|{VERSION}".encode()).hexdigest()[:8], 16)


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------


@dataclass
class _Anatomy:
    lungs: np.ndarray          # bool (S, S)
    right_lung: np.ndarray     # patient's right = image left
    left_lung: np.ndarray
    x0: int
    x1: int
    y0: int
    y1: int
    mid: float
    heart: tuple[float, float, float, float]  # cx, cy, w, h (px)


def _blob(shape: tuple[int, int], cx: float, cy: float, w: float, h: float,
          rng: np.random.Generator, n: int = 5) -> np.ndarray:
    """A soft irregular blob in [0, 1]: a sum of Gaussians scattered inside the box."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    out = np.zeros(shape, np.float32)
    for _ in range(n):
        px, py = cx + rng.uniform(-0.3, 0.3) * w, cy + rng.uniform(-0.3, 0.3) * h
        sx, sy = max(w * rng.uniform(0.2, 0.4), 1.5), max(h * rng.uniform(0.2, 0.4), 1.5)
        out += np.exp(-(((xx - px) / sx) ** 2 + ((yy - py) / sy) ** 2) / 2)
    return out / max(out.max(), 1e-6)


def _sample_box(rng: np.random.Generator, cls: str, S: int, region: np.ndarray,
                tries: int = 20) -> tuple[float, float, float, float]:
    """A NIH box of ``cls`` in pixels whose centre falls inside ``region`` (else a random point)."""
    boxes = finding_boxes()[cls]
    for _ in range(tries):
        cx, cy, w, h = boxes[rng.integers(len(boxes))] * S
        ix, iy = int(np.clip(cx, 0, S - 1)), int(np.clip(cy, 0, S - 1))
        if region[iy, ix]:
            return cx, cy, w, h
    ys, xs = np.nonzero(region)
    i = rng.integers(len(xs))
    cx, cy, w, h = boxes[rng.integers(len(boxes))] * S
    return float(xs[i]), float(ys[i]), w, h


def _heart_box(rng: np.random.Generator, cls: str, an: _Anatomy) -> tuple[float, float, float, float]:
    """A VinDr box of ``cls`` (heart units) mapped onto this phantom's heart, in pixels."""
    boxes = finding_boxes()[f"vindr:{cls}"]
    rx, ry, rw, rh = boxes[rng.integers(len(boxes))]
    hcx, hcy, hw, hh = an.heart
    return hcx + rx * hw, hcy + ry * hh, max(rw * hw, 3.0), max(rh * hh, 3.0)


def _anatomy(rng: np.random.Generator, S: int, cardiomegaly: bool) -> _Anatomy:
    tpl = lung_templates(S)
    lungs = tpl[rng.integers(len(tpl))].astype(np.uint8)
    # deform: anisotropic scale, shift and a small rotation about the centre
    a = np.deg2rad(rng.normal(0, 2.0))
    sx, sy = rng.uniform(0.9, 1.05), rng.uniform(0.9, 1.05)
    M = np.array([[sx * np.cos(a), -sx * np.sin(a), 0], [sy * np.sin(a), sy * np.cos(a), 0]], np.float32)
    c = np.array([S / 2, S / 2], np.float32)
    M[:, 2] = c - M[:, :2] @ c + rng.normal(0, 0.015 * S, 2)
    lungs = cv2.warpAffine(lungs, M, (S, S), flags=cv2.INTER_NEAREST).astype(bool)
    ys, xs = np.nonzero(lungs)
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    mid = (x0 + x1) / 2
    xx = np.arange(S)[None, :]
    right, left = lungs & (xx < mid), lungs & (xx >= mid)
    W = x1 - x0
    ctr = rng.uniform(0.56, 0.66) if cardiomegaly else rng.uniform(0.38, 0.47)
    hw = ctr * W
    hh = hw * rng.uniform(0.72, 0.85)
    hcx = mid + rng.uniform(0.04, 0.09) * W
    hcy = y1 - hh * rng.uniform(0.35, 0.5)
    return _Anatomy(lungs, right, left, x0, x1, y0, y1, mid, (hcx, hcy, hw, hh))


def _ellipse_mask(S: int, cx: float, cy: float, ax: float, ay: float, angle: float = 0) -> np.ndarray:
    m = np.zeros((S, S), np.uint8)
    cv2.ellipse(m, (int(round(cx)), int(round(cy))), (max(int(ax), 1), max(int(ay), 1)), angle, 0, 360, 1, -1)
    return m.astype(bool)


def render(labels: Mapping[str, int] | Sequence[int], seed: int, style: str = "source",
           size: int = 224, with_anatomy: bool = False):
    """Render one phantom.

    Parameters
    ----------
    labels : 0/1 per CheXpert label (a mapping by name, or a sequence in CHEXPERT_LABELS order).
    seed : random seed (see :func:`seed_for`): same seed and labels give identical pixels.
    style : ``source`` or ``target``.
    size : output side in pixels.

    Returns
    -------
    image : uint8 (size, size), grey levels.
    masks : uint16 (size, size), bit k set where finding ``CHEXPERT_LABELS[k]`` is.
    anatomy : only with ``with_anatomy=True``: dict of bool (size, size) masks ``lungs`` and
        ``body`` in output coordinates.
    """
    st = get_style(style)
    if not isinstance(labels, Mapping):
        labels = dict(zip(CHEXPERT_LABELS, labels))
    pos = {c for c in CHEXPERT_LABELS if int(labels.get(c, 0)) == 1}
    rng = np.random.default_rng(seed)
    S = size
    an = _anatomy(rng, S, "Cardiomegaly" in pos)
    W, H = an.x1 - an.x0, an.y1 - an.y0
    yy, xx = np.mgrid[:S, :S].astype(np.float32)
    masks = {c: np.zeros((S, S), bool) for c in CHEXPERT_LABELS}

    # body and soft tissue
    body = _ellipse_mask(S, an.mid, (an.y0 + an.y1) / 2 + 0.05 * H, W * 0.62, H * 0.75)
    img = np.where(body, 0.55, 0.06).astype(np.float32)
    lung_tex = cv2.GaussianBlur(rng.normal(0, 1, (S, S)).astype(np.float32), (0, 0), 3) * 0.02
    img = np.where(an.lungs, 0.2 + lung_tex, img)

    # mediastinum (upper), widened if Enlarged Cardiomediastinum
    med_w = 0.17 * W
    med = (np.abs(xx - an.mid) < med_w / 2) & (yy > an.y0 - 0.08 * H) & (yy < an.heart[1])
    if "Enlarged Cardiomediastinum" in pos:
        cx, cy, w, h = _heart_box(rng, "Aortic enlargement", an)
        wide_w = med_w * rng.uniform(1.6, 2.1)
        wide = (np.abs(xx - an.mid) < wide_w / 2) & (yy > min(cy - h / 2, an.y0 + 0.1 * H)) & (yy < an.heart[1])
        knob = _ellipse_mask(S, max(cx, an.mid + med_w / 2), cy, max(w / 2, 0.05 * W), max(h / 2, 0.05 * H))
        extra = (wide | (knob & (yy < an.heart[1]))) & ~med
        masks["Enlarged Cardiomediastinum"] = extra & body
        med = med | extra
    img = np.where(med & body, 0.68, img)

    # heart
    hcx, hcy, hw, hh = an.heart
    heart = _ellipse_mask(S, hcx, hcy, hw / 2, hh / 2, rng.uniform(-15, 5)) & (yy < an.y1 + 0.03 * H)
    img = np.where(heart, 0.7, img)
    if "Cardiomegaly" in pos:
        masks["Cardiomegaly"] = heart.copy()

    # spine and ribs
    spine = np.abs(xx - an.mid) < 0.045 * W
    img += np.where(spine & body, 0.08, 0)
    ribs = np.zeros((S, S), np.uint8)
    n_ribs = 9
    rib_lines = []
    for k in range(n_ribs):
        y_k = an.y0 + (k + 0.3) * H / n_ribs * rng.uniform(0.95, 1.05)
        for side in (-1, 1):
            xs_ = np.linspace(an.mid + side * 0.05 * W, an.mid + side * 0.55 * W, 24)
            t = np.abs(xs_ - an.mid) / (0.55 * W)
            ys_ = y_k + 0.10 * H * np.sin(np.pi * t * 0.9) - 0.04 * H * t
            pts = np.stack([xs_, ys_], 1).astype(np.int32)
            cv2.polylines(ribs, [pts], False, 1, thickness=max(2, S // 90))
            rib_lines.append(pts)
    # clavicles
    for side in (-1, 1):
        pts = np.array([[an.mid + side * 0.06 * W, an.y0 - 0.02 * H],
                        [an.mid + side * 0.5 * W, an.y0 - 0.08 * H]], np.int32)
        cv2.polylines(ribs, [pts], False, 1, thickness=max(3, S // 60))

    # fracture: a gap and a step in one rib
    if "Fracture" in pos:
        pts = rib_lines[rng.integers(2, len(rib_lines))]
        j = rng.integers(10, 22)
        bx, by = pts[j]
        r = max(4, S // 32)
        gap = (np.abs(xx - bx) <= r * 0.6) & (np.abs(yy - by) <= r * 1.5)
        ribs[gap] = 0
        shifted = np.roll(ribs * ((xx > bx) & (np.abs(xx - bx) < 4 * r) & (np.abs(yy - by) < 3 * r)), 4, axis=0)
        ribs = np.maximum(ribs * ~((xx > bx) & (np.abs(xx - bx) < 4 * r) & (np.abs(yy - by) < 3 * r)), shifted)
        masks["Fracture"] = _ellipse_mask(S, bx, by, 2.5 * r, 2.5 * r) & body
    img += np.where((ribs > 0) & body, 0.1, 0)

    # vascular markings from the hila
    marks = np.zeros((S, S), np.float32)
    for side, lung in ((-1, an.right_lung), (1, an.left_lung)):
        hx, hy = an.mid + side * 0.12 * W, an.y0 + 0.45 * H
        for _ in range(10):
            ang = rng.uniform(-np.pi * 0.8, np.pi * 0.8) + (0 if side > 0 else np.pi)
            L_ = rng.uniform(0.15, 0.35) * W
            p = np.array([[hx, hy], [hx + np.cos(ang) * L_ * 0.5, hy + np.sin(ang) * L_ * 0.5 + rng.normal(0, 3)],
                          [hx + np.cos(ang) * L_, hy + np.sin(ang) * L_]], np.int32)
            cv2.polylines(marks, [p], False, 0.05, thickness=1)
    marks = cv2.GaussianBlur(marks, (0, 0), 0.7) * an.lungs

    # pneumothorax: a lateral/apical rim of one lung with no markings, a visible pleural line
    if "Pneumothorax" in pos:
        cx, cy, w, h = _sample_box(rng, "Pneumothorax", S, an.lungs)
        lung = an.right_lung if cx < an.mid else an.left_lung
        d = cv2.distanceTransform(lung.astype(np.uint8), cv2.DIST_L2, 3)
        depth = rng.uniform(0.05, 0.1) * W
        vert = (yy < an.y0 + rng.uniform(0.45, 0.8) * H)
        ptx = lung & (d < depth) & vert
        masks["Pneumothorax"] = ptx
        img = np.where(ptx, 0.05, img)
        marks = marks * ~ptx
        line = lung & (np.abs(d - depth) < 0.8) & vert
        img += np.where(line, 0.25, 0)
    img += marks

    # opacities inside the lungs
    def opacity(cls_box: str, label: str, strength: float, n: int, scale: float = 1.0,
                bronchogram: bool = False, box=None) -> None:
        nonlocal img
        cx, cy, w, h = box if box is not None else _sample_box(rng, cls_box, S, an.lungs)
        w, h = max(w * scale, 0.08 * W), max(h * scale, 0.08 * H)
        b = _blob((S, S), cx, cy, w, h, rng, n) * an.lungs
        m = b > 0.35
        if bronchogram:
            air = np.zeros((S, S), np.uint8)
            for _ in range(3):
                a0 = rng.uniform(0, np.pi)
                p = np.array([[cx, cy], [cx + np.cos(a0) * w / 2, cy + np.sin(a0) * h / 2]], np.int32)
                cv2.polylines(air, [p], False, 1, 1)
            b = b * np.where(air > 0, 0.4, 1.0)
        img += strength * np.clip(b * 1.4, 0, 1)
        masks[label] |= m

    if "Lung Opacity" in pos:
        opacity("Infiltrate", "Lung Opacity", rng.uniform(0.18, 0.28), 5)
    if "Pneumonia" in pos:
        opacity("Pneumonia", "Pneumonia", rng.uniform(0.22, 0.32), 6)
    if "Consolidation" in pos:
        opacity("", "Consolidation", rng.uniform(0.32, 0.42), 4, bronchogram=True,
                box=_clip_to(rng, _heart_box(rng, "Consolidation", an), an.lungs))
    if "Edema" in pos:
        haze = np.zeros((S, S), np.float32)
        for side in (-1, 1):
            haze += _blob((S, S), an.mid + side * 0.2 * W, an.y0 + 0.5 * H, 0.35 * W, 0.5 * H, rng, 6)
        haze = np.clip(haze, 0, 1) * an.lungs
        img += rng.uniform(0.14, 0.2) * haze
        kerley = np.zeros((S, S), np.float32)
        for side in (-1, 1):
            for _ in range(4):
                y = an.y0 + rng.uniform(0.65, 0.9) * H
                x = an.mid + side * rng.uniform(0.35, 0.45) * W
                cv2.line(kerley, (int(x), int(y)), (int(x + side * 4), int(y)), 0.08, 1)
        img += kerley * an.lungs
        masks["Edema"] = haze > 0.35
    if "Atelectasis" in pos:
        cx, cy, w, h = _sample_box(rng, "Atelectasis", S, an.lungs & (yy > an.y0 + 0.45 * H))
        band = _ellipse_mask(S, cx, cy, max(w / 2, 0.12 * W), max(S // 70, 2), rng.uniform(-20, 20))
        band = cv2.GaussianBlur(band.astype(np.float32), (0, 0), 1.0) * an.lungs
        img += rng.uniform(0.25, 0.35) * band
        masks["Atelectasis"] = band > 0.3
    if "Lung Lesion" in pos:
        kind = "Mass" if rng.random() < 0.4 else "Nodule"
        cx, cy, w, h = _sample_box(rng, kind, S, an.lungs)
        r = np.clip(min(w, h) / 2, S / 30, S / 12) if kind == "Mass" else rng.uniform(S / 45, S / 28)
        disk = _ellipse_mask(S, cx, cy, r, r * rng.uniform(0.85, 1.15))
        soft = cv2.GaussianBlur(disk.astype(np.float32), (0, 0), 0.8)
        img += rng.uniform(0.38, 0.48) * soft * an.lungs
        masks["Lung Lesion"] = disk & cv2.dilate(an.lungs.astype(np.uint8), np.ones((5, 5))).astype(bool)
    if "Pleural Other" in pos:
        cx, cy, w, h = _clip_to(rng, _heart_box(rng, "Pleural thickening", an), an.lungs)
        lung = an.right_lung if cx < an.mid else an.left_lung
        d = cv2.distanceTransform(lung.astype(np.uint8), cv2.DIST_L2, 3)
        thick = lung & (d < rng.uniform(3.5, 6) * S / 224) & (np.abs(yy - cy) < max(h, 0.2 * H) / 2) \
            & (np.abs(xx - an.mid) > 0.2 * W)
        img = np.where(thick, img + 0.35, img)
        masks["Pleural Other"] = thick
    if "Pleural Effusion" in pos:
        cx, cy, w, h = _sample_box(rng, "Effusion", S, an.lungs)
        sides = [an.right_lung if cx < an.mid else an.left_lung]
        if rng.random() < 0.35:
            sides = [an.right_lung, an.left_lung]
        eff = np.zeros((S, S), bool)
        for lung in sides:
            ly1 = np.nonzero(lung)[0].max()  # the lung's lowest row
            level = ly1 - rng.uniform(0.15, 0.35) * H
            t = np.abs(xx - an.mid) / (0.5 * W)
            meniscus = level - 0.12 * H * t ** 2  # higher laterally: the meniscus sign
            eff |= lung & (yy > meniscus)
        eff_s = cv2.GaussianBlur(eff.astype(np.float32), (0, 0), 1.2)
        img = img * (1 - eff_s) + 0.62 * eff_s
        masks["Pleural Effusion"] = eff

    # support devices (metal, bright)
    if "Support Devices" in pos:
        dev = np.zeros((S, S), np.uint8)
        kinds = rng.choice(["pacemaker", "line", "tube", "wires"], size=rng.integers(1, 3), replace=False)
        for k in kinds:
            if k == "pacemaker":
                px, py = an.mid + rng.uniform(0.3, 0.45) * W, an.y0 + rng.uniform(0.0, 0.12) * H
                cv2.rectangle(dev, (int(px - S / 40), int(py - S / 60)), (int(px + S / 40), int(py + S / 60)), 1, -1)
                pts = np.array([[px, py], [an.mid + 0.15 * W, an.y0 + 0.35 * H], [hcx, hcy]], np.int32)
                cv2.polylines(dev, [pts], False, 1, 1)
            elif k == "line":
                side = rng.choice([-1, 1])
                pts = np.array([[an.mid + side * 0.35 * W, an.y0 - 0.1 * H], [an.mid + side * 0.1 * W, an.y0 + 0.05 * H],
                                [an.mid + 0.02 * W, an.y0 + 0.3 * H]], np.int32)
                cv2.polylines(dev, [pts], False, 1, 1)
            elif k == "tube":
                cv2.line(dev, (int(an.mid), 0), (int(an.mid), int(an.y0 + 0.25 * H)), 1, 2)
            else:
                for j in range(5):
                    y = int(an.y0 + (0.2 + 0.1 * j) * H)
                    cv2.circle(dev, (int(an.mid), y), max(2, S // 80), 1, 1)
        img = np.where(dev > 0, 0.97, img)
        masks["Support Devices"] = cv2.dilate(dev, np.ones((3, 3), np.uint8)).astype(bool)

    # acquisition style: exposure gradient, tone curve, blur, noise, positioning
    img = np.clip(img, 0, 1)
    img += st.gradient * (xx / S - 0.5) * rng.choice([-1, 1])
    img = np.clip(img, 0, 1) ** st.gamma
    img = st.contrast * (img - 0.5) + 0.5 + st.brightness
    if st.blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), st.blur)
    noise = rng.normal(0, 1, (S, S)).astype(np.float32)
    if st.grain > 0:
        noise = cv2.GaussianBlur(noise, (0, 0), st.grain)
        noise /= max(noise.std(), 1e-6)
    img += st.noise * noise
    a = rng.normal(0, st.tilt_deg)
    z = 1 + rng.normal(0, st.zoom)
    M = cv2.getRotationMatrix2D((S / 2, S / 2), a, z)
    M[:, 2] += rng.normal(0, st.shift * S, 2)
    img = cv2.warpAffine(np.clip(img, 0, 1), M, (S, S), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0.03)
    bits = np.zeros((S, S), np.uint16)
    for c, m in masks.items():
        if c in pos and m.any():
            w_ = cv2.warpAffine(m.astype(np.uint8), M, (S, S), flags=cv2.INTER_NEAREST)
            bits |= (w_.astype(np.uint16) << LABEL_BIT[c])
    out = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    if with_anatomy:
        warp = lambda m: cv2.warpAffine(m.astype(np.uint8), M, (S, S), flags=cv2.INTER_NEAREST).astype(bool)  # noqa: E731
        return out, bits, {"lungs": warp(an.lungs), "body": warp(body)}
    return out, bits


def _clip_to(rng: np.random.Generator, box: tuple[float, float, float, float],
             region: np.ndarray) -> tuple[float, float, float, float]:
    """Move a box's centre to the nearest pixel of ``region`` when it falls outside it."""
    cx, cy, w, h = box
    S = region.shape[0]
    ix, iy = int(np.clip(cx, 0, S - 1)), int(np.clip(cy, 0, S - 1))
    if region[iy, ix]:
        return cx, cy, w, h
    ys, xs = np.nonzero(region)
    i = np.argmin((xs - cx) ** 2 + (ys - cy) ** 2)
    return float(xs[i]), float(ys[i]), w, h


def mask_of(bits: np.ndarray, label: str) -> np.ndarray:
    """Boolean mask (H, W) of one finding from a uint16 bitmask."""
    return (bits >> LABEL_BIT[label]) & 1 == 1


# --------------------------------------------------------------------------------------
# Generating a data set
# --------------------------------------------------------------------------------------


def _png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _render_one(job: tuple[str, tuple[int, ...], str, int, str]) -> dict:
    key, labels, style, size, folder = job
    img, bits = render(labels, seed_for(key, style), style, size)
    d = Path(folder)
    ip, mp = d / "images" / f"{key}.png", d / "masks" / f"{key}.png"
    data = _png(img)
    atomic_write_bytes(ip, data)
    atomic_write_bytes(mp, _png(bits))
    return {"image_id": key, "style": style, "path": str(ip.relative_to(d)),
            "mask_path": str(mp.relative_to(d)), "sha256": sha256_bytes(data)}


def generate(table: pd.DataFrame, folder: str | os.PathLike, style: str = "source",
             size: int = 224, workers: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Render a phantom per row of ``table`` into ``folder`` (re-used when already complete).

    Parameters
    ----------
    table : one row per image: ``image_id`` and the 14 binary label columns.
    folder : output folder; receives ``images/<id>.png``, ``masks/<id>.png`` and
        ``manifest.csv`` (image_id, style, path, mask_path, sha256 and mask_sha256: the first
        12 hex digits of the SHA-256 of the image and mask PNG bytes).
    workers : processes (default: all cores).

    Returns the manifest (paths relative to ``folder``). A manifest whose key (generator
    version, style, size, ids and labels) matches is re-used when every image and mask still
    has the SHA-256 it records; a changed, truncated or missing PNG is rendered again, and an
    unreadable manifest counts as absent. After an interrupted run, only the missing images are
    rendered (PNGs already written are kept when they decode).
    """
    from .io import read_cache, remove_stale_temps

    get_style(style)
    folder = Path(folder)
    cols = list(CHEXPERT_LABELS)
    missing = [c for c in ["image_id", *cols] if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks columns {missing}; expected image_id and the 14 labels")
    key = sha256_bytes(f"{VERSION}|{get_style(style)}|{size}|".encode()
                       + table[["image_id", *cols]].to_csv(index=False).encode())
    man_path, key_path = folder / "manifest.csv", folder / "key.txt"
    same = key_path.is_file() and key_path.read_text() == key
    for sub in ("images", "masks"):
        remove_stale_temps(folder / sub)
    ids = [str(i) for i in table.image_id]
    man = read_cache(man_path, lambda p: pd.read_csv(p, dtype=str),
                     lambda m: None if {"image_id", "path", "mask_path", "sha256", "mask_sha256"} <= set(m.columns)
                     and list(m.image_id) == ids else "not this table's manifest") if same else None
    verified = _verified_rows(folder, man) if man is not None else {}
    if man is not None and len(verified) == len(man):
        return man
    atomic_write_bytes(key_path, key.encode())
    labels = table[cols].to_numpy(dtype=int)
    jobs, rows = [], dict(verified)
    for iid, y in zip(ids, labels):
        if iid in rows:
            continue
        ip, mp_ = folder / "images" / f"{iid}.png", folder / "masks" / f"{iid}.png"
        if same and man is None and _decodes(ip) and _decodes(mp_):  # resume an interrupted run
            rows[iid] = {"image_id": iid, "style": style, "path": f"images/{iid}.png",
                         "mask_path": f"masks/{iid}.png", "sha256": sha256_bytes(ip.read_bytes())}
        else:
            jobs.append((iid, tuple(int(v) for v in y), style, size, str(folder)))
    for r in _map(_render_one, jobs, workers, progress, f"phantoms ({style})"):
        rows[r["image_id"]] = r
    for r in rows.values():
        r.setdefault("mask_sha256", sha256_bytes((folder / r["mask_path"]).read_bytes()))
    man = pd.DataFrame([rows[i] for i in ids])
    atomic_write_csv(man_path, man)
    return man


def _verified_rows(folder: Path, man: pd.DataFrame) -> dict[str, dict]:
    """The manifest rows whose image and mask PNGs still have the recorded SHA-256 (12 hex)."""
    def digest(p: Path) -> str | None:
        try:
            return sha256_bytes(p.read_bytes())
        except OSError:
            return None

    return {r["image_id"]: r for r in man.to_dict("records")
            if digest(folder / r["path"]) == r["sha256"] and digest(folder / r["mask_path"]) == r["mask_sha256"]}


def _decodes(p: Path) -> bool:
    """Whether ``p`` is a complete PNG (a truncated one fails to decode)."""
    if not p.is_file():
        return False
    return cv2.imdecode(np.fromfile(p, np.uint8), cv2.IMREAD_UNCHANGED) is not None


def _map(fn, jobs: list, workers: int | None, progress: bool, desc: str) -> list:
    """``map`` over a process pool (order kept) with a tqdm bar."""
    from tqdm.auto import tqdm

    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(jobs) < 16:
        return [fn(j) for j in tqdm(jobs, desc=desc, disable=not progress)]
    import multiprocessing as mp

    ctx = mp.get_context("fork") if hasattr(os, "fork") else mp.get_context()
    with ctx.Pool(workers) as pool:
        return list(tqdm(pool.imap(fn, jobs, chunksize=16), total=len(jobs), desc=desc,
                         disable=not progress))


def style_table() -> pd.DataFrame:
    """The styles' parameters as a table (one row per style)."""
    return pd.DataFrame([asdict(s) for s in STYLES.values()]).set_index("name")
