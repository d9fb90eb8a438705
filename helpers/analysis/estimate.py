"""One estimate with its 95 % interval: the type helpers return and pages format.

In memory an estimate with its interval is an :class:`Estimate` (value, low, high). On disk it
is always stored as the value with its interval beside it under the key ``ci95``, in one of two
layouts that :meth:`Estimate.read` both reads:

* a single estimate, ``{"estimate": 0.026, "ci95": [0.008, 0.045]}`` (findings records, their
  control and difference; :meth:`Estimate.record` writes it);
* a table of named estimates, ``{"lrap": 0.61, "auroc_macro": 0.55, "ci95": {"lrap": [...],
  "auroc_macro": [...]}}`` (metrics, embedding geometry, localisation summaries;
  :func:`table_record` writes it). The values stay plain numbers, so a table of results can
  be sorted and compared without unpacking.

In a data frame an estimate is three numeric columns, ``name``, ``name_lo`` and ``name_hi``
(NaN where missing), so that a table sorts and plots by value: :func:`frame_columns` writes
them and :meth:`Estimate.from_row` reads them back.

A missing or non-finite bound is ``None``; :meth:`Estimate.format` then prints the value alone
(``–`` when the value itself is missing). What an interval covers (test resampling, seeds) is
said by the function that computed it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np


def finite_number(v: Any) -> bool:
    """Whether ``v`` is a finite real number (a Python or NumPy float, an int; not a bool,
    None, NaN or inf): the one test of "a value is there" for estimates and verdicts."""
    return isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def _number(v: Any) -> float | None:
    """``v`` as a float, ``None`` when missing or not finite (NaN, inf)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def fmt_ci(value: float | None, ci: Sequence[float | None] | None = None, digits: int = 3,
           signed: bool = False) -> str:
    """``value [low, high]`` with ``digits`` decimals (``+`` signs with ``signed``); ``–`` if
    the value is missing; the value alone if either bound is."""
    if not finite_number(value):
        return "–"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    s = f.format(value)
    if ci is not None and len(ci) == 2 and all(finite_number(c) for c in ci):
        s += f" [{f.format(ci[0])}, {f.format(ci[1])}]"
    return s


