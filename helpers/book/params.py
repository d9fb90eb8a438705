"""What a valid chapter parameter is: choices, ranges and lengths, written as data.

The runner (:mod:`helpers.book.runner`) checks every ``-p NAME VALUE`` against these tables before any
chapter executes; ``python -m helpers.book.runner --list-params`` prints them beside each parameter.
To constrain a new parameter, add one entry:

* :data:`CHOICES`: the allowed values of a ``str`` parameter (or of each element of a list).
  Values are tuples, or ``"package.module:ATTR"`` references to a constant of a ``helpers`` module
  (resolved only when needed, so this module imports nothing heavy); a dict constant means its
  keys, a dict entry ``"module:ATTR+module:ATTR2"`` joins several constants.
* :data:`RANGES`: ``(low, high, low_inclusive, high_inclusive)`` for an ``int``/``float``
  parameter (or each element of a list); ``None`` = unbounded.
* :data:`LENGTHS`: ``(min, max)`` number of elements of a list parameter; :data:`SUMS`: the
  value the elements of a list must add up to (within 1e-6).
* :data:`PATTERNS`: a regular expression a ``str`` parameter must match in full (with a description).
* :data:`PATHS`: parameters naming a file (``"file"``) or a folder (``"dir"``) that must exist
  when not empty; the runner passes them on as absolute paths.
* :data:`DATA_PARAMETERS`: parameters that change the data every chapter reads; the runner gives
  them to every selected chapter that declares them and refuses them when a selected chapter
  loads the study (``load_study(``) without declaring them (it would silently use the default).
* :data:`PROFILE_IMAGES`: parameters that only one kind of profile reads (``image_dir`` and
  ``annotations``: the ``full`` profile's real images; ``style``: the ``demo``'s phantoms); the
  runner refuses them on a profile that would ignore them.

Every size parameter has an upper bound, and a parameter given twice is refused by the runner.

Every float must be finite (``nan`` and ``inf`` are refused). Parameters with no entry are only
checked for their type; :data:`FREE` lists the ``str`` parameters deliberately left open.
"""

from __future__ import annotations

import importlib
import math
import re
from pathlib import Path
from typing import Any

CHOICES: dict[str, Any] = {
    "on_error": "data.images:ON_ERROR",
    "style": "phantoms.rendering:STYLES",
    "uncertain_policy": "data.labels:UNCERTAIN_POLICIES",
    "objective": "protocols.finetune:OBJECTIVE_PARAMETER",
    "class_weight": ("balanced", "none"),
    "views": "data.iuxray:VIEW_ALIASES+data.iuxray:VIEW_VALUES",
    "highlight": "data.labels:CHEXPERT_LABELS",
    "reference_scorers": "analysis.baselines:SCORERS",
}
CASE_INSENSITIVE = {"views"}
"""Choice parameters matched without regard to case (``helpers.data.iuxray.resolve_views`` upper-cases)."""

RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    # every size has an upper bound: far above any sensible run, low enough that a typo (an extra
    # zero or three) stops before hours of work or an out-of-memory kill
    "limit": (0, 100_000, True, True),             # 0 = all images (IU-Xray has 7,470)
    "n_boot": (1, 100_000, True, True),
    "n_examples": (1, 100, True, True),
    "seed_threshold": (0.0, 1.0, True, True),      # a threshold on sigmoid scores
    "epochs": (0, 1_000, True, True),              # 0 = the profile's default
    "lr": (0.0, 1.0, True, True),                  # 0 = the profile's default
    "batch_size": (0, 4_096, True, True),          # 0 = the profile's default
    "patience": (0, 1_000, True, True),            # 0 = the profile's default
    "stop_epoch": (-1, 1_000, True, True),         # -1 = the sweep's best epoch, 0 = all epochs
    "temperature": (1e-3, 100.0, True, True),      # logits / T: a tiny T overflows them
    "max_steps_per_epoch": (0, 1_000_000, True, True),  # 0 = the whole split
    "seed": (0, 2**32 - 1, True, True),
    "split_seed": (0, 2**32 - 1, True, True),
    "split_fractions": (0.0, 1.0, False, False),
    "Cs": (1e-6, 1e6, True, True),
    "projection_points": (10, 100_000, True, True),
    "max_pairs": (0, 1_000_000, True, True),       # 0 = all pairs
    "scorecam_pairs": (0, 10_000, True, True),     # 0 = no ScoreCAM
    "cascade_pairs": (1, 10_000, True, True),
    "k_folds": (2, 100, True, True),
    "control_epochs": (1, 1_000, True, True),
    "control_images": (1, 100_000, True, True),
    "n_seeds": (1, 100, True, True),               # training seeds (and control permutations)
    "control_seeds": (1, 100, True, True),         # seeds of chapter 4's permuted-label control
    "causal_pairs": (1, 100, True, True),
    "causal_images": (1, 10_000, True, True),
}
LENGTHS: dict[str, tuple[int, int | None]] = {
    "split_fractions": (3, 3),
    "views": (1, None),
    "Cs": (1, None),
    "highlight": (1, 5),  # the UMAP / t-SNE palette has five colours
    "reference_scorers": (1, None),
}
SUMS: dict[str, float] = {"split_fractions": 1.0}
PATTERNS: dict[str, tuple[str, str]] = {
    "model": (r"|biomedclip|tiny|tiny-random|local-dir:.+|hf-hub:[^/\s]+/[^/\s]+",
              "empty (the profile's model), biomedclip, tiny, tiny-random, local-dir:PATH or hf-hub:ORG/NAME"),
}
PATHS: dict[str, str] = {"reports_path": "file", "image_dir": "dir", "annotations": "file"}
DATA_PARAMETERS: tuple[str, ...] = ("uncertain_policy", "split_seed", "split_fractions", "views",
                                    "reports_path", "image_dir")
