"""Gather every run's metrics JSON into the study's results table, the original study's values beside.

Chapters write their files through :mod:`helpers.book.artefacts`, one folder per (profile, model):
``zero_shot.json``, ``linear_probe.json``, ``fine_tune.json`` (chapters 2-4),
``embedding_geometry.json`` (chapter 5) and ``reference_scorers.json`` (chapter 2's
image-independent scorers). :func:`gather` reads whatever is there, for every pair, so a
``full`` run (or a second model) drops into the table without code changes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from helpers.analysis.estimate import Estimate, frame_columns, table_record
from helpers.book.artefacts import GEOMETRY_FILE, METRICS_FILES, REFERENCE_FILE, all_pairs, read_result
from helpers.book.display import NAMES, best_floor, floor_status, fmt_ci, run_label, table as show

# The original study's test-set values (Sadman et al. 2025, as listed in DESIGN.md): BiomedCLIP on
# IU-Xray, on the original study's own split. Reference values to compare against, not our results.
SEED_REFERENCE: dict[str, dict[str, float | None]] = {
    "zs": {"inter": 31.890, "intra": 21.160, "ratio": 1.506, "f1_macro": 0.105, "exact_match": 0.000,
           "lrap": 0.250, "coverage_error": 7.70, "time_min": None},
    "ft": {"inter": 22.754, "intra": 12.756, "ratio": 1.784, "f1_macro": 0.235, "exact_match": 0.134,
           "lrap": 0.779, "coverage_error": 2.750, "time_min": 15.47},
    "lp": {"inter": 31.894, "intra": 21.160, "ratio": 1.507, "f1_macro": 0.183, "exact_match": 0.143,
           "lrap": 0.741, "coverage_error": 3.077, "time_min": 6.10},
}
PAPER = "paper: BiomedCLIP, its own split"
"""How the original study's rows are labelled, apart from this run's (``profile · model``)."""
METRICS = ["f1_macro", "f1_micro", "exact_match", "lrap", "coverage_error", "auroc_macro", "auprc_macro"]
COLUMNS = ["inter", "intra", "ratio", *METRICS]
"""The compared columns of :func:`results_table`. Training time depends on the machine and its
load, so it has its own table (:func:`training_times`), shown in a cell that re-execution tests
do not compare."""
HEADERS = {"inter": "inter-class dist.", "intra": "intra-class dist.", "ratio": "ratio",
           "f1_macro": "F1 (macro)", "f1_micro": "F1 (micro)", "exact_match": "exact match",
           "lrap": "LRAP", "coverage_error": "coverage error", "auroc_macro": "AUROC (macro)",
           "auprc_macro": "AUPRC (macro)", "time_min": "time (min)"}
ROW_KINDS = {"zs": "zero-shot (validation-tuned prompts and thresholds)",
             "zs-seed": "zero-shot, original protocol (one prompt per label, threshold 0.5)",
             "lp": "linear probe",
             "ft": "fine-tune, the budget sweep's choice (mean over seeds)",
             "ft-plain": "plain fine-tune, its best budget (one seed)",
             "ft-lpft": "LP-FT, its best budget (one seed)",
             "ft-seed": "fine-tune at the original learning rate, 1e-6 (one seed)"}
SETTING_ORDER = {"zs": 0, "zs-seed": 1, "lp": 2, "ft": 3, "ft-plain": 4, "ft-lpft": 5,
                 "ft-seed": 6}
EXTRA_ROWS = {"zs": {"seed_protocol": "zs-seed"},
              "ft": {"plain": "ft-plain", "lp_ft": "ft-lpft", "seed_protocol": "ft-seed"}}
"""Rows a setting's metrics file carries beside its own: JSON key -> row setting."""


def _read(path: Path) -> dict | None:
    return read_result(path, missing_ok=True)


def _estimate_columns(record: Mapping[str, Any], names: Sequence[str]) -> dict[str, float]:
    """The table's three columns per stored estimate: ``name``, ``name_lo``, ``name_hi``."""
    cols: dict[str, float] = {}
    for k in names:
        cols.update(frame_columns(k, Estimate.read(record, k)))
    return cols


