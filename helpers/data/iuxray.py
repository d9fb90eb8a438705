"""IU-Xray reports -> one row per image with labels -> report-level stratified split.

Inputs ship inside the ``torchxrayvision`` package (or are given as paths):

* ``NLMCXR_reports.tgz``: 3,955 report XMLs (FINDINGS / IMPRESSION text, MeSH terms and
  the ids of the report's images);
* ``nlmcxr_dicom_metadata.csv.gz``: DICOM header fields per image (``View Position``,
  ``Patient Orientation``, ...);
* ``nlmcxr_tsne_pa.csv.gz``: a frontal/lateral call per image derived from the pixels
  (t-SNE clustering by the torchxrayvision authors).

Everything that cannot be used is counted, never silently dropped: see
:class:`LoadReport`.
"""

from __future__ import annotations

import logging
import os
import re
import tarfile
import warnings
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from helpers.data import labels as L
from helpers.config import data_dir
from helpers.data.frames import decode, encode
from helpers.storage import (
    CacheIntegrityError,
    CacheMissWarning,
    _verified_bytes,
    atomic_write_bytes,
    atomic_write_csv,
    frame_hash,
    read_cache,
    read_csv_cache,
    sha256_bytes,
    sha256_file,
    write_cache_bytes,
    write_csv_cache,
)

log = logging.getLogger(__name__)

LABEL_TABLE_VERSION = "2"
"""Version of the label table's layout and rules (2: one selected frontal per report,
CheXpert-conformant labels); part of :attr:`LabelTable.hash`, so every stamp and cache keyed
on the table changes with it."""

FRONTAL_VIEWS = ("PA", "AP", "FRONTAL")
"""View values that are frontal: PA, AP, and frontal with PA/AP unknown (``FRONTAL``)."""
VIEW_VALUES = ("PA", "AP", "FRONTAL", "LATERAL", "UNKNOWN")
VIEW_ALIASES = {"frontal": FRONTAL_VIEWS, "frontal-any": FRONTAL_VIEWS, "lateral": ("LATERAL",),
                "all": VIEW_VALUES}
"""Names accepted by ``views`` besides the view values (see :func:`view_mask`):

* ``frontal``: the selected frontal image of each report (:func:`select_frontals`), the study;
* ``frontal-any``: every image any evidence calls frontal (before selection);
* ``lateral``: every lateral image;
* ``all``: every image of every report, whatever its view: selected frontals, frontal
  candidates that lost the selection, laterals and unknowns (a multi-view set; a report
  then contributes all its images, kept together by the report-level split).

A view value (``PA``, ``AP``, ``FRONTAL``) means the selected frontals with that view;
``LATERAL`` and ``UNKNOWN`` mean the images with that view."""

EVIDENCE_RANK = {"pixels": 3, "dicom": 2, "orientation": 1, "report-pair": 0, "none": -1}
"""Strength of the evidence behind an image's view (``view_source``): the pixel-derived
call beats the DICOM View Position tag, which beats Patient Orientation, which beats the
other image of a two-image report."""

SELECTION_RULES = ("only candidate", "stronger evidence", "tie: first image id",
                   "several pixel-confirmed", "no frontal candidate")
"""What decided a report's frontal image(s), per report (see :func:`select_frontals`)."""


def package_file(name: str) -> Path:
    """Path of a data file shipped inside ``torchxrayvision/data``.

    The package is located, not imported: importing ``torchxrayvision`` runs
    ``warnings.filterwarnings("ignore")`` for the whole process, which would hide every later
    warning (cache rebuilds, skipped files) from the pages and the console."""
    import importlib.util

    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"torchxrayvision is not installed, so its data file {name} cannot be found; "
                                f"install the project's dependencies (make setup), or give the file's path")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / name


MAX_REPORT_BYTES = 1 << 20
"""Largest report XML member read from an archive (1 MiB; IU-Xray's are a few KB). A larger
member is refused before it is read, so a hostile archive cannot fill the memory."""