PROFILE_IMAGES: dict[str, str] = {"image_dir": "openi", "annotations": "openi", "style": "phantoms"}
"""Parameters that only profiles with these images use (``Profile.images``: ``openi`` for the
``full`` profile's PNGs, ``phantoms`` for the ``demo``'s): the runner refuses them on another
profile, which would silently ignore them (``-p image_dir /tmp`` on the demo renders phantoms)."""
FREE: tuple[str, ...] = ("results",)
"""``str`` parameters with no constraint on purpose (free text or paths checked by the chapter)."""


class ParameterError(ValueError):
    """A parameter value outside its type, choices or range; the message names the parameter,
    the value and what is valid."""


def choices(name: str) -> tuple[str, ...] | None:
    """The allowed values of ``name`` (resolving ``module:ATTR`` references), or None."""
    spec = CHOICES.get(name)
    if spec is None:
        return None
    if not isinstance(spec, str):
        return tuple(spec)
    out: list[str] = []
    for ref in spec.split("+"):
        mod, attr = ref.split(":")
        obj = getattr(importlib.import_module(f"helpers.{mod}"), attr)
        out += list(obj.keys() if isinstance(obj, dict) else obj)
    return tuple(dict.fromkeys(out))


def describe(name: str) -> str:
    """A short text of the constraint on ``name`` (for ``--list-params`` and messages), or ''."""
    parts = []
    if name in CHOICES:
        parts.append("one of " + ", ".join(choices(name) or ()))
    if name in RANGES:
        parts.append(_range_text(*RANGES[name]))
    if name in LENGTHS:
        lo, hi = LENGTHS[name]
        parts.append(f"{lo} element{'s' if lo != 1 else ''}" if lo == hi else
                     f"{lo} to {hi} elements" if hi is not None else f"at least {lo} element{'s' if lo != 1 else ''}")
    if name in SUMS:
        parts.append(f"summing to {SUMS[name]:g}")
    if name in PATTERNS:
        parts.append(PATTERNS[name][1])
    if name in PATHS:
        parts.append(f"an existing {'folder' if PATHS[name] == 'dir' else 'file'} (empty: the default)")
    return "; ".join(parts)


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _range_text(lo, hi, lo_in, hi_in) -> str:
    if lo is not None and hi is not None:
        return f"in {'[' if lo_in else '('}{_num(lo)}, {_num(hi)}{']' if hi_in else ')'}"
    if lo is not None:
        return f"{'>=' if lo_in else '>'} {_num(lo)}"
    if hi is not None:
        return f"{'<=' if hi_in else '<'} {_num(hi)}"
    return ""


def check(name: str, value: Any, default: Any = None) -> Any:
    """Check a parsed value of parameter ``name`` against the tables; return it (paths made
    absolute). Raises :class:`ParameterError` naming the parameter, the value and what is valid."""
    def fail(why: str) -> ParameterError:
        valid = describe(name)
        return ParameterError(f"parameter {name!r}: {why}" + (f"; valid: {valid}" if valid else "")
                              + (f" (default: {default!r})" if default is not None else ""))

    items = value if isinstance(value, list) else [value]
    for v in items:
        if isinstance(v, float) and not math.isfinite(v):
            raise fail(f"value {v!r} is not a finite number")
    if isinstance(value, list):
        _check_length(name, value, fail)
    for v in items:
        _check_item(name, v, fail)
    if name in PATTERNS and isinstance(value, str) and not re.fullmatch(PATTERNS[name][0], value):
        raise fail(f"value {value!r} is not valid")
    if name in PATHS and isinstance(value, str) and value:
        return _check_path(name, value, fail)
    if name == "model" and isinstance(value, str) and value.startswith("local-dir:"):
        return "local-dir:" + _check_path("model", value[len("local-dir:"):], fail, "dir")
    return value


def _check_length(name: str, value: list, fail) -> None:
    if name in LENGTHS:
        lo, hi = LENGTHS[name]
        if len(value) < lo or (hi is not None and len(value) > hi):
            raise fail(f"{len(value)} element(s) {value!r}")
    if name in SUMS and all(isinstance(v, (int, float)) for v in value) and abs(sum(value) - SUMS[name]) > 1e-6:
        raise fail(f"{value!r} sums to {sum(value):g}")


def _check_item(name: str, v: Any, fail) -> None:
    if name in CHOICES and isinstance(v, str):
        allowed = choices(name) or ()
        ok = (v.lower() in {a.lower() for a in allowed}) if name in CASE_INSENSITIVE else v in allowed
        if not ok:
            raise fail(f"value {v!r} is not allowed")
    if name in RANGES and isinstance(v, (int, float)) and not isinstance(v, bool):
        lo, hi, lo_in, hi_in = RANGES[name]
        if (lo is not None and (v < lo or (v == lo and not lo_in))) or \
           (hi is not None and (v > hi or (v == hi and not hi_in))):
            raise fail(f"value {v!r} is out of range")


def _check_path(name: str, value: str, fail, kind: str | None = None) -> str:
    kind = kind or PATHS[name]
    p = Path(value).expanduser().resolve()
    if kind == "dir" and not p.is_dir():
        raise fail(f"folder {value!r} does not exist ({p})")
    if kind == "file" and not p.is_file():
        raise fail(f"file {value!r} does not exist ({p})")
    return str(p)
