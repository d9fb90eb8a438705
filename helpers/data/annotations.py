"""Ground-truth regions for real images (``full`` profile): a small CSV format and its loader.

One row per region::

    image_id,label,shape,points
    CXR1_1_IM-0001-4001,Cardiomegaly,box,"310,520;760,840"
    CXR1_1_IM-0001-4001,Pleural Effusion,polygon,"120,700;260,690;280,860;110,880"

* ``image_id``: the Open-I image id (the PNG's name without ``.png``);
* ``label``: one of the 14 CheXpert labels (not No Finding);
* ``shape``: ``box`` (two corners ``x0,y0;x1,y1``) or ``polygon`` (three or more ``x,y`` points);
* ``points``: pixel coordinates in the original PNG, ``;`` between points;
* ``reader`` (optional fifth column): who drew the region. With several readers, the ground
  truth is the union of their regions, and chapter 6 reports their agreement as the human
  reference.

Several rows with the same image and label are united. The original study's 15 radiologist-annotated
IU-Xray images go into such a file; ``annotations/iuxray_example.csv`` ships as an example of the
format (its regions are illustrative, not expert annotations). :func:`nih_boxes` converts the
NIH ChestX-ray14 bounding boxes that ship with torchxrayvision into the same frame, as an
optional extra set for readers who have those images.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.config import REPO_ROOT
from helpers.data.labels import CHEXPERT_LABELS
from helpers.phantoms.rendering import _pkg
from helpers.saliency.explain import to_input_geometry

EXAMPLE = REPO_ROOT / "annotations" / "iuxray_example.csv"
COLUMNS = ["image_id", "label", "shape", "points"]
READER = "reader"


class AnnotationError(ValueError):
    """A malformed annotation file; the message names the file and line."""


class AnnotationWarning(UserWarning):
    """Annotation rows that cannot be used (their image id names no image); the message names the
    file, the lines and the ids."""


def report_unknown_images(regions: pd.DataFrame, image_ids) -> pd.DataFrame:
    """The rows of ``regions`` whose ``image_id`` is not in ``image_ids``; when there are any, an
    :class:`AnnotationWarning` names the file, their lines (the first ten) and ids, and what an id
    looks like (the Open-I PNG name without ``.png``), so no row is dropped without a word."""
    known = set(map(str, image_ids))
    bad = regions[~regions.image_id.astype(str).isin(known)]
    if len(bad):
        files = ", ".join(sorted(set(map(str, bad["file"])))) if "file" in bad else "the annotations"
        where = [f"line {ln} ({iid})" for ln, iid in zip(bad.get("line", [None] * len(bad)), bad.image_id)][:10]
        import warnings

        warnings.warn(f"{files}: {len(bad)} annotation row(s) name no image of the study and are not used: "
                      f"{', '.join(where)}{' ...' if len(bad) > 10 else ''}; expected an Open-I image id such as "
                      f"CXR1_1_IM-0001-4001 (the PNG's name without .png)", AnnotationWarning, stacklevel=3)
    return bad


def _points(text: str) -> list[tuple[float, float]]:
    pts = []
    for p in text.split(";"):
        x, y = p.split(",")
        pts.append((float(x), float(y)))
    return pts


def _area(p: list[tuple[float, float]], shape: str) -> float:
    a = np.asarray(p, float)
    if shape == "box":
        return float(abs(a[1, 0] - a[0, 0]) * abs(a[1, 1] - a[0, 1]))
    x, y = a[:, 0], a[:, 1]
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def _row(path: Path, n: int, rec: list[str], has_reader: bool = False) -> dict:
    """One validated CSV record (line ``n``) as a region dict; raises :class:`AnnotationError`."""
    def bad(why: str) -> AnnotationError:
        return AnnotationError(f"{path}, line {n}: {why}")

    width = 5 if has_reader else 4
    if len(rec) != width:
        raise bad(f"expected {width} fields, got {len(rec)}")
    iid, label, shape, pts = (x.strip() for x in rec[:4])
    if not iid:
        raise bad("empty image_id")
    if label not in CHEXPERT_LABELS or label == "No Finding":
        raise bad(f"unknown label {label!r}; expected one of the CheXpert labels but No Finding")
    if shape not in ("box", "polygon"):
        raise bad(f"shape must be 'box' or 'polygon', got {shape!r}")
    try:
        p = _points(pts)
    except ValueError:
        raise bad(f"points must be 'x,y;x,y;...', got {pts!r}") from None
    if not all(np.isfinite(v) for xy in p for v in xy):
        raise bad(f"coordinates must be finite numbers, got {pts!r}")
    if shape == "box" and len(p) != 2 or shape == "polygon" and len(p) < 3:
        raise bad(f"a {shape} needs {'2' if shape == 'box' else '3 or more'} points, got {len(p)}")
    if any(x < 0 or y < 0 for x, y in p):
        raise bad(f"negative coordinates {pts!r}")
    if _area(p, shape) <= 0:
        raise bad(f"the {shape} {pts!r} encloses no area")
    extra = {READER: rec[4].strip()} if has_reader else {}
    return {"image_id": iid, "label": label, "shape": shape, "points": p, **extra, "line": n,
            "file": str(path)}


def load_annotations(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate an annotation CSV.

    Returns one row per region: image_id, label, shape, points (list of (x, y)), ``reader`` when
    the file has that optional fifth column (several readers of the same image: their agreement
    is the human reference of chapter 6), and where it came from (``line``, ``file``). A UTF-8
    byte-order mark (as Excel writes) is accepted. Raises :class:`AnnotationError` naming the
    file and line of the first bad row: wrong header or field count, empty image_id, unknown
    label or shape, unparsable, non-finite or negative coordinates, too few points, or a shape
    with no area. Points beyond the image are refused when the image's size is known
    (:func:`rasterize`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    rows = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, None) or []]
            has_reader = header == COLUMNS + [READER]
            if header != COLUMNS and not has_reader:
                raise AnnotationError(f"{path}, line 1: header must be {','.join(COLUMNS)} "
                                      f"(optionally ,{READER}), got {header}")
            for n, rec in enumerate(reader, start=2):
                if rec and any(x.strip() for x in rec):
                    rows.append(_row(path, n, rec, has_reader))
    except (UnicodeDecodeError, csv.Error) as e:
        raise AnnotationError(f"{path}: not a UTF-8 CSV file ({e})") from None
    return pd.DataFrame(rows, columns=[*COLUMNS, *([READER] if has_reader else []), "line", "file"])


def rasterize(regions: pd.DataFrame, width: int, height: int) -> np.ndarray:
    """Union of the given rows' shapes as a bool mask (height, width) in original pixels.

    Raises :class:`AnnotationError` (naming the file and line when the rows carry them) for a
    point outside the image, ``0 <= x <= width`` and ``0 <= y <= height``: such a region was drawn
    for another image size, and clipping it would silently change it."""
    import cv2

    m = np.zeros((height, width), np.uint8)
    for i, (shape, pts) in enumerate(zip(regions["shape"], regions["points"])):
        a = np.asarray(pts, float)
        if not np.isfinite(a).all() or (a < 0).any() or (a[:, 0] > width).any() or (a[:, 1] > height).any():
            raise AnnotationError(f"{_where(regions, i)}: {shape} {pts} lies (partly) outside the image "
                                  f"({width}x{height} pixels); expected coordinates in pixels of that image")
        a = np.minimum(np.round(a).astype(np.int32), [width - 1, height - 1])
        if shape == "box":
            (x0, y0), (x1, y1) = a.min(0), a.max(0)
            m[y0:y1 + 1, x0:x1 + 1] = 1
        else:
            cv2.fillPoly(m, [a], 1)
    return m.astype(bool)


def _where(regions: pd.DataFrame, i: int) -> str:
    r = regions.iloc[i]
    if "file" in regions and "line" in regions:
        return f"{r['file']}, line {r['line']} ({r['image_id']})"
    return f"region of {r.get('image_id', '?')} ({r.get('label', '?')})"


def region_mask(ann: pd.DataFrame, image_id: str, label: str, image_path: str | os.PathLike,
                size: int, reader: str | None = None) -> np.ndarray:
    """The region of ``label`` on ``image_id`` at the model's input geometry (size, size): drawn
    at the PNG's size, then cropped and resized as the image is (:func:`cam.to_input_geometry`).
    Every reader's regions united, or only ``reader``'s."""
    from PIL import Image


    try:
        with Image.open(image_path) as im:
            w, h = im.size
    except (Exception, MemoryError) as e:  # noqa: BLE001 - unreadable, or a header claiming a huge size
        raise AnnotationError(f"{image_path}: cannot read the size of the annotated image {image_id} "
                              f"({type(e).__name__}: {e}); expected a readable PNG") from None
    sel = (ann.image_id == image_id) & (ann.label == label)
    if reader is not None:
        sel &= ann[READER] == reader
    return to_input_geometry(rasterize(ann[sel], w, h), size)


NIH_TO_CHEXPERT = {"Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Effusion": "Pleural Effusion",
                   "Infiltrate": "Lung Opacity", "Mass": "Lung Lesion", "Nodule": "Lung Lesion",
                   "Pneumonia": "Pneumonia", "Pneumothorax": "Pneumothorax"}


def nih_boxes() -> pd.DataFrame:
    """NIH ChestX-ray14's 984 radiologist boxes (torchxrayvision's ``BBox_List_2017.csv.gz``) in
    this module's frame, labels mapped to CheXpert names (Infiltrate -> Lung Opacity, Mass and
    Nodule -> Lung Lesion)."""

    b = pd.read_csv(_pkg("BBox_List_2017.csv.gz"))
    b.columns = ["image_id", "finding", "x", "y", "w", "h", *b.columns[6:]]
    b = b[b.finding.isin(NIH_TO_CHEXPERT)]
    return pd.DataFrame({"image_id": b.image_id.str.replace(".png", "", regex=False),
                         "label": b.finding.map(NIH_TO_CHEXPERT), "shape": "box",
                         "points": [[(x, y), (x + w, y + h)] for x, y, w, h in zip(b.x, b.y, b.w, b.h)]})