def _row(profile: str, model: str, setting: str, metrics: dict, stamp: dict, **extra) -> dict:
    row = {"profile": profile, "model_id": stamp.get("model_id", model), "setting": setting,
           "data_hash": stamp.get("data_hash"), "executed": stamp.get("date"),
           "quick_run": stamp.get("quick_run"), **extra}
    row.update(_estimate_columns(metrics, METRICS))
    return row


def _pair_rows(profile: str, model: str, folder: Path) -> list[dict]:
    geo = (_read(folder / GEOMETRY_FILE) or {}).get("settings", {})
    rows = []
    for setting, fname in METRICS_FILES.items():
        d = _read(folder / fname)
        if d is None:
            continue
        geo_cols = _estimate_columns(geo.get(setting, {}), ("inter", "intra", "ratio"))
        rows.append(_row(profile, model, setting, d["metrics"], d.get("stamp", {}),
                         time_min=d.get("time_min"), runs=d["metrics"].get("runs", 1), **geo_cols))
        for key, row_setting in EXTRA_ROWS.get(setting, {}).items():
            if d.get(key):
                rows.append(_row(profile, model, row_setting, d[key], d.get("stamp", {}),
                                 time_min=d.get(f"{key}_time_min"),
                                 runs=d[key].get("runs", 1)))
    return rows


def gather(root: str | os.PathLike | None = None) -> pd.DataFrame:
    """One row per (profile, model, setting) found: point values, 95% CIs and provenance.

    Settings: ``zs``, ``zs-seed`` (chapter 2's seed-protocol row), ``lp``, ``ft``. Columns:
    profile, model_id, setting, data_hash, executed, time_min, runs, and for every metric ``m``
    of :data:`COLUMNS` the value ``m`` and its interval ``m_lo``, ``m_hi`` (NaN where missing;
    :func:`helpers.analysis.estimate.frame_columns`); ``Estimate.from_row(row, m)`` reads one
    back.
    """
    rows = [r for profile, model, folder in all_pairs(root) for r in _pair_rows(profile, model, folder)]
    return pd.DataFrame(rows)


def gather_references(root: str | os.PathLike | None = None) -> pd.DataFrame:
    """The image-independent reference scorers of every (profile, model) pair: one row each."""
    rows = []
    for profile, model, folder in all_pairs(root):
        d = _read(folder / REFERENCE_FILE)
        if d is None:
            continue
        for name, m in d["scorers"].items():
            rows.append(_row(profile, model, name, m, d.get("stamp", {})))
    return pd.DataFrame(rows)


def _label(r) -> str:
    return run_label(r.profile, r.model_id, r.get("quick_run"))


def _as_result(r) -> dict:
    """A table row as a :func:`metrics.evaluate`-like result (value and ``ci95``)."""
    return table_record({m: Estimate.from_row(r, m) for m in METRICS})


def _floors_of(refs: pd.DataFrame | None, profile: str, model_id: str) -> dict[str, dict]:
    if refs is None or not len(refs):
        return {}
    sub = refs[(refs.profile == profile) & (refs.model_id == model_id)]
    return {r.setting: {m: r.get(m) for m in METRICS} for _, r in sub.iterrows()}


def _cells(r, floors: dict[str, dict] | None = None,
           columns: list[str] | None = None) -> dict[str, str]:
    out = {}
    for c in COLUMNS if columns is None else columns:
        cell = Estimate.from_row(r, c).format()
        if floors and c in METRICS and floor_status(_as_result(r), floors, c) == "at or below":
            cell += " ▼"
        out[HEADERS[c]] = cell
    return out


def floor_sentence(df: pd.DataFrame, refs: pd.DataFrame | None) -> str:
    """Every result of ``df`` at or below the best image-independent scorer of its own run,
    one clause per row (setting code and run), listing its metrics with the floor beside
    (computed, so the page stays true on a rerun)."""

    clauses = []
    for _, r in (df.iterrows() if len(df) else []):
        floors = _floors_of(refs, r.profile, r.model_id)
        items = []
        for m in METRICS:
            if floors and floor_status(_as_result(r), floors, m) == "at or below":
                name, v = best_floor(floors, m)
                items.append(f"{NAMES.get(m, m)} {fmt_ci(r[m])} (floor: {name} {fmt_ci(v)})")
        if items:
            clauses.append(f"{ROW_KINDS[r.setting]}, {r.profile}: " + ", ".join(items))
    return ("no result is at or below its floor" if not clauses else
            "at or below its floor, " + "; ".join(clauses))


