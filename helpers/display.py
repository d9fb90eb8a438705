"""How numbers are shown on the pages: one format for "value [95% CI]" and one metric table.

Every chapter prints a metric with its interval as ``0.283 [0.259, 0.304]`` in one cell
(:func:`fmt_ci`), and reads its metrics against the reference scorers of :mod:`helpers.chance`
with :func:`against_floors`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pandas as pd

NAMES = {"f1_macro": "F1 (macro)", "f1_micro": "F1 (micro)", "exact_match": "exact match",
         "lrap": "LRAP", "coverage_error": "coverage error", "ranking_loss": "ranking loss",
         "auroc_macro": "AUROC (macro)", "auprc_macro": "AUPRC (macro)", "brier": "Brier score",
         "ece": "ECE"}
"""Display name of each metric key."""
LOWER_IS_BETTER = ("coverage_error", "ranking_loss", "brier", "ece")


def _ok(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt_ci(value: float | None, ci: Sequence[float | None] | None = None, digits: int = 3,
           signed: bool = False) -> str:
    """``value [low, high]`` with ``digits`` decimals (``+`` signs with ``signed``); ``–`` if missing."""
    if not _ok(value):
        return "–"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    s = f.format(value)
    if ci is not None and len(ci) == 2 and all(_ok(c) for c in ci):
        s += f" [{f.format(ci[0])}, {f.format(ci[1])}]"
    return s


def run_label(profile: str, model_id: str, quick_run: str | None = None) -> str:
    """How a run is named in a table cell: ``demo · tiny@abc``, with ``· quick run (why)`` for a
    quick run (plain text: table cells render no markup)."""
    label = f"{profile} · {model_id}"
    return f"{label} · quick run ({quick_run})" if quick_run else label


def beats(result: Mapping[str, Any], floor: float, metric: str) -> bool:
    """Whether a result's 95% CI lies entirely on the better side of ``floor`` for ``metric``."""
    ci = result.get("ci95", {}).get(metric)
    if not ci or not _ok(floor) or not all(_ok(c) for c in ci):
        return False
    return ci[1] < floor if metric in LOWER_IS_BETTER else ci[0] > floor


def best_floor(refs: Mapping[str, Mapping[str, Any]], metric: str) -> tuple[str, float] | None:
    """The strongest image-independent scorer for ``metric`` (name, value); the first in
    :data:`chance.SCORERS` order on a tie. ``None`` if no scorer has the metric."""
    from .chance import SCORERS

    vals = {n: r[metric] for n, r in sorted(refs.items(), key=lambda kv: SCORERS.index(kv[0])
                                            if kv[0] in SCORERS else 99) if _ok(r.get(metric))}
    if not vals:
        return None
    best = (min if metric in LOWER_IS_BETTER else max)(vals, key=vals.get)
    return best, float(vals[best])


def floor_status(result: Mapping[str, Any], refs: Mapping[str, Mapping[str, Any]],
                 metric: str) -> str:
    """``"beats"`` (the whole CI on the better side of the best image-independent scorer),
    ``"within"`` (the point is better but the CI reaches the floor) or ``"at or below"`` (the
    point itself is no better than the floor); ``""`` when there is nothing to compare."""
    fl = best_floor(refs, metric)
    v = result.get(metric)
    if fl is None or not _ok(v):
        return ""
    if beats(result, fl[1], metric):
        return "beats"
    better = v < fl[1] if metric in LOWER_IS_BETTER else v > fl[1]
    return "within" if better else "at or below"


def against_floors(ours: Mapping[str, Mapping[str, Any]], refs: Mapping[str, Mapping[str, Any]],
                   metrics: Sequence[str]) -> pd.DataFrame:
    """Metric table: our settings (value [CI]) beside every reference scorer, and a verdict.

    ``ours`` and ``refs`` map a column name to a :func:`metrics.evaluate` result. A value of
    ours at or below the best image-independent scorer is marked ``▼``. The last columns name
    the best reference scorer for the metric and whether the *first* of ``ours`` beats it with
    its whole CI (``yes``), only with its point value (``no: CI reaches it``), or not at all
    (``no: at or below``).
    """
    from .chance import SCORERS

    refs = {n: refs[n] for n in sorted(refs, key=lambda n: SCORERS.index(n) if n in SCORERS else 99)}
    rows = {}
    first = next(iter(ours.values()))
    for m in metrics:
        row = {}
        for name, r in ours.items():
            mark = " ▼" if floor_status(r, refs, m) == "at or below" else ""
            row[name] = fmt_ci(r.get(m), r.get("ci95", {}).get(m)) + mark
        row.update({name: fmt_ci(r.get(m)) for name, r in refs.items()})
        fl = best_floor(refs, m)
        if fl:
            row["best image-independent"] = fl[0]
            row["beats it?"] = {"beats": "yes", "within": "no: CI reaches it",
                                "at or below": "no: at or below"}.get(
                                    floor_status(first, refs, m), "–")
        rows[NAMES.get(m, m)] = row
    return pd.DataFrame(rows).T


def floor_sentence(ours: Mapping[str, Mapping[str, Any]], refs: Mapping[str, Mapping[str, Any]],
                   metrics: Sequence[str]) -> str:
    """The prose that names every result at or below its image-independent floor, computed
    from the numbers (so a rerun with other numbers keeps the page true)."""
    from .chance import SCORERS  # noqa: F401  (order of best_floor)

    below = []
    for name, r in ours.items():
        for m in metrics:
            if floor_status(r, refs, m) == "at or below":
                fl = best_floor(refs, m)
                below.append(f"{name} on {NAMES.get(m, m)} ({fmt_ci(r[m])} against "
                             f"{fl[0]}'s {fmt_ci(fl[1])})")
    if not below:
        return "no result is at or below its image-independent floor"
    return "at or below an image-independent floor: " + "; ".join(below)