@dataclass(frozen=True)
class Estimate:
    """A point value and its 95 % interval, ``low <= value <= high`` for a percentile
    bootstrap of a mean (not guaranteed for every statistic). Bounds are ``None`` when there
    is no interval (too few rows, a failed computation)."""

    value: float | None
    low: float | None = None
    high: float | None = None

    @classmethod
    def of(cls, value: Any, ci: Sequence[Any] | None = None) -> Estimate:
        """From a value and an optional ``[low, high]``; NaN and inf become ``None``."""
        if ci is not None and len(ci) != 2:
            raise ValueError(f"an interval is [low, high]; got {list(ci)!r}")
        low, high = (None, None) if ci is None else (_number(ci[0]), _number(ci[1]))
        return cls(_number(value), low, high)

    @classmethod
    def each(cls, values: Sequence[Any], lows: Sequence[Any], highs: Sequence[Any]
             ) -> list[Estimate]:
        """One estimate per component of a vector statistic: ``(point, low, high)`` arrays
        of the same length, as :func:`helpers.analysis.metrics.bootstrap_values` returns."""
        if not len(values) == len(lows) == len(highs):
            raise ValueError(f"values, lows and highs differ in length: {len(values)}, "
                             f"{len(lows)}, {len(highs)}")
        return [cls.of(v, [lo, hi]) for v, lo, hi in zip(values, lows, highs)]

    @classmethod
    def read(cls, record: Mapping[str, Any], name: str | None = None) -> Estimate:
        """Read a stored estimate: ``record["estimate"]`` with ``record["ci95"]`` when ``name``
        is None, else ``record[name]`` with ``record["ci95"][name]`` (see the module text).
        A missing value or interval reads as ``None``."""
        if name is None:
            if "estimate" not in record:
                raise KeyError(f"not an estimate record (no 'estimate' key): keys "
                               f"{sorted(record)}")
            return cls.of(record["estimate"], record.get("ci95"))
        if f"{name}_ci" in record:
            raise ValueError(f"{name!r} is stored with '{name}_ci', the layout before "
                             "estimates were stored under 'ci95': re-run the chapter that "
                             "wrote this file")
        intervals = record.get("ci95") or {}
        if not isinstance(intervals, Mapping):
            raise TypeError(f"'ci95' of a table of estimates maps names to [low, high]; got "
                            f"{type(intervals).__name__} (read a single estimate without a name)")
        return cls.of(record.get(name), intervals.get(name))

    @classmethod
    def from_row(cls, row: Mapping[str, Any], name: str) -> Estimate:
        """The estimate ``name`` of a data-frame row (its ``name``, ``name_lo`` and ``name_hi``
        columns, :func:`frame_columns`); missing columns read as ``None``."""
        return cls.of(row.get(name), [row.get(f"{name}_lo"), row.get(f"{name}_hi")])

    @property
    def ci(self) -> list[float | None] | None:
        """``[low, high]``, or None when both bounds are missing."""
        return None if self.low is None and self.high is None else [self.low, self.high]

    @property
    def number(self) -> float:
        """The value as a float for arithmetic and plotting: NaN when missing."""
        return float("nan") if self.value is None else self.value

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None

    @property
    def half_width(self) -> float | None:
        return (self.high - self.low) / 2 if self.has_interval else None

    def above(self, x: float) -> bool:
        """The whole interval lies above ``x`` (False without an interval)."""
        return bool(self.has_interval and self.low > x)

    def below(self, x: float) -> bool:
        """The whole interval lies below ``x`` (False without an interval)."""
        return bool(self.has_interval and self.high < x)

    def contains(self, x: float) -> bool:
        """``x`` lies inside the interval (False without an interval)."""
        return bool(self.has_interval and self.low <= x <= self.high)

    def error_bar(self) -> tuple[float, float]:
        """Lengths below and above the value for matplotlib's ``yerr``; never negative (a
        percentile interval need not contain its estimate), ``(0, 0)`` without an interval."""
        if not self.has_interval or self.value is None:
            return 0.0, 0.0
        return max(self.value - self.low, 0.0), max(self.high - self.value, 0.0)

    def record(self) -> dict[str, Any]:
        """The single-estimate layout, ``{"estimate": value, "ci95": [low, high] | None}``."""
        return {"estimate": self.value, "ci95": self.ci}

    def format(self, digits: int = 3, signed: bool = False) -> str:
        """``0.283 [0.259, 0.304]`` (:func:`fmt_ci`)."""
        return fmt_ci(self.value, self.ci, digits, signed)

    def __str__(self) -> str:
        return self.format()


def table_record(estimates: Mapping[str, Estimate]) -> dict[str, Any]:
    """The table-of-estimates layout: ``{name: value, ..., "ci95": {name: [low, high]}}``
    (names without an interval are left out of ``ci95``)."""
    if "ci95" in estimates:
        raise ValueError("'ci95' cannot name an estimate: it holds the intervals")
    out: dict[str, Any] = {name: e.value for name, e in estimates.items()}
    out["ci95"] = {name: e.ci for name, e in estimates.items() if e.ci is not None}
    return out


def frame_columns(name: str, estimate: Estimate) -> dict[str, float]:
    """An estimate as a data frame's columns ``name``, ``name_lo``, ``name_hi`` (NaN where
    missing, so the columns stay numeric)."""
    nan = float("nan")
    return {name: nan if estimate.value is None else estimate.value,
            f"{name}_lo": nan if estimate.low is None else estimate.low,
            f"{name}_hi": nan if estimate.high is None else estimate.high}