GROUPS = {"classification": ["f1_macro", "exact_match", "lrap", "coverage_error"],
          "geometry": ["inter", "intra", "ratio"],
          "beyond": ["auroc_macro", "auprc_macro", "f1_micro"]}
"""The results page's three tables, each narrow enough for the page: the original study's
classification metrics, its embedding geometry (chapter 5), and metrics it does not report."""
REFERENCE_ROWS = "image-independent reference scorers (chapter 2)"
THIS_RUN = "this run"
"""How this book's rows are labelled, apart from the original study's (:data:`PAPER`)."""


def _ours(r) -> str:
    return f"{THIS_RUN}: {_label(r)}"


def results_table(df: pd.DataFrame, refs: pd.DataFrame | None = None,
                  columns: list[str] | None = None) -> pd.DataFrame:
    """The display table: per setting, the original paper's row, then ours (value [95% CI]) for
    every (profile, model), then the image-independent reference scorers (marked as such).
    ``columns`` (default: every one of :data:`COLUMNS`) picks the metrics; a row with none of
    them is left out."""
    columns = COLUMNS if columns is None else columns
    out = []
    for setting in sorted(ROW_KINDS, key=SETTING_ORDER.get):
        ref = SEED_REFERENCE.get(setting)
        if ref:
            out.append({"setting": ROW_KINDS[setting], "source": PAPER,
                        **_cells(ref, columns=columns)})
        for _, r in (df[df.setting == setting].iterrows() if len(df) else []):
            out.append({"setting": ROW_KINDS[setting], "source": _ours(r),
                        **_cells(r, _floors_of(refs, r.profile, r.model_id), columns)})
    for _, r in (refs.iterrows() if refs is not None and len(refs) else []):
        out.append({"setting": REFERENCE_ROWS, "source": f"{r.setting}, {_ours(r)}",
                    **_cells(r, columns=columns)})
    heads = [HEADERS[c] for c in columns]
    out = [row for row in out if any(row[h] != "–" for h in heads)]
    return pd.DataFrame(out, columns=["setting", "source", *heads]).set_index(
        ["setting", "source"])


def styled(table: pd.DataFrame):
    """A :func:`results_table` (or :func:`training_times`) for the page: one group of rows per
    setting, the original study's rows set apart (shaded, italic) from this run's."""

    return show(table, row_classes=["paper" if src == PAPER else "" for _, src in table.index])


def training_times(df: pd.DataFrame) -> pd.DataFrame:
    """Training time in minutes (linear-probe fit; mean fine-tuning time per seed) of every
    (profile, model) and setting that records one, the original paper's beside.

    Wall-clock figures depend on the machine and its load: they are shown apart from
    :func:`results_table`, and compared only between rows run on the same machine.
    """
    out = [{"setting": ROW_KINDS[s], "source": PAPER,
            "time (min)": fmt_ci(SEED_REFERENCE[s]["time_min"], None, 2)}
           for s in sorted(SEED_REFERENCE, key=SETTING_ORDER.get) if SEED_REFERENCE[s]["time_min"]]
    for _, r in (df.iterrows() if len(df) else []):
        if r.get("time_min") is not None and r.get("time_min") == r.get("time_min"):
            out.append({"setting": ROW_KINDS[r.setting], "source": _ours(r),
                        "time (min)": fmt_ci(r.time_min, None, 2)})
    return pd.DataFrame(out).set_index(["setting", "source"])


def models_side_by_side(df: pd.DataFrame, metric: str = "auroc_macro") -> pd.DataFrame:
    """One row per run (profile, model; a quick run says so), one column per setting:
    ``metric`` as value [95% CI]."""
    if df.empty:
        return pd.DataFrame()
    t = df.assign(cell=[Estimate.from_row(r, metric).format() for _, r in df.iterrows()],
                  run=[_label(r) for _, r in df.iterrows()])
    wide = t.pivot_table(index="run", columns="setting", values="cell", aggfunc="first")
    cols = [s for s in sorted(ROW_KINDS, key=SETTING_ORDER.get) if s in wide.columns]
    return wide[cols].rename(columns=ROW_KINDS).fillna("–")
