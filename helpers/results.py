"""Gather every run's metrics JSON into the study's results table, the seed's values beside.

Chapters write ``<output root>/<profile>/{zero_shot,linear_probe,fine_tune}.json`` (chapters
2-4) and ``embedding_geometry.json`` (chapter 5). :func:`gather` reads whatever is there, for
every profile, so a ``full`` run's files drop into the table without code changes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

SETTINGS = {"zs": "zero_shot.json", "lp": "linear_probe.json", "ft": "fine_tune.json"}
GEOMETRY_FILE = "embedding_geometry.json"

# The seed study's test-set values (Sadman et al. 2025, as listed in DESIGN.md): BiomedCLIP on
# IU-Xray. Reference values to compare against, not results of this project.
SEED_REFERENCE: dict[str, dict[str, float | None]] = {
    "zs": {"inter": 31.890, "intra": 21.160, "ratio": 1.506, "f1_macro": 0.105, "exact_match": 0.000,
           "lrap": 0.250, "coverage_error": 7.70, "time_min": None},
    "ft": {"inter": 22.754, "intra": 12.756, "ratio": 1.784, "f1_macro": 0.235, "exact_match": 0.134,
           "lrap": 0.779, "coverage_error": 2.750, "time_min": 15.47},
    "lp": {"inter": 31.894, "intra": 21.160, "ratio": 1.507, "f1_macro": 0.183, "exact_match": 0.143,
           "lrap": 0.741, "coverage_error": 3.077, "time_min": 6.10},
}
COLUMNS = ["inter", "intra", "ratio", "f1_macro", "exact_match", "lrap", "coverage_error", "auroc_macro",
           "time_min"]
HEADERS = {"inter": "inter-class dist.", "intra": "intra-class dist.", "ratio": "ratio", "f1_macro": "F1 (macro)",
           "exact_match": "exact match", "lrap": "LRAP", "coverage_error": "coverage error",
           "auroc_macro": "AUROC (macro)", "time_min": "time (min)"}


def output_root() -> Path:
    """The folder holding one sub-folder of metrics JSON per profile (``IUXRAY_OUTPUT_DIR``)."""
    from .config import REPO_ROOT

    return Path(os.environ.get("IUXRAY_OUTPUT_DIR", REPO_ROOT / "outputs"))


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it and re-run the chapter that writes it") from e


def gather(root: str | os.PathLike | None = None) -> pd.DataFrame:
    """One row per (profile, setting) found: point values, 95% CIs and provenance.

    Columns: profile, setting, model_id, data_hash, executed, then for every metric ``m`` in
    :data:`COLUMNS` the value ``m`` and its interval ``m_ci`` ([low, high] or None).
    """
    root = Path(root) if root else output_root()
    rows = []
    for prof_dir in sorted(p for p in root.glob("*") if p.is_dir()):
        geo = _read(prof_dir / GEOMETRY_FILE) or {}
        for setting, fname in SETTINGS.items():
            d = _read(prof_dir / fname)
            g = (geo.get("settings") or {}).get(setting)
            if d is None and g is None:
                continue
            stamp = (d or geo).get("stamp", {})
            m = (d or {}).get("metrics", {})
            ci = m.get("ci95", {})
            row = {"profile": stamp.get("profile", prof_dir.name), "setting": setting,
                   "model_id": stamp.get("model_id"), "data_hash": stamp.get("data_hash"),
                   "executed": stamp.get("date")}
            for k in ("f1_macro", "exact_match", "lrap", "coverage_error", "auroc_macro"):
                row[k], row[f"{k}_ci"] = m.get(k), ci.get(k)
            row["time_min"], row["time_min_ci"] = (d or {}).get("time_min"), None
            for k in ("inter", "intra", "ratio"):
                row[k], row[f"{k}_ci"] = (g or {}).get(k), (g or {}).get(f"{k}_ci")
            rows.append(row)
    return pd.DataFrame(rows)


def _fmt(v, ci, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    s = f"{v:.{digits}f}"
    if ci:
        s += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return s


def results_table(df: pd.DataFrame) -> pd.DataFrame:
    """The display table: our rows (value [95% CI]) and the seed's rows, setting by setting."""
    order = {"zs": 0, "lp": 1, "ft": 2}
    out = []
    for setting in sorted(SEED_REFERENCE, key=order.get):
        ref = SEED_REFERENCE[setting]
        out.append({"setting": setting, "source": "seed paper (BiomedCLIP, reported)",
                    **{HEADERS[c]: _fmt(ref.get(c), None) for c in COLUMNS}})
        for _, r in df[df.setting == setting].iterrows() if len(df) else []:
            label = f"this book, profile `{r.profile}` ({r.model_id})"
            out.append({"setting": setting, "source": label,
                        **{HEADERS[c]: _fmt(r.get(c), r.get(f"{c}_ci"), 2 if c == "time_min" else 3)
                           for c in COLUMNS}})
    return pd.DataFrame(out).set_index(["setting", "source"])
