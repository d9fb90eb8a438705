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


def beats(result: Mapping[str, Any], floor: float, metric: str) -> bool:
    """Whether a result's 95% CI lies entirely on the better side of ``floor`` for ``metric``."""
    ci = result.get("ci95", {}).get(metric)
    if not ci or not _ok(floor) or not all(_ok(c) for c in ci):
        return False
    return ci[1] < floor if metric in LOWER_IS_BETTER else ci[0] > floor


def against_floors(ours: Mapping[str, Mapping[str, Any]], refs: Mapping[str, Mapping[str, Any]],
                   metrics: Sequence[str]) -> pd.DataFrame:
    """Metric table: our settings (value [CI]) beside every reference scorer, and a verdict.

    ``ours`` and ``refs`` map a column name to a :func:`metrics.evaluate` result. The last column
    names the best reference scorer for the metric (the first in :data:`chance.SCORERS` order
    on a tie) and whether the *first* of ``ours`` beats it with its whole CI (``yes``/``no``).
    """
    from .chance import SCORERS

    refs = {n: refs[n] for n in sorted(refs, key=lambda n: SCORERS.index(n) if n in SCORERS else 99)}
    rows = {}
    first = next(iter(ours.values()))
    for m in metrics:
        row = {name: fmt_ci(r.get(m), r.get("ci95", {}).get(m)) for name, r in ours.items()}
        row.update({name: fmt_ci(r.get(m)) for name, r in refs.items()})
        vals = {n: r[m] for n, r in refs.items() if _ok(r.get(m))}
        if vals:
            best = (min if m in LOWER_IS_BETTER else max)(vals, key=vals.get)
            row["best image-independent"] = best
            row["beats it?"] = "yes" if beats(first, vals[best], m) else "no"
        rows[NAMES.get(m, m)] = row
    return pd.DataFrame(rows).T