@dataclass
class LoadReport:
    """What the loader saw: counts of everything kept, repaired or left out."""

    archive: str
    archive_sha256: str
    n_xml: int = 0
    n_reports: int = 0
    malformed: list[str] = field(default_factory=list)
    reports_without_text: list[str] = field(default_factory=list)
    reports_without_images: list[str] = field(default_factory=list)
    images_without_report: list[str] = field(default_factory=list)
    images_without_metadata: list[str] = field(default_factory=list)

    def summary(self) -> pd.DataFrame:
        """A two-column table (what, count) for the book."""
        rows = [
            ("report XML files in the archive", self.n_xml),
            ("malformed XML (skipped)", len(self.malformed)),
            ("reports parsed", self.n_reports),
            ("reports with no FINDINGS and no IMPRESSION text", len(self.reports_without_text)),
            ("reports with no image", len(self.reports_without_images)),
            ("images in the DICOM metadata but in no report", len(self.images_without_report)),
            ("report images missing from the DICOM metadata", len(self.images_without_metadata)),
        ]
        return pd.DataFrame(rows, columns=["what", "count"])


def _text(el: ET.Element | None) -> str:
    return " ".join((el.text or "").split()) if el is not None else ""


def parse_report(xml_bytes: bytes, name: str) -> dict:
    """One report XML -> dict(report_id, findings, impression, indication, mesh, image_ids).

    Raises ``ValueError`` naming ``name`` when the XML cannot be parsed or has no id.
    """
    try:
        root = ET.fromstring(xml_bytes)
    except ET.ParseError as e:
        raise ValueError(f"{name}: malformed report XML ({e})") from None
    uid = root.find("uId")
    if uid is None or not uid.get("id"):
        raise ValueError(f"{name}: report XML has no <uId id=...>")
    if not re.search(r"\d", uid.get("id")):
        raise ValueError(f"{name}: report id {uid.get('id')!r} has no number; expected an IU-Xray id such as "
                         f"'CXR123' (reports are ordered by their number)")
    sections = {a.get("Label", "").upper(): _text(a) for a in root.iter("AbstractText")}
    return {
        "report_id": uid.get("id"),
        "findings": sections.get("FINDINGS", ""),
        "impression": sections.get("IMPRESSION", ""),
        "indication": sections.get("INDICATION", ""),
        "mesh": ";".join(_text(m) for m in root.findall("./MeSH/major")),
        "image_ids": [p.get("id") for p in root.findall("parentImage") if p.get("id")],
    }


class _Refused(Exception):
    """An archive refused as a whole (not one malformed report)."""


def load_reports(archive: str | os.PathLike | None = None) -> tuple[pd.DataFrame, LoadReport]:
    """Read every report XML from the IU-Xray ``.tgz`` archive.

    Parameters
    ----------
    archive : path to ``NLMCXR_reports.tgz``; ``None`` uses the copy in torchxrayvision.

    Returns
    -------
    reports : DataFrame, one row per report (report_id, findings, impression, indication,
        mesh, image_ids as a list), sorted by numeric report id.
    report : :class:`LoadReport` with the counts of malformed and empty reports.

    A malformed XML, or one whose ``<uId>`` is missing or has no number, is skipped with a warning
    naming it (and counted). Raises ``ValueError`` naming the archive and member(s) for a member
    larger than :data:`MAX_REPORT_BYTES` (refused unread) and for two XML files with the same
    report id.
    """
    path = Path(archive) if archive is not None else package_file("NLMCXR_reports.tgz")
    if not path.is_file():
        raise FileNotFoundError(
            f"report archive not found: {path} (expected the IU-Xray NLMCXR_reports.tgz; "
            f"it ships with torchxrayvision, or run `python -m helpers.data.download`)")
    try:
        tar = tarfile.open(path, "r:gz")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ValueError(f"cannot read report archive {path}: {e} "
                         f"(expected a gzipped tar of report XMLs)") from None
    rep = LoadReport(archive=str(path), archive_sha256=sha256_file(path, 12))
    rows = []
    seen: dict[str, str] = {}  # report id -> the member that holds it
    try:
        with tar:
            for member in tar:
                if not (member.isfile() and member.name.endswith(".xml")):
                    continue
                rep.n_xml += 1
                if member.size > MAX_REPORT_BYTES:
                    raise _Refused(f"report archive {path}: member {member.name} is {member.size:,} bytes, more "
                                   f"than any report XML ({MAX_REPORT_BYTES:,} bytes at most); refused unread. "
                                   f"Expected IU-Xray's NLMCXR_reports.tgz (report XMLs of a few KB)")
                try:
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    row = parse_report(data, member.name)
                    if row["report_id"] in seen:
                        raise _Refused(f"report archive {path}: {seen[row['report_id']]} and {member.name} both "
                                       f"have report id {row['report_id']!r}; expected one XML per report")
                    seen[row["report_id"]] = member.name
                    rows.append(row)
                except ValueError as e:
                    rep.malformed.append(member.name)
                    warnings.warn(f"skipped {e}", stacklevel=2)
    except _Refused as e:
        raise ValueError(str(e)) from None
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise ValueError(f"cannot read report archive {path}: it is truncated or corrupt after {rep.n_xml} "
                         f"XML file(s) ({type(e).__name__}: {e or 'unexpected end of data'}); expected a complete "
                         f"gzipped tar of report XMLs (re-fetch it with `python -m helpers.data.download reports`)") from None
    if not rows:
        raise ValueError(f"report archive {path} holds no well-formed report XML ({rep.n_xml} .xml file(s), "
                         f"{len(rep.malformed)} malformed); expected IU-Xray report XMLs with <uId id=...>")
    df = pd.DataFrame(rows)
    df["_n"] = df.report_id.str.extract(r"(\d+)", expand=False).astype(int)
    df = df.sort_values("_n").drop(columns="_n").reset_index(drop=True)
    rep.n_reports = len(df)
    no_text = (df.findings.str.len() == 0) & (df.impression.str.len() == 0)
    rep.reports_without_text = df.report_id[no_text].tolist()
    rep.reports_without_images = df.report_id[df.image_ids.str.len() == 0].tolist()
    return df, rep


