"""One format for the seed study's findings, each with the negative control beside it.

A *finding* is a claim tested on this run's numbers. Its record is

    {"finding": id, "chapter": "04_fine_tune", "claim": "...", "estimate": 0.026,
     "ci95": [0.008, 0.045], "rule": {"above": 0.0}, "holds": true,
     "control": {"name": "...", "estimate": 0.001, "ci95": [-0.02, 0.02], "holds": false},
     "verdict": "holds; its control fails, as it should"}

``holds`` is never typed: it is computed from the interval and the rule (``{"above": r}``:
the whole 95% CI lies above ``r``; ``{"below": r}``: below). The *control* applies the same
rule to a condition in which the claim must not hold (labels permuted across training reports,
partners that do not co-occur, a rule that cannot over-predict). A finding whose control also
holds is not established: whatever produced it also produces it without its supposed cause.

Chapters write their records with :func:`write_findings`; the results page reads every file
with :func:`gather_findings` and renders them with :func:`findings_table`, with no per-chapter
code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

RULES = ("above", "below")


def holds(ci95: Sequence[float] | None, rule: dict[str, float]) -> bool:
    """Whether a 95% CI ``[low, high]`` satisfies ``rule`` (``{"above": r}`` or ``{"below": r}``).

    A missing or non-finite interval never holds.
    """
    (kind, ref), = _check_rule(rule).items()
    if ci95 is None or len(ci95) != 2 or not all(_finite(v) for v in ci95):
        return False
    return bool(ci95[0] > ref) if kind == "above" else bool(ci95[1] < ref)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _check_rule(rule: dict[str, float]) -> dict[str, float]:
    if not (isinstance(rule, dict) and len(rule) == 1 and next(iter(rule)) in RULES
            and _finite(next(iter(rule.values())))):
        raise ValueError(f"rule must be {{'above': r}} or {{'below': r}} with a finite r, got {rule!r}")
    return rule


def _ci(ci95: Sequence[float] | None) -> list[float | None] | None:
    if ci95 is None:
        return None
    lo, hi = (float(v) if _finite(v) else None for v in ci95)
    return [lo, hi]


def verdict(finding_holds: bool, control_holds: bool) -> str:
    """The sentence a page prints for a finding and its control."""
    if finding_holds and not control_holds:
        return "holds; its control fails, as it should"
    if finding_holds:
        return "not established: its negative control holds too"
    if control_holds:
        return "does not hold (and its control holds: the test itself is suspect)"
    return "does not hold"


def control(name: str, estimate: float | None, ci95: Sequence[float] | None,
            rule: dict[str, float]) -> dict[str, Any]:
    """A negative control's record: the finding's rule applied to the control condition."""
    return {"name": name, "estimate": float(estimate) if _finite(estimate) else None,
            "ci95": _ci(ci95), "holds": holds(ci95, rule)}


def record(finding: str, chapter: str, claim: str, estimate: float | None,
           ci95: Sequence[float] | None, rule: dict[str, float], control_name: str,
           control_estimate: float | None, control_ci95: Sequence[float] | None,
           **extra: Any) -> dict[str, Any]:
    """A finding record (see the module docstring); ``extra`` keys are kept (e.g. ``n``)."""
    _check_rule(rule)
    ctrl = control(control_name, control_estimate, control_ci95, rule)
    h = holds(ci95, rule)
    return {"finding": finding, "chapter": chapter, "claim": claim,
            "estimate": float(estimate) if _finite(estimate) else None, "ci95": _ci(ci95),
            "rule": dict(rule), "holds": h, "control": ctrl, "verdict": verdict(h, ctrl["holds"]),
            **extra}


REQUIRED = ("finding", "chapter", "claim", "estimate", "ci95", "rule", "holds", "control", "verdict")


def validate(rec: dict[str, Any]) -> dict[str, Any]:
    """Check one record's schema and that ``holds`` follows from its interval; return it."""
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        raise ValueError(f"finding record {rec.get('finding')!r} lacks {missing}")
    for who, r in (("finding", rec), ("control", rec["control"])):
        if r["holds"] != holds(r["ci95"], rec["rule"]):
            raise ValueError(f"finding {rec['finding']!r}: the {who}'s 'holds' does not follow from its "
                             f"ci95 {r['ci95']} and rule {rec['rule']}")
    return rec


def write_findings(path: str | Path, records: Sequence[dict[str, Any]], stamp: dict[str, Any]) -> Path:
    """Write a chapter's finding records (validated) with the page stamp, atomically."""
    from .io import atomic_write_json

    return atomic_write_json(path, {"stamp": stamp, "findings": [validate(r) for r in records]})


def gather_findings(root: str | Path | None = None) -> pd.DataFrame:
    """Every finding of every (profile, model) under the output root: one row per record."""
    from .artefacts import FINDINGS_GLOB, all_pairs

    rows = []
    for profile, slug, folder in all_pairs(root):
        for f in sorted(folder.glob(FINDINGS_GLOB)):
            try:
                d = json.loads(f.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{f} is not valid JSON ({e}); delete it and re-run its chapter") from e
            for r in d.get("findings", []):
                rows.append({"profile": profile, "model": d.get("stamp", {}).get("model_id", slug), **r})
    return pd.DataFrame(rows)


def _fmt(v: float | None, ci: Sequence[float | None] | None) -> str:
    from .display import fmt_ci

    return fmt_ci(v, ci, signed=True)


def findings_table(df: pd.DataFrame) -> pd.DataFrame:
    """Display table: one row per finding, its estimate [CI], rule, and its control beside it.
    (Show it with :func:`styled` so its sentences stay left-aligned on the page.)"""
    if df.empty:
        return pd.DataFrame()
    out = pd.DataFrame({
        "profile": df.profile, "model": df.model, "chapter": df.chapter, "finding": df.finding,
        "claim": df.claim,
        "estimate [95% CI]": [_fmt(e, c) for e, c in zip(df.estimate, df.ci95)],
        "rule": [f"CI {k} {v:g}" for r in df.rule for k, v in r.items()],
        "negative control": [c["name"] for c in df.control],
        "control estimate [95% CI]": [_fmt(c["estimate"], c["ci95"]) for c in df.control],
        "verdict": df.verdict,
    })
    return out.reset_index(drop=True)


def styled(table: pd.DataFrame):
    """A table of sentences for the page: left-aligned cells (class ``text-table``), no index."""
    return table.style.hide(axis="index").set_table_attributes('class="text-table"')
