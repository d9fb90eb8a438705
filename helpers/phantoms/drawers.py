"""The phantoms' anatomy and one drawing function per finding (the registry).

Grounding data, shipped inside torchxrayvision:

* lung fields: one of the 424 usable two-lung masks of ``semantic_masks_v7labs_lungs.zip``
  (517 files; 82 empty and 11 with other than two lung components are skipped), randomly
  deformed;
* finding positions and sizes: radiologists' boxes, sampled per class. NIH ChestX-ray14
  (``BBox_List_2017.csv.gz``, 1024x1024 images, normalised to [0, 1]) for Atelectasis,
  Effusion, Infiltrate, Mass, Nodule, Pneumonia, Pneumothorax; VinDr-CXR
  (``vinbigdata-train.csv.gz``) for Consolidation, Pleural thickening and Aortic enlargement.
  VinDr's file carries no image sizes, so its boxes are expressed relative to the
  radiologist's heart box of the same image (images that have one) and mapped onto the
  phantom's *reference* (normal-size) heart.

Values are attenuation in [0, 1] (0 = air, 1 = metal) on an (S, S) float32 grid, before the
acquisition step of :func:`helpers.phantoms.rendering.render`.

Every drawer has the signature ``draw(anatomy, rng, conspicuity) -> Layer``: it reads only the
anatomy (drawn from its own random stream) and its own ``rng``, never another finding, and its
:class:`Layer` changes pixels only inside ``Layer.support``. That is what makes counterfactual
rendering exact: toggling one finding changes the attenuation map only inside its support.
``conspicuity`` in (0, 1] scales the finding's contrast (for Cardiomegaly: how far the heart
goes from the patient's normal cardiothoracic ratio to their cardiomegaly ratio; for Enlarged
Cardiomediastinum: how much the mediastinum widens).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pandas as pd

from helpers.storage import atomic_write_bytes
from helpers.config import data_dir
from helpers.data.iuxray import package_file

TEMPLATES_VERSION = "2"
"""Version of the decoded lung-template cache (independent of the renderer's version)."""

CTR_NORMAL = (0.45, 0.04)
"""Cardiothoracic ratio (heart width / thoracic width) without cardiomegaly: mean, std.
Normal adult PA films have a CTR of about 0.39-0.50 (Danzer's 0.5 rule marks the upper end)."""
CTR_CARDIOMEGALY = (0.55, 0.05)
"""Cardiothoracic ratio with cardiomegaly: mean, std. The same standard-normal draw ``z`` of
the patient (anatomy stream, clipped to +-3) gives both ratios, so toggling Cardiomegaly only
grows the heart; across patients the two distributions overlap (about 10% of normal hearts
exceed 0.50 and 16% of enlarged ones stay below it)."""


def _pkg(name: str) -> Path:

    return package_file(name)


# --------------------------------------------------------------------------------------
# Grounding data
# --------------------------------------------------------------------------------------


def lung_templates(size: int = 224) -> np.ndarray:
    """Usable two-lung masks from torchxrayvision, resized: bool array (n, size, size).

    A mask is usable when it has exactly two components larger than 300 px at 224 px (one on
    each side of the midline) covering 15-60% of the image. Masks are decoded at 224 px
    (about 12 s, cached in ``data_dir()/cache``) and resized with nearest neighbours.
    """
    base = _templates_224()
    if size == 224:
        return base
    return _resized_templates(size)


@lru_cache(maxsize=4)
def _resized_templates(size: int) -> np.ndarray:
    base = _templates_224()
    return np.stack([cv2.resize(m.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
                     for m in base]).astype(bool)


@lru_cache(maxsize=1)
def _templates_224() -> np.ndarray:
    import io as _io


    cache = data_dir() / "cache" / f"lung_templates-v{TEMPLATES_VERSION}-224.npy"
    if cache.is_file():
        try:
            packed = np.load(cache)
            return np.unpackbits(packed, axis=-1)[..., :224].astype(bool)
        except (ValueError, OSError):
            pass  # corrupt cache: rebuild below
    out = _decode_lung_templates()
    buf = _io.BytesIO()
    np.save(buf, np.packbits(out, axis=-1))
    atomic_write_bytes(cache, buf.getvalue())
    return out


def _decode_lung_templates() -> np.ndarray:
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
            out.append(np.isin(lab, big))
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


# --------------------------------------------------------------------------------------
# Anatomy (its own random stream) and layers
# --------------------------------------------------------------------------------------


@dataclass
class Anatomy:
    """The patient: masks and geometry on the (S, S) grid, drawn from the anatomy stream only.

    ``heart`` is the reference (normal-size) heart box (cx, cy, w, h) in px; ``ctr`` its
    cardiothoracic ratio and ``ctr_z`` the patient's standard-normal draw behind it.
    """

    S: int
    xx: np.ndarray
    yy: np.ndarray
    lungs: np.ndarray
    right_lung: np.ndarray     # patient's right = image left
    left_lung: np.ndarray
    body: np.ndarray
    x0: int
    x1: int
    y0: int
    y1: int
    mid: float
    heart: tuple[float, float, float, float]
    heart_angle: float
    ctr: float
    ctr_z: float
    med_w: float
    med: np.ndarray
    ribs: np.ndarray           # uint8 raster of ribs and clavicles
    rib_lines: list
    marks: np.ndarray          # float vascular markings
    lung_tex: np.ndarray

    @property
    def W(self) -> int:
        return self.x1 - self.x0

    @property
    def H(self) -> int:
        return self.y1 - self.y0

    def heart_mask(self, scale: float = 1.0) -> np.ndarray:
        """The heart ellipse with both axes times ``scale`` (same centre and angle), clipped below."""
        hcx, hcy, hw, hh = self.heart
        m = _ellipse_mask(self.S, hcx, hcy, scale * hw / 2, scale * hh / 2, self.heart_angle)
        return m & (self.yy < self.y1 + 0.03 * self.H)


@dataclass
class Layer:
    """One finding's change to the attenuation map, confined to ``support`` (bool (S, S)).

    Inside the support: ``out = img * (1 - alpha) + value * alpha + add``; outside it the image
    is untouched. ``region`` is the ground-truth region when it is larger than the support
    (Cardiomegaly: the whole enlarged heart; Fracture: the neighbourhood of the break).
    """

    support: np.ndarray
    add: np.ndarray | float = 0.0
    alpha: np.ndarray | float = 0.0
    value: float = 0.0
    region: np.ndarray | None = None

    def apply(self, img: np.ndarray) -> np.ndarray:
        out = img * (1 - self.alpha) + self.value * self.alpha + self.add
        return np.where(self.support, out, img).astype(np.float32)


def _ellipse_mask(S: int, cx: float, cy: float, ax: float, ay: float, angle: float = 0) -> np.ndarray:
    m = np.zeros((S, S), np.uint8)
    cv2.ellipse(m, (int(round(cx)), int(round(cy))), (max(int(ax), 1), max(int(ay), 1)), angle, 0, 360, 1, -1)
    return m.astype(bool)


def anatomy(rng: np.random.Generator, S: int) -> Anatomy:
    """Lungs (a deformed template), body, mediastinum, reference heart, ribs, vessels."""
    tpl = lung_templates(S)
    lungs = tpl[rng.integers(len(tpl))].astype(np.uint8)
    a = np.deg2rad(rng.normal(0, 2.0))
    sx, sy = rng.uniform(0.9, 1.05), rng.uniform(0.9, 1.05)
    M = np.array([[sx * np.cos(a), -sx * np.sin(a), 0], [sy * np.sin(a), sy * np.cos(a), 0]], np.float32)
    c = np.array([S / 2, S / 2], np.float32)
    M[:, 2] = c - M[:, :2] @ c + rng.normal(0, 0.015 * S, 2)
    lungs = cv2.warpAffine(lungs, M, (S, S), flags=cv2.INTER_NEAREST).astype(bool)
    ys, xs = np.nonzero(lungs)
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    mid = (x0 + x1) / 2
    yy, xx = np.mgrid[:S, :S].astype(np.float32)
    W, H = x1 - x0, y1 - y0
    z = float(np.clip(rng.normal(), -3, 3))
    ctr = CTR_NORMAL[0] + CTR_NORMAL[1] * z
    hw = ctr * W
    hh = hw * rng.uniform(0.72, 0.85)
    heart = (mid + rng.uniform(0.04, 0.09) * W, y1 - hh * rng.uniform(0.35, 0.5), hw, hh)
    med_w = 0.17 * W * float(np.clip(rng.normal(1, 0.08), 0.8, 1.2))
    body = _ellipse_mask(S, mid, (y0 + y1) / 2 + 0.05 * H, W * 0.62, H * 0.75)
    med = (np.abs(xx - mid) < med_w / 2) & (yy > y0 - 0.08 * H) & (yy < heart[1])
    ribs, rib_lines = _ribs(rng, S, mid, x0, y0, W, H)
    lung_tex = cv2.GaussianBlur(rng.normal(0, 1, (S, S)).astype(np.float32), (0, 0), 3) * 0.02
    return Anatomy(S, xx, yy, lungs, lungs & (xx < mid), lungs & (xx >= mid), body, x0, x1, y0, y1,
                   mid, heart, float(rng.uniform(-15, 5)), ctr, z, med_w, med, ribs, rib_lines,
                   _vessels(rng, S, mid, y0, W, H, lungs), lung_tex)


def _ribs(rng: np.random.Generator, S: int, mid: float, x0: int, y0: int, W: int, H: int):
    ribs = np.zeros((S, S), np.uint8)
    lines = []
    for k in range(9):
        y_k = y0 + (k + 0.3) * H / 9 * rng.uniform(0.95, 1.05)
        for side in (-1, 1):
            xs_ = np.linspace(mid + side * 0.05 * W, mid + side * 0.55 * W, 24)
            t = np.abs(xs_ - mid) / (0.55 * W)
            ys_ = y_k + 0.10 * H * np.sin(np.pi * t * 0.9) - 0.04 * H * t
            pts = np.stack([xs_, ys_], 1).astype(np.int32)
            cv2.polylines(ribs, [pts], False, 1, thickness=max(2, S // 90))
            lines.append(pts)
    for side in (-1, 1):  # clavicles
        pts = np.array([[mid + side * 0.06 * W, y0 - 0.02 * H], [mid + side * 0.5 * W, y0 - 0.08 * H]], np.int32)
        cv2.polylines(ribs, [pts], False, 1, thickness=max(3, S // 60))
    return ribs, lines


def _vessels(rng: np.random.Generator, S: int, mid: float, y0: int, W: int, H: int,
             lungs: np.ndarray) -> np.ndarray:
    marks = np.zeros((S, S), np.float32)
    for side in (-1, 1):
        hx, hy = mid + side * 0.12 * W, y0 + 0.45 * H
        for _ in range(10):
            ang = rng.uniform(-np.pi * 0.8, np.pi * 0.8) + (0 if side > 0 else np.pi)
            L_ = rng.uniform(0.15, 0.35) * W
            p = np.array([[hx, hy], [hx + np.cos(ang) * L_ * 0.5, hy + np.sin(ang) * L_ * 0.5 + rng.normal(0, 3)],
                          [hx + np.cos(ang) * L_, hy + np.sin(ang) * L_]], np.int32)
            cv2.polylines(marks, [p], False, 0.05, thickness=1)
    return cv2.GaussianBlur(marks, (0, 0), 0.7) * lungs


# --------------------------------------------------------------------------------------
# Shared primitives
# --------------------------------------------------------------------------------------


def _ramp(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """0 below ``lo``, 1 above ``hi``, linear between: truncates soft shapes to a compact support."""
    return np.clip((x - lo) / (hi - lo), 0, 1).astype(np.float32)


def _blob(an: Anatomy, cx: float, cy: float, w: float, h: float, rng: np.random.Generator,
          n: int = 5) -> np.ndarray:
    """A soft irregular blob in [0, 1] (max 1): a sum of ``n`` Gaussians scattered inside the box."""
    out = np.zeros((an.S, an.S), np.float32)
    for _ in range(n):
        px, py = cx + rng.uniform(-0.3, 0.3) * w, cy + rng.uniform(-0.3, 0.3) * h
        sx, sy = max(w * rng.uniform(0.2, 0.4), 1.5), max(h * rng.uniform(0.2, 0.4), 1.5)
        out += np.exp(-(((an.xx - px) / sx) ** 2 + ((an.yy - py) / sy) ** 2) / 2)
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


def _heart_box(rng: np.random.Generator, cls: str, an: Anatomy) -> tuple[float, float, float, float]:
    """A VinDr box of ``cls`` (heart units) mapped onto the reference heart, in pixels."""
    boxes = finding_boxes()[f"vindr:{cls}"]
    rx, ry, rw, rh = boxes[rng.integers(len(boxes))]
    hcx, hcy, hw, hh = an.heart
    return hcx + rx * hw, hcy + ry * hh, max(rw * hw, 3.0), max(rh * hh, 3.0)


def _clip_to(box: tuple[float, float, float, float], region: np.ndarray) -> tuple[float, float, float, float]:
    """Move a box's centre to the nearest pixel of ``region`` when it falls outside it."""
    cx, cy, w, h = box
    S = region.shape[0]
    ix, iy = int(np.clip(cx, 0, S - 1)), int(np.clip(cy, 0, S - 1))
    if region[iy, ix]:
        return cx, cy, w, h
    ys, xs = np.nonzero(region)
    i = np.argmin((xs - cx) ** 2 + (ys - cy) ** 2)
    return float(xs[i]), float(ys[i]), w, h


def _rim_depth(lung: np.ndarray) -> np.ndarray:
    """Distance (px) of each lung pixel from the lung's border: the pleural rim's coordinate."""
    return cv2.distanceTransform(lung.astype(np.uint8), cv2.DIST_L2, 3)


def _lung_opacity_layer(an: Anatomy, rng: np.random.Generator, box, strength: float, n: int,
                        bronchogram: bool = False) -> Layer:
    """The airspace blob shared by Lung Opacity, Pneumonia and Consolidation."""
    cx, cy, w, h = box
    w, h = max(w, 0.08 * an.W), max(h, 0.08 * an.H)
    b = _blob(an, cx, cy, w, h, rng, n) * an.lungs
    prof = _ramp(b, 0.2, 0.7)
    if bronchogram:
        air = np.zeros((an.S, an.S), np.uint8)
        for _ in range(3):
            a0 = rng.uniform(0, np.pi)
            p = np.array([[cx, cy], [cx + np.cos(a0) * w / 2, cy + np.sin(a0) * h / 2]], np.int32)
            cv2.polylines(air, [p], False, 1, 1)
        prof = prof * np.where(air > 0, 0.4, 1.0)
    return Layer(b > 0.2, add=strength * prof)


# --------------------------------------------------------------------------------------
# One drawer per finding
# --------------------------------------------------------------------------------------


def draw_enlarged_cardiomediastinum(an: Anatomy, rng: np.random.Generator, c: float) -> Layer:
    """Widened upper mediastinum plus an aortic knob (VinDr 'Aortic enlargement' box); ``c``
    scales the widening (1 + c * U(0.6, 1.1) times the patient's mediastinal width)."""
    cx, cy, w, h = _heart_box(rng, "Aortic enlargement", an)
    wide_w = an.med_w * (1 + c * rng.uniform(0.6, 1.1))
    top = min(cy - h / 2, an.y0 + 0.1 * an.H)
    below = an.yy < an.heart[1]
    wide = (np.abs(an.xx - an.mid) < wide_w / 2) & (an.yy > top) & below
    k = 0.5 + 0.5 * c
    knob = _ellipse_mask(an.S, max(cx, an.mid + an.med_w / 2), cy,
                         k * max(w / 2, 0.05 * an.W), k * max(h / 2, 0.05 * an.H))
    extra = (wide | (knob & below)) & ~an.med & an.body
    return Layer(extra, alpha=1.0, value=0.68)


def draw_cardiomegaly(an: Anatomy, rng: np.random.Generator, c: float) -> Layer:
    """The heart grown, same centre and angle, from the patient's normal CTR towards
    their cardiomegaly CTR (:data:`CTR_CARDIOMEGALY`, same ``z``) by the fraction
    ``c``."""
    ctr1 = CTR_CARDIOMEGALY[0] + CTR_CARDIOMEGALY[1] * an.ctr_z
    scale = (an.ctr + c * (ctr1 - an.ctr)) / an.ctr
    big = an.heart_mask(scale)
    return Layer(big & ~an.heart_mask(), alpha=1.0, value=0.7, region=big)


def draw_fracture(an: Anatomy, rng: np.random.Generator, c: float) -> Layer:
    """A gap and a step in one rib; ``c`` scales the change of rib contrast."""
    pts = an.rib_lines[rng.integers(2, len(an.rib_lines))]
    bx, by = pts[rng.integers(10, 22)]
    r = max(4, an.S // 32)
    xx, yy = an.xx, an.yy
    ribs = an.ribs.copy()
    ribs[(np.abs(xx - bx) <= r * 0.6) & (np.abs(yy - by) <= r * 1.5)] = 0
    box = (xx > bx) & (np.abs(xx - bx) < 4 * r) & (np.abs(yy - by) < 3 * r)
    step = max(2, round(4 * an.S / 224))
    shifted = np.roll(ribs * box, step, axis=0)
    ribs = np.maximum(ribs * ~box, shifted)
    delta = (0.1 * c * (ribs.astype(np.float32) - an.ribs) * an.body).astype(np.float32)
    region = _ellipse_mask(an.S, bx, by, 2.5 * r, 2.5 * r) & an.body
    return Layer(delta != 0, add=delta, region=region)


def draw_pneumothorax(an: Anatomy, rng: np.random.Generator, c: float) -> Layer:
    """A lateral/apical rim of one lung turned to air (no vessels) with a visible pleural line;
    ``c`` is the blend weight towards air and scales the line."""
    cx, cy, w, h = _sample_box(rng, "Pneumothorax", an.S, an.lungs)
    lung = an.right_lung if cx < an.mid else an.left_lung
    d = _rim_depth(lung)
    depth = rng.uniform(0.05, 0.1) * an.W
    vert = an.yy < an.y0 + rng.uniform(0.45, 0.8) * an.H
    ptx = lung & (d < depth) & vert
    line = lung & (np.abs(d - depth) < 0.8) & vert
    return Layer(ptx | line, alpha=np.where(ptx, c, 0.0), value=0.05, add=np.where(line, 0.25 * c, 0.0))


def draw_lung_opacity(an: Anatomy, rng: np.random.Generator, c: float) -> Layer:
    """An airspace blob at a NIH 'Infiltrate' box, 5 Gaussians, strength c * U(0.18, 0.28)."""
    box = _sample_box(rng, "Infiltrate", an.S, an.lungs)
    return _lung_opacity_layer(an, rng, box, c * rng.uniform(0.18, 0.28), 5)


def draw_pneumonia(an: Anatomy, rng: np.random.Generator, c: float) -> Layer:
    """An airspace blob at a NIH 'Pneumonia' box, 6 Gaussians, strength c * U(0.22, 0.32)."""
    box = _sample_box(rng, "Pneumonia", an.S, an.lungs)
    return _lung_opacity_layer(an, rng, box, c * rng.uniform(0.22, 0.32), 6)


def draw_consolidation(an: Anatomy, rng: np.random.Generator, c: float) -> Layer:
    """A denser airspace blob at a VinDr 'Consolidation' box with air bronchograms,
    4 Gaussians, strength c * U(0.32, 0.42)."""
    strength = c * rng.uniform(0.32, 0.42)
    box = _clip_to(_heart_box(rng, "Consolidation", an), an.lungs)
    return _lung_opacity_layer(an, rng, box, strength, 4, bronchogram=True)


def draw_edema(an: Anatomy, rng: np.random.Generator, c: float) -> Layer:
    """A bilateral perihilar haze (the airspace blob, one per lung, 6 Gaussians each) with
    Kerley B lines at the lung bases; strength c * U(0.14, 0.2)."""
    strength = c * rng.uniform(0.14, 0.2)
    haze = np.zeros((an.S, an.S), np.float32)
    for side in (-1, 1):
        haze += _blob(an, an.mid + side * 0.2 * an.W, an.y0 + 0.5 * an.H, 0.35 * an.W, 0.5 * an.H, rng, 6)
    haze = np.clip(haze, 0, 1) * an.lungs
    kerley = np.zeros((an.S, an.S), np.float32)
    for side in (-1, 1):
        for _ in range(4):
            y = an.y0 + rng.uniform(0.65, 0.9) * an.H
            x = an.mid + side * rng.uniform(0.35, 0.45) * an.W
            cv2.line(kerley, (int(x), int(y)), (int(x + side * 4), int(y)), 0.08, 1)
    kerley *= an.lungs
    add = strength * _ramp(haze, 0.2, 0.7) + c * kerley
    return Layer((haze > 0.2) | (kerley > 0), add=add)


def draw_atelectasis(an: Anatomy, rng: np.random.Generator, c: float) -> Layer:
    """A thin basal band (plate atelectasis) at a NIH 'Atelectasis' box; strength c * U(0.25, 0.35)."""
    cx, cy, w, h = _sample_box(rng, "Atelectasis", an.S, an.lungs & (an.yy > an.y0 + 0.45 * an.H))
    band = _ellipse_mask(an.S, cx, cy, max(w / 2, 0.12 * an.W), max(an.S // 70, 2), rng.uniform(-20, 20))
    soft = cv2.GaussianBlur(band.astype(np.float32), (0, 0), 1.0) * an.lungs
    strength = c * rng.uniform(0.25, 0.35)
    return Layer(soft > 0.05, add=strength * _ramp(soft, 0.05, 0.6))


def draw_lung_lesion(an: Anatomy, rng: np.random.Generator, c: float) -> Layer:
    """A dense round nodule (NIH 'Nodule' box) or mass (NIH 'Mass' box, 40%); strength
    c * U(0.38, 0.48)."""
    kind = "Mass" if rng.random() < 0.4 else "Nodule"
    cx, cy, w, h = _sample_box(rng, kind, an.S, an.lungs)
    S = an.S
    r = np.clip(min(w, h) / 2, S / 30, S / 12) if kind == "Mass" else rng.uniform(S / 45, S / 28)
    disk = _ellipse_mask(S, cx, cy, r, r * rng.uniform(0.85, 1.15))
    soft = cv2.GaussianBlur(disk.astype(np.float32), (0, 0), 0.8) * an.lungs
    strength = c * rng.uniform(0.38, 0.48)
    return Layer(soft > 0.05, add=strength * _ramp(soft, 0.05, 0.5))


def draw_pleural_effusion(an: Anatomy, rng: np.random.Generator, c: float) -> Layer:
    """Fluid filling one lung base (both in 35%) up to a meniscus; blended towards 0.62 with
    weight ``c`` at the fluid's core."""
    cx, cy, w, h = _sample_box(rng, "Effusion", an.S, an.lungs)
    sides = [an.right_lung if cx < an.mid else an.left_lung]
    if rng.random() < 0.35:
        sides = [an.right_lung, an.left_lung]
    eff = np.zeros((an.S, an.S), bool)
    for lung in sides:
        ly1 = np.nonzero(lung)[0].max()  # the lung's lowest row
        level = ly1 - rng.uniform(0.15, 0.35) * an.H
        t = np.abs(an.xx - an.mid) / (0.5 * an.W)
        eff |= lung & (an.yy > level - 0.12 * an.H * t ** 2)  # higher laterally: the meniscus sign
    soft = cv2.GaussianBlur(eff.astype(np.float32), (0, 0), 1.2) * an.lungs
    return Layer(soft > 0.02, alpha=c * _ramp(soft, 0.02, 0.9), value=0.62)


def draw_pleural_other(an: Anatomy, rng: np.random.Generator, c: float) -> Layer:
    """Pleural thickening: a bright rim along the lateral lung border at a VinDr 'Pleural
    thickening' box, 3.5-6 px thick (at 224 px); adds c * 0.35."""
    cx, cy, w, h = _clip_to(_heart_box(rng, "Pleural thickening", an), an.lungs)
    lung = an.right_lung if cx < an.mid else an.left_lung
    d = _rim_depth(lung)
    thick = lung & (d < rng.uniform(3.5, 6) * an.S / 224) & (np.abs(an.yy - cy) < max(h, 0.2 * an.H) / 2) \
        & (np.abs(an.xx - an.mid) > 0.2 * an.W)
    return Layer(thick, add=0.35 * c)


def draw_support_devices(an: Anatomy, rng: np.random.Generator, c: float) -> Layer:
    """One or two of: pacemaker with lead, central line, tracheal tube, ECG wires; metal
    (blended towards 0.97 with weight ``c``)."""
    S, W, H, mid = an.S, an.W, an.H, an.mid
    hcx, hcy = an.heart[:2]
    dev = np.zeros((S, S), np.uint8)
    for k in rng.choice(["pacemaker", "line", "tube", "wires"], size=rng.integers(1, 3), replace=False):
        if k == "pacemaker":
            px, py = mid + rng.uniform(0.3, 0.45) * W, an.y0 + rng.uniform(0.0, 0.12) * H
            cv2.rectangle(dev, (int(px - S / 40), int(py - S / 60)), (int(px + S / 40), int(py + S / 60)), 1, -1)
            pts = np.array([[px, py], [mid + 0.15 * W, an.y0 + 0.35 * H], [hcx, hcy]], np.int32)
            cv2.polylines(dev, [pts], False, 1, 1)
        elif k == "line":
            side = rng.choice([-1, 1])
            pts = np.array([[mid + side * 0.35 * W, an.y0 - 0.1 * H], [mid + side * 0.1 * W, an.y0 + 0.05 * H],
                            [mid + 0.02 * W, an.y0 + 0.3 * H]], np.int32)
            cv2.polylines(dev, [pts], False, 1, 1)
        elif k == "tube":
            cv2.line(dev, (int(mid), 0), (int(mid), int(an.y0 + 0.25 * H)), 1, 2)
        else:
            for j in range(5):
                cv2.circle(dev, (int(mid), int(an.y0 + (0.2 + 0.1 * j) * H)), max(2, S // 80), 1, 1)
    dev = dev > 0
    return Layer(dev, alpha=c, value=0.97, region=cv2.dilate(dev.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)


# --------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------

Drawer = Callable[[Anatomy, np.random.Generator, float], Layer]

FINDING_DRAWERS: dict[str, Drawer] = {
    "Enlarged Cardiomediastinum": draw_enlarged_cardiomediastinum,
    "Cardiomegaly": draw_cardiomegaly,
    "Lung Opacity": draw_lung_opacity,
    "Lung Lesion": draw_lung_lesion,
    "Edema": draw_edema,
    "Consolidation": draw_consolidation,
    "Pneumonia": draw_pneumonia,
    "Atelectasis": draw_atelectasis,
    "Pneumothorax": draw_pneumothorax,
    "Pleural Effusion": draw_pleural_effusion,
    "Pleural Other": draw_pleural_other,
    "Fracture": draw_fracture,
    "Support Devices": draw_support_devices,
}
"""Label -> drawer, in CHEXPERT_LABELS order (No Finding is the absence of the others)."""

STAGES = ("mediastinum", "heart", "bone", "air", "lung", "pleura", "device")
"""Depth order of compositing: anatomy and findings are painted stage by stage."""

FINDING_STAGE: dict[str, str] = {
    "Enlarged Cardiomediastinum": "mediastinum", "Cardiomegaly": "heart", "Lung Opacity": "lung",
    "Lung Lesion": "lung", "Edema": "lung", "Consolidation": "lung", "Pneumonia": "lung",
    "Atelectasis": "lung", "Pneumothorax": "air", "Pleural Effusion": "pleura",
    "Pleural Other": "pleura", "Fracture": "bone", "Support Devices": "device",
}
"""Label -> compositing stage (see :data:`STAGES`)."""

DRAWING_FAMILY: dict[str, str] = {
    "Enlarged Cardiomediastinum": "mediastinal widening",
    "Cardiomegaly": "cardiac silhouette",
    "Lung Opacity": "airspace blob",
    "Lung Lesion": "round dense disk",
    "Edema": "airspace blob (bilateral haze)",
    "Consolidation": "airspace blob",
    "Pneumonia": "airspace blob",
    "Atelectasis": "thin basal band",
    "Pneumothorax": "lung-border rim",
    "Pleural Effusion": "basal fluid level",
    "Pleural Other": "lung-border rim",
    "Fracture": "rib break",
    "Support Devices": "metal overlay",
}
"""Which findings share drawing code. Lung Opacity, Pneumonia and Consolidation are the same
airspace blob (:func:`_lung_opacity_layer`), differing in box source, number of Gaussians,
strength and (Consolidation) air bronchograms; Edema is built from the same Gaussian blob
primitive (:func:`_blob`), bilateral and with Kerley lines; Pneumothorax (dark) and Pleural
Other (bright) are both bands along the lung border (:func:`_rim_depth`)."""