def load_metadata(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """DICOM header fields per image, plus the pixel-derived frontal/lateral call.

    Returns a frame indexed by image id with columns ``dicom_view`` (raw View Position),
    ``orientation`` (raw Patient Orientation), ``rows``, ``columns``, ``tsne_view``.
    """
    p = Path(path) if path is not None else package_file("nlmcxr_dicom_metadata.csv.gz")
    if not p.is_file():
        raise FileNotFoundError(f"DICOM metadata not found: {p} (expected nlmcxr_dicom_metadata.csv.gz)")
    m = pd.read_csv(p, usecols=["imageid", "View Position", "Patient Orientation", "Rows", "Columns"])
    m = m.rename(columns={"imageid": "image_id", "View Position": "dicom_view",
                          "Patient Orientation": "orientation", "Rows": "rows", "Columns": "columns"})
    tsne_path = package_file("nlmcxr_tsne_pa.csv.gz")
    if tsne_path.is_file():
        t = pd.read_csv(tsne_path).rename(columns={"imageid": "image_id", "tsne-view": "tsne_view"})
        m = m.merge(t, on="image_id", how="left")
    else:
        m["tsne_view"] = np.nan
    return m.set_index("image_id")


_DICOM_VIEW = {"PA": "PA", "AP": "AP", "LL": "LATERAL", "RL": "LATERAL", "LATERAL": "LATERAL",
               "LARGE LATERAL": "LATERAL"}


def infer_views(images: pd.DataFrame) -> pd.DataFrame:
    """Fill in each image's view, recording where the answer came from.

    Rules, first that applies wins (``view_source``):

    1. ``pixels``: the pixel-derived frontal/lateral call shipped with torchxrayvision
       (a t-SNE clustering of the images; its authors note that the DICOM view tags are
       noisy and that this call is of higher quality). PA -> ``FRONTAL``, L -> ``LATERAL``;
       where the DICOM tag agrees that the image is frontal, its PA/AP value is kept.
    2. ``dicom``: the DICOM View Position (PA, AP; LL/RL/LATERAL -> LATERAL).
    3. ``orientation``: DICOM Patient Orientation: ['L','F'] or ['R','F'] is frontal
       (``FRONTAL``: PA or AP unknown); ['A','F'] or ['P','F'] is lateral.
    4. ``report-pair``: in a two-image report whose other image is known, the unknown one is
       the other kind (a frontal + lateral exam).
    5. ``none``: ``UNKNOWN``.

    ``images`` needs columns image_id, report_id, dicom_view, orientation, tsne_view.
    Returns a copy with ``view`` and ``view_source``.
    """
    df = images.reset_index(drop=True)
    view = pd.Series("UNKNOWN", index=df.index, dtype=object)
    src = pd.Series("none", index=df.index, dtype=object)

    dv = df.dicom_view.map(_DICOM_VIEW)
    px = df.tsne_view.map({"PA": "FRONTAL", "L": "LATERAL"})
    m = px.notna()
    view[m], src[m] = px[m], "pixels"
    keep_tag = m & (px == "FRONTAL") & dv.isin(["PA", "AP"])
    view[keep_tag] = dv[keep_tag]

    m = (src == "none") & dv.notna()
    view[m], src[m] = dv[m], "dicom"

    ori = df.orientation.fillna("")
    fr = ori.str.contains(r"\['[LR]', 'F'\]", regex=True)
    la = ori.str.contains(r"\['[AP]', 'F'\]", regex=True)
    m = (src == "none") & fr
    view[m], src[m] = "FRONTAL", "orientation"
    m = (src == "none") & la
    view[m], src[m] = "LATERAL", "orientation"

    df["view"], df["view_source"] = view, src
    unknown = df.view == "UNKNOWN"
    size = df.groupby("report_id").image_id.transform("size")
    n_unknown = unknown.groupby(df.report_id).transform("sum")
    pair = unknown & (size == 2) & (n_unknown == 1)
    partner = df[~unknown].groupby("report_id").view.first()
    other = df.report_id[pair].map(partner).isin(FRONTAL_VIEWS).map({True: "LATERAL",
                                                                     False: "FRONTAL"})
    df.loc[pair, "view"] = other
    df.loc[pair, "view_source"] = "report-pair"
    return df


def _natural_key(image_id: str) -> tuple:
    """Sort key that orders ``-4004`` before ``-12012`` (numbers compared as numbers)."""
    return tuple(int(x) if x.isdigit() else x for x in re.split(r"(\d+)", image_id))


def _select_in_report(cand: pd.DataFrame) -> tuple[list[str], str]:
    """(selected image ids, rule) among one report's frontal candidates."""
    if len(cand) == 1:
        return [cand.image_id.iloc[0]], SELECTION_RULES[0]
    rank = cand.view_source.map(EVIDENCE_RANK)
    best = cand[rank == rank.max()]
    if rank.max() == EVIDENCE_RANK["pixels"] and len(best) > 1:
        return sorted(best.image_id), SELECTION_RULES[3]
    if len(best) == 1:
        return [best.image_id.iloc[0]], SELECTION_RULES[1]
    return [min(best.image_id, key=_natural_key)], SELECTION_RULES[2]


def select_frontals(images: pd.DataFrame) -> pd.DataFrame:
    """Choose each report's frontal image: one per report unless pixels say otherwise.

    Among a report's frontal candidates (images whose inferred ``view`` is PA, AP or
    FRONTAL), the strongest evidence wins (:data:`EVIDENCE_RANK`: pixels over DICOM tags
    over orientation over report pairing): a DICOM-only "PA" beside a pixel-confirmed
    frontal is dropped. Ties at equal evidence go to the first image id in natural order
    (the first exposure; in the reports where pixels identify the frontal, it is the
    first id in nearly all). Several candidates all confirmed by pixels are all kept.

    ``images`` needs image_id, report_id, view, view_source. Returns a copy with
    ``frontal_selected`` (bool) and ``view_rule`` (the :data:`SELECTION_RULES` entry that
    decided the image's report; "no frontal candidate" where it has none).
    """
    df = images.copy()
    cand = df[df.view.isin(FRONTAL_VIEWS)]
    chosen: set[str] = set()
    rules: dict[str, str] = {}
    for rid, g in cand.groupby("report_id", sort=False):
        ids, rules[rid] = _select_in_report(g)
        chosen.update(ids)
    df["frontal_selected"] = df.image_id.isin(chosen)
    df["view_rule"] = [rules.get(r, SELECTION_RULES[4]) for r in df.report_id]
    return df


def view_audit(images: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Counts that show what view inference and frontal selection did.

    Returns three tables:

    * ``by_source``: images by inferred view (rows) and evidence source (columns), totals;
    * ``per_report``: reports (with at least one image) with 0, 1, 2+ frontal images and
      the number of frontal images, before selection (every frontal candidate) and after;
    * ``rules``: per selection rule, the reports it decided and the frontal candidates it
      kept and dropped.
    """
    by_source = pd.crosstab(images.view, images.view_source, margins=True, margins_name="total")
    reports = images.report_id.unique()
    cols = {}
    for name, mask in (("before selection", images.view.isin(FRONTAL_VIEWS)),
                       ("after selection", images.frontal_selected)):
        n = images[mask].groupby("report_id").size().reindex(reports, fill_value=0)
        cols[name] = {"reports with 0 frontal images": int((n == 0).sum()),
                      "reports with 1 frontal image": int((n == 1).sum()),
                      "reports with 2+ frontal images": int((n >= 2).sum()),
                      "frontal images": int(n.sum())}
    per_report = pd.DataFrame(cols)
    cand = images[images.view.isin(FRONTAL_VIEWS)]
    rules = pd.DataFrame({
        "reports": images.groupby("view_rule").report_id.nunique(),
        "frontal kept": cand[cand.frontal_selected].groupby("view_rule").size(),
        "frontal dropped": cand[~cand.frontal_selected].groupby("view_rule").size(),
    }).reindex(list(SELECTION_RULES)).fillna(0).astype(int)
    return {"by_source": by_source, "per_report": per_report, "rules": rules}


def label_reports(reports: pd.DataFrame, labeler: L.ReportLabeler | None = None) -> pd.DataFrame:
    """Three-valued text labels and binary MeSH labels for every report.

    Returns ``reports`` with 14 columns ``text:<label>`` (1, 0, -1, NaN) from the report text
    (FINDINGS + IMPRESSION) and 14 columns ``mesh:<label>`` (0/1) from the MeSH terms.
    """
    labeler = labeler or L.ReportLabeler()
    text = (reports.findings.fillna("") + " " + reports.impression.fillna("")).str.strip()
    raw = labeler.label_many(text.tolist())
    raw.columns = [f"text:{c}" for c in raw.columns]
    mesh = pd.DataFrame([L.mesh_labels([t for t in s.split(";") if t]) for s in reports.mesh])
    mesh = mesh[list(L.CHEXPERT_LABELS)]
    mesh.columns = [f"mesh:{c}" for c in mesh.columns]
    return pd.concat([reports.reset_index(drop=True), raw, mesh], axis=1)


@dataclass
class LabelTable:
    """The study's label table and how it was made.

    ``images`` has one row per image: image_id, report_id, view, view_source, findings,
    impression, mesh, the 14 binary labels (named as in :data:`labels.CHEXPERT_LABELS`),
    ``text:<label>`` three-valued labels and ``mesh:<label>`` MeSH labels.
    ``reports`` has one row per report (including those with no image).
    """

    images: pd.DataFrame
    reports: pd.DataFrame
    load_report: LoadReport
    uncertain_policy: str
    hash: str

    @property
    def labels(self) -> list[str]:
        return list(L.CHEXPERT_LABELS)


def build_label_table(reports_path: str | os.PathLike | None = None,
                      metadata_path: str | os.PathLike | None = None,
                      uncertain_policy: str = "positive",
                      cache_dir: str | os.PathLike | None = None) -> LabelTable:
    """Reports + metadata -> :class:`LabelTable` (cached on disk, keyed by inputs and rules).

    Parameters
    ----------
    reports_path, metadata_path : archives; ``None`` uses the copies in torchxrayvision.
    uncertain_policy : how uncertain mentions become binary labels (see :func:`labels.binarize`).
    cache_dir : where the labelled report table is cached; default ``data_dir()/cache``.
    """
    if uncertain_policy not in L.UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain_policy={uncertain_policy!r} is not valid; "
                         f"expected one of {L.UNCERTAIN_POLICIES}")
    reports, rep = load_reports(reports_path)
    cache = Path(cache_dir) if cache_dir is not None else data_dir() / "cache"
    key = f"{rep.archive_sha256}-{L.ReportLabeler.fingerprint()}"
    cpath = cache / f"report_labels-{key}.csv"
    label_cols = [f"{p}:{c}" for p in ("text", "mesh") for c in L.CHEXPERT_LABELS]

    def usable(c: pd.DataFrame) -> str | None:  # the cache's hash is checked by read_csv_cache
        if "report_id" not in c or list(c.report_id) != list(reports.report_id):
            return "its report ids differ from the archive's"
        if not set(label_cols) <= set(c.columns):
            return "label columns are missing"
        text, mesh = c[label_cols[:len(L.CHEXPERT_LABELS)]], c[label_cols[len(L.CHEXPERT_LABELS):]]
        if not ((text.isin([1, 0, -1]) | text.isna()).all().all() and mesh.isin([0, 1]).all().all()):
            return "label values outside {1, 0, -1, empty} (text) or {0, 1} (MeSH)"
        return None

    cached = read_csv_cache(cpath, usable, dtype={"report_id": str})
    if cached is not None:
        labelled = pd.concat([reports, cached[label_cols]], axis=1)
    else:
        labelled = label_reports(reports)
        write_csv_cache(cpath, labelled[["report_id"] + label_cols])

    three = labelled[[f"text:{c}" for c in L.CHEXPERT_LABELS]]
    binary = L.binarize(three.set_axis(list(L.CHEXPERT_LABELS), axis=1), uncertain_policy)
    labelled = pd.concat([labelled, binary], axis=1)

    meta = load_metadata(metadata_path)
    img = labelled[["report_id", "image_ids"]].explode("image_ids").dropna()
    img = img.rename(columns={"image_ids": "image_id"}).reset_index(drop=True)
    rep.images_without_report = sorted(set(meta.index) - set(img.image_id))
    rep.images_without_metadata = sorted(set(img.image_id) - set(meta.index))
    img = img.merge(meta, left_on="image_id", right_index=True, how="left")
    img = select_frontals(infer_views(img))
    keep = ["report_id", "findings", "impression", "mesh"] + list(L.CHEXPERT_LABELS) + label_cols
    images = img[["image_id", "report_id", "view", "view_source", "frontal_selected", "view_rule",
                  "dicom_view", "rows", "columns"]]
    images = images.merge(labelled[keep], on="report_id", how="left").reset_index(drop=True)
    n_img = labelled.image_ids.str.len()
    reports_out = labelled.drop(columns=["image_ids"]).assign(n_images=n_img.values)
    table_hash = sha256_bytes(f"{LABEL_TABLE_VERSION}|{frame_hash(images)}".encode())
    return LabelTable(images=images, reports=reports_out, load_report=rep,
                      uncertain_policy=uncertain_policy, hash=table_hash)


def resolve_views(views: Sequence[str] | str) -> tuple[str, ...]:
    """Normalise view names: aliases (:data:`VIEW_ALIASES`) stay, values are upper-cased.

    Raises ``ValueError`` naming a view that is neither a value nor an alias.
    """
    if isinstance(views, str):
        views = [views]
    out: list[str] = []
    for v in views:
        if v in VIEW_ALIASES:
            out.append(v)
        elif v.upper() in VIEW_VALUES:
            out.append(v.upper())
        else:
            raise ValueError(f"unknown view {v!r}; expected one of {VIEW_VALUES} "
                             f"or an alias {tuple(VIEW_ALIASES)}")
    return tuple(dict.fromkeys(out))


def view_mask(images: pd.DataFrame, views: Sequence[str] | str) -> pd.Series:
    """Boolean mask of the images that ``views`` names (see :data:`VIEW_ALIASES`).

    ``images`` needs view and, for ``frontal`` and the frontal values, ``frontal_selected``
    (added by :func:`select_frontals` when missing and view_source is there).
    """
    if "frontal_selected" not in images.columns:
        images = select_frontals(images)
    sel, view = images.frontal_selected.astype(bool), images.view
    mask = pd.Series(False, index=images.index)
    for v in resolve_views(views):
        if v == "all":
            mask |= True
        elif v == "frontal":
            mask |= sel
        elif v in VIEW_ALIASES:
            mask |= view.isin(VIEW_ALIASES[v])
        elif v in FRONTAL_VIEWS:
            mask |= sel & (view == v)
        else:
            mask |= view == v
    return mask


SPLITS = ("train", "val", "test")


def make_split(images: pd.DataFrame, fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0,
               views: Sequence[str] | str = "frontal",
               label_names: Sequence[str] = L.CHEXPERT_LABELS) -> pd.DataFrame:
    """Report-level multi-label stratified train/val/test split.

    Reports (not images) are assigned to splits, so no report's images appear in two splits.
    Stratification is iterative (Sechidis et al. 2011, ``iterative-stratification``) on the
    report's binary labels, so rare labels are spread over the splits in proportion.

    Parameters
    ----------
    images : one row per image, with report_id, view and the binary label columns.
    fractions : (train, val, test), positive, summing to 1.
    seed : random seed; the same seed gives the same split.
    views : which images take part (view values or aliases, default ``frontal``: each
        report's selected frontal image; see :data:`VIEW_ALIASES`).

    Returns
    -------
    The images of the allowed views with a ``split`` column, ordered by split then image id.
    """
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    fr = np.asarray(fractions, dtype=float)
    if fr.shape != (3,) or (fr <= 0).any() or abs(fr.sum() - 1) > 1e-6:
        raise ValueError(f"fractions={tuple(fractions)} is not valid; expected three positive "
                         f"numbers (train, val, test) summing to 1")
    sel = images[view_mask(images, views).to_numpy()]
    if sel.empty:
        raise ValueError(f"no image matches views={views!r} (see helpers.data.iuxray.VIEW_ALIASES)")
    rep = sel.groupby("report_id", sort=True)[list(label_names)].max()
    y = rep.to_numpy()
    ids = rep.index.to_numpy()
    outer = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=fr[2], random_state=seed)
    trval, test = next(outer.split(np.zeros(len(y)), y))
    inner = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=fr[1] / (fr[0] + fr[1]),
                                             random_state=seed)
    tr, va = next(inner.split(np.zeros(len(trval)), y[trval]))
    assign = pd.Series("", index=ids, dtype=object)
    assign.iloc[trval[tr]] = "train"
    assign.iloc[trval[va]] = "val"
    assign.iloc[test] = "test"
    out = sel.assign(split=sel.report_id.map(assign).values)
    out["split"] = pd.Categorical(out.split, categories=list(SPLITS), ordered=True)
    return out.sort_values(["split", "image_id"]).reset_index(drop=True)


def save_split(split: pd.DataFrame, folder: str | os.PathLike | None = None,
               label_names: Sequence[str] = L.CHEXPERT_LABELS) -> tuple[Path, str]:
    """Save the split (image_id, report_id, view, split, labels) as CSV; return (path, hash).

    The file name carries the content hash, ``split-<hash>.csv``; a ``split.csv`` copy
    points to the latest one.
    """
    folder = Path(folder) if folder is not None else data_dir()
    cols = ["image_id", "report_id", "view", "split"] + list(label_names)
    table = split[cols]
    h = frame_hash(table)
    path = folder / f"split-{h}.csv"
    atomic_write_csv(path, table)
    atomic_write_csv(folder / "split.csv", table)
    return path, h


def split_table(split: pd.DataFrame, label_names: Sequence[str] = L.CHEXPERT_LABELS) -> pd.DataFrame:
    """Per-split counts: reports, images, and positives per label (rows: labels + totals)."""
    out = {}
    for s, g in split.groupby("split", observed=True):
        col = {"reports": g.report_id.nunique(), "images": len(g)}
        col.update({c: int(g[c].sum()) for c in label_names})
        out[s] = col
    return pd.DataFrame(out)


@dataclass
class StudyData:
    """The label table, the split built from it, and the split's content hash."""

    table: LabelTable
    split: pd.DataFrame
    split_path: Path
    split_hash: str


STUDY_DATA_CACHE_VERSION = "1"
"""Layout of the cached study data (:func:`load_study_data`); part of its key."""
_SPLIT_PACKAGES = ("numpy", "pandas", "iterative-stratification", "scikit-learn")
"""Packages whose versions could change the split or the stored frames; part of the key."""


def study_data_inputs(uncertain_policy: str = "positive", seed: int = 0,
                      fractions: Sequence[float] = (0.7, 0.1, 0.2),
                      views: Sequence[str] | str = "frontal",
                      reports_path: str | os.PathLike | None = None) -> dict:
    """Everything the label table, views, frontal selection and split depend on: the bytes of
    the report archive and of the two metadata files (SHA-256), the labeler's rules and version
    (:meth:`labels.ReportLabeler.fingerprint`), this module's code and layout version, the
    parameters, and the versions of the packages in :data:`_SPLIT_PACKAGES`. Costs a few
    milliseconds (three files of about 1 MB hashed); the study-data cache is keyed by it."""
    from importlib import metadata

    archive = Path(reports_path) if reports_path else package_file("NLMCXR_reports.tgz")
    files = {"reports": archive, "dicom_metadata": package_file("nlmcxr_dicom_metadata.csv.gz"),
             "pixel_views": package_file("nlmcxr_tsne_pa.csv.gz")}
    return {
        "cache_version": STUDY_DATA_CACHE_VERSION, "label_table_version": LABEL_TABLE_VERSION,
        "labeler": L.ReportLabeler.fingerprint(), "code": sha256_file(__file__, 16),
        "files": {k: {"path": str(f.resolve()), "sha256": sha256_file(f) if f.is_file() else "missing"}
                  for k, f in files.items()},
        "params": {"uncertain_policy": uncertain_policy, "split_seed": seed,
                   "split_fractions": [float(x) for x in fractions],
                   "views": [views] if isinstance(views, str) else list(views),
                   "reports_path": str(reports_path) if reports_path else None},
        "packages": {p: metadata.version(p) for p in _SPLIT_PACKAGES},
    }


def study_data_cache_path(inputs: dict, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/study_data-<key>.npz``: the key is the SHA-256 of :func:`study_data_inputs`."""
    import json

    key = sha256_bytes(json.dumps(inputs, sort_keys=True).encode(), 16)
    return (Path(cache_dir) if cache_dir is not None else data_dir() / "cache") / f"study_data-{key}.npz"


def _build_study_data(uncertain_policy: str, seed: int, fractions: Sequence[float],
                      views: Sequence[str] | str, reports_path) -> StudyData:
    table = build_label_table(reports_path or None, uncertain_policy=uncertain_policy)
    split = make_split(table.images, fractions=fractions, seed=seed, views=views)
    path, h = save_split(split)
    return StudyData(table=table, split=split, split_path=path, split_hash=h)


def _encode_study_data(sd: StudyData, inputs: dict, replay: list[dict]) -> bytes:
    from dataclasses import asdict


    meta = {"inputs": inputs, "load_report": asdict(sd.table.load_report), "warnings": replay,
            "uncertain_policy": sd.table.uncertain_policy, "table_hash": sd.table.hash,
            "split_hash": sd.split_hash}
    return encode({"images": sd.table.images, "reports": sd.table.reports, "split": sd.split}, meta)


def _decode_study_data(data: bytes, inputs: dict) -> tuple[StudyData, list[dict]]:

    frames, meta = decode(data)
    if meta.get("inputs") != inputs:
        raise CacheIntegrityError("it was built from other inputs")
    table = LabelTable(images=frames["images"], reports=frames["reports"],
                       load_report=LoadReport(**meta["load_report"]),
                       uncertain_policy=meta["uncertain_policy"], hash=meta["table_hash"])
    h = meta["split_hash"]
    return StudyData(table, frames["split"], data_dir() / f"split-{h}.csv", h), meta["warnings"]


def _keep_split_files(sd: StudyData) -> None:
    """What :func:`save_split` leaves, for a split served from the cache: ``split-<hash>.csv``
    (written when missing) and ``split.csv``, the latest split loaded (copied when it differs)."""

    latest = sd.split_path.parent / "split.csv"
    if not sd.split_path.is_file():
        sd.split_path, _ = save_split(sd.split)
        return
    data = sd.split_path.read_bytes()
    if not latest.is_file() or latest.read_bytes() != data:
        atomic_write_bytes(latest, data)


def _replay(recorded: list[dict]) -> None:
    """Raise again the warnings recorded while the study data was built (a skipped report XML),
    so a page served from the cache shows what a fresh build showed."""
    import builtins

    for w in recorded:
        cat = getattr(builtins, w["category"], UserWarning)
        warnings.warn(w["message"], cat if isinstance(cat, type) and issubclass(cat, Warning)
                      else UserWarning, stacklevel=3)


def load_study_data(uncertain_policy: str = "positive", seed: int = 0,
                    fractions: Sequence[float] = (0.7, 0.1, 0.2),
                    views: Sequence[str] | str = "frontal",
                    reports_path: str | os.PathLike | None = None,
                    cache_dir: str | os.PathLike | None = None) -> StudyData:
    """Label table + report-level split, as every chapter uses them (cached, deterministic).

    The split is saved as ``data_dir()/split-<hash>.csv``; the hash goes into page stamps.
    Label table, views, frontal selection and split are cached together in one file,
    ``<cache>/study_data-<key>.npz`` (:mod:`helpers.data.frames`, no pickle; default cache
    ``data_dir()/cache``), keyed by every input they depend on (:func:`study_data_inputs`), so
    another archive, labeler, parameter or package version builds anew. The file is written
    atomically with a SHA-256 beside it and read back only when that hash and its recorded
    inputs match; any other file is a miss, rebuilt with a warning naming it
    (:func:`io.read_cache`). Warnings of the build (a skipped report XML) are recorded and
    raised again on every load served from the cache.
    """

    inputs = study_data_inputs(uncertain_policy, seed, fractions, views, reports_path)
    path = study_data_cache_path(inputs, cache_dir)
    hit = read_cache(path, lambda p: _decode_study_data(_verified_bytes(p), inputs))
    if hit is not None:
        sd, recorded = hit
        _replay(recorded)
        _keep_split_files(sd)
        return sd
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sd = _build_study_data(uncertain_policy, seed, fractions, views, reports_path)
    replay = [{"category": type(w.message).__name__, "message": str(w.message)} for w in caught
              if not issubclass(w.category, CacheMissWarning)]
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    write_cache_bytes(path, _encode_study_data(sd, inputs, replay))
    return sd

