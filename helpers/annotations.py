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

Several rows with the same image and label are united. The seed study's 15 radiologist-annotated
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

from .config import REPO_ROOT
from .labels import CHEXPERT_LABELS

EXAMPLE = REPO_ROOT / "annotations" / "iuxray_example.csv"
COLUMNS = ["image_id", "label", "shape", "points"]
READER = "reader"


class AnnotationError(ValueError):
    """A malformed annotation file; the message names the file and line."""


def _points(text: str) -> list[tuple[float, float]]:
    pts = []
    for p in text.split(";"):
        x, y = p.split(",")
        pts.append((float(x), float(y)))
    return pts


def load_annotations(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate an annotation CSV: columns image_id, label, shape, points (list of (x, y)),
    and ``reader`` when the file has that optional fifth column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    rows = []
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        has_reader = header == COLUMNS + [READER]
        if header != COLUMNS and not has_reader:
            raise AnnotationError(f"{path}, line 1: header must be {','.join(COLUMNS)} (optionally "
                                  f",{READER}), got {header}")
        for n, rec in enumerate(reader, start=2):
            if not rec or all(not x.strip() for x in rec):
                continue
            if len(rec) != len(header):
                raise AnnotationError(f"{path}, line {n}: expected {len(header)} fields, got {len(rec)}")
            iid, label, shape, pts = (x.strip() for x in rec[:4])
            if label not in CHEXPERT_LABELS or label == "No Finding":
                raise AnnotationError(f"{path}, line {n}: unknown label {label!r}")
            try:
                p = _points(pts)
            except ValueError:
                raise AnnotationError(f"{path}, line {n}: points must be 'x,y;x,y;...', got {pts!r}") from None
            if shape == "box" and len(p) != 2 or shape == "polygon" and len(p) < 3:
                raise AnnotationError(f"{path}, line {n}: a {shape} needs {'2' if shape == 'box' else '3 or more'} "
                                      f"points, got {len(p)}")
            if shape not in ("box", "polygon"):
                raise AnnotationError(f"{path}, line {n}: shape must be 'box' or 'polygon', got {shape!r}")
            if any(x < 0 or y < 0 for x, y in p):
                raise AnnotationError(f"{path}, line {n}: negative coordinates {pts!r}")
            rows.append({"image_id": iid, "label": label, "shape": shape, "points": p,
                         **({READER: rec[4].strip()} if has_reader else {})})
    return pd.DataFrame(rows, columns=COLUMNS + ([READER] if has_reader else []))


def rasterize(regions: pd.DataFrame, width: int, height: int) -> np.ndarray:
    """Union of the given rows' shapes as a bool mask (height, width) in original pixels."""
    import cv2

    m = np.zeros((height, width), np.uint8)
    for shape, pts in zip(regions["shape"], regions["points"]):
        a = np.round(np.asarray(pts)).astype(np.int32)
        if shape == "box":
            (x0, y0), (x1, y1) = a.min(0), a.max(0)
            m[y0:y1 + 1, x0:x1 + 1] = 1
        else:
            cv2.fillPoly(m, [a], 1)
    return m.astype(bool)


def region_mask(ann: pd.DataFrame, image_id: str, label: str, image_path: str | os.PathLike,
                size: int, reader: str | None = None) -> np.ndarray:
    """The region of ``label`` on ``image_id`` at the model's input geometry (size, size): drawn
    at the PNG's size, then cropped and resized as the image is (:func:`cam.to_input_geometry`).
    Every reader's regions united, or only ``reader``'s."""
    from PIL import Image

    from .cam import to_input_geometry

    with Image.open(image_path) as im:
        w, h = im.size
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
    from .phantoms import _pkg

    b = pd.read_csv(_pkg("BBox_List_2017.csv.gz"))
    b.columns = ["image_id", "finding", "x", "y", "w", "h", *b.columns[6:]]
    b = b[b.finding.isin(NIH_TO_CHEXPERT)]
    return pd.DataFrame({"image_id": b.image_id.str.replace(".png", "", regex=False),
                         "label": b.finding.map(NIH_TO_CHEXPERT), "shape": "box",
                         "points": [[(x, y), (x + w, y + h)] for x, y, w, h in zip(b.x, b.y, b.w, b.h)]})
