"""Every file a chapter writes or reads, named in one place, per (profile, model).

Chapters never type each other's file names: chapter 3 writes ``arts.probe()`` and chapter 6
reads ``arts.probe()``. Outputs of one (profile, model) pair live in one folder,

    <output root>/<profile>/<model slug>/            (metrics JSON, test scores, findings)
    <data dir>/runs/<profile>/<model slug>/          (fine-tuning checkpoints)

so a second model run beside the first never overwrites it, and the results page lists every
pair it finds. The output root is ``IUXRAY_OUTPUT_DIR`` (default ``<repo>/outputs``), the data
dir ``IUXRAY_DATA_DIR`` (default ``<repo>/data``).

**Quick runs never overwrite full results.** A run on a subset of the images (``limit`` > 0)
or with fewer than :data:`FULL_N_BOOT` bootstrap resamples is *quick*: its files go to the
``quick/`` sub-folder of the pair's folder (``<output root>/<profile>/<model slug>/quick/``,
checkpoints likewise under ``runs/``), and its page stamp says why it is quick
(``quick_run``). A chapter's ``limit`` makes it quick wherever it runs (the stamp then gives
the limit as the reason, so a re-execution by nbval stamps the same text); ``n_boot`` is not
known to :func:`study.load_study`, so the runner (:mod:`helpers.book.runner`), which decides from the
parameters it injects, passes its reason to the kernel in the environment variable
:data:`QUICK_ENV`. :func:`all_pairs` lists a pair's quick
folder only when the pair has no full results, so the results page never shows a quick run
beside (or instead of) a full one.

A *setting* is one of :data:`SETTINGS` (``zs`` zero-shot, ``lp`` linear probe, ``ft``
fine-tune); a *variant* names a training condition of a setting: ``""`` (the real labels),
``"permuted"`` (labels permuted across training reports: the negative control) or
``"localising"`` (chapter 6's positive-control model). A *seed* numbers a training run.

**One envelope.** Every result a chapter writes for another page to read is one JSON object,
written by :func:`write_result` and read by :func:`read_result` only: ``format`` (the
envelope's version), ``kind`` (what it holds: ``metrics``, ``findings``,
``reference_scorers``, ``geometry``, ``grad_cam``, ``grad_cam_sanity``), ``stamp`` (profile,
model id, data hash, date: :mod:`helpers.book.stamp`), ``params`` (what the chapter ran with)
and the payload's own keys. The reader names the file and the chapter that writes it when the
file is missing, not JSON, not a result, or of another kind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from helpers.config import REPO_ROOT, data_dir, get_profile
from helpers.storage import atomic_write_json

SETTINGS = {"zs": "zero-shot", "lp": "linear probe", "ft": "fine-tune"}
"""Setting key -> name used on the pages."""
VARIANTS = ("", "permuted", "localising", "plain", "lp-ft", "seed-lr")
METRICS_FILES = {"zs": "zero_shot.json", "lp": "linear_probe.json", "ft": "fine_tune.json"}
GEOMETRY_FILE = "embedding_geometry.json"
GRAD_CAM_FILE = "grad_cam.json"
CAM_HITS_FILE = "grad_cam_hits.npz"
SANITY_FILE = "grad_cam_sanity.json"
REFERENCE_FILE = "reference_scorers.json"
FINDINGS_GLOB = "findings-*.json"
QUICK_DIR = "quick"
"""Sub-folder of a (profile, model) folder that holds its quick runs."""
FULL_N_BOOT = 100
"""Fewer bootstrap resamples than this make a run quick (the chapters' defaults are 200 and 500)."""
QUICK_ENV = "IUXRAY_QUICK_RUN"
"""Environment variable by which the runner tells a chapter's kernel that its run is quick (and why)."""


RESULT_FORMAT = 1
"""Version of the result envelope (:func:`write_result`)."""
RESULT_KINDS = ("metrics", "findings", "reference_scorers", "geometry", "grad_cam",
                "grad_cam_sanity")
ENVELOPE_KEYS = ("format", "kind", "stamp", "params")


def write_result(path: str | os.PathLike, kind: str, stamp: Mapping[str, Any],
                 params: Mapping[str, Any] | None = None, **payload: Any) -> Path:
    """Write a chapter's result atomically in the one envelope: ``{"format", "kind", "stamp",
    "params", **payload}`` (see the module docstring). ``stamp`` must name the profile and
    the model; a payload key may not shadow an envelope key."""
    if kind not in RESULT_KINDS:
        raise ValueError(f"result kind must be one of {RESULT_KINDS}, got {kind!r}")
    missing = {"profile", "model_id"} - set(stamp or {})
    if missing:
        raise ValueError(f"the stamp of {Path(path).name} lacks {sorted(missing)}: pass "
                         "study.stamp()")
    clash = set(ENVELOPE_KEYS) & set(payload)
    if clash:
        raise ValueError(f"payload keys {sorted(clash)} would shadow the envelope's")
    return atomic_write_json(path, {"format": RESULT_FORMAT, "kind": kind, "stamp": dict(stamp),
                                    "params": dict(params or {}), **payload})


def read_result(path: str | os.PathLike, kind: str | None = None, made_by: str = "",
                missing_ok: bool = False) -> dict[str, Any] | None:
    """Read what :func:`write_result` wrote (``None`` for a missing file with
    ``missing_ok``). ``kind``: the kind expected; ``made_by``: the chapter that writes the
    file, named in every error. Files written before the envelope (no ``kind``) are read as
    the kind asked for."""
    p = Path(path)
    again = (f"run {made_by} first (python -m helpers.book.runner {made_by})" if made_by
             else "re-run the chapter that writes it")
    if not p.is_file():
        if missing_ok:
            return None
        raise FileNotFoundError(f"{p} is missing; {again}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p} is not valid JSON ({e}); delete it and {again}") from e
    if not isinstance(data, dict) or "stamp" not in data:
        raise ValueError(f"{p} is not a chapter result (no stamp); delete it and {again}")
    if kind is not None and data.get("kind", kind) != kind:
        raise ValueError(f"{p} holds a {data.get('kind')!r} result where a {kind!r} result "
                         f"was expected; {again}")
    return data


def result_stamps(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """The stamps of every result in ``folder`` (files in the envelope, by name order)."""
    out = []
    for f in sorted(Path(folder).glob("*.json")):
        try:
            out.append(read_result(f)["stamp"])
        except ValueError:  # an index or manifest beside the results, not a result
            continue
    return out


def quick_reason(limit: int | None = 0, n_boot: int | None = None) -> str:
    """Why a run with these parameters is quick (``''``: it is a full run): ``limit`` > 0 images
    per split, or ``n_boot`` < :data:`FULL_N_BOOT` (``None``: the chapter's default)."""
    parts = []
    if limit:
        parts.append(f"limit {int(limit)} images per split")
    if n_boot is not None and n_boot < FULL_N_BOOT:
        parts.append(f"n_boot {int(n_boot)}")
    return ", ".join(parts)



def output_root() -> Path:
    """The folder holding one sub-folder per profile (``IUXRAY_OUTPUT_DIR``)."""

    return Path(os.environ.get("IUXRAY_OUTPUT_DIR", REPO_ROOT / "outputs"))


def model_slug(spec: str) -> str:
    """A folder name for a model spec: readable, unique, filesystem-safe.

    ``tiny`` -> ``tiny``; ``hf-hub:microsoft/BiomedCLIP-...`` -> ``hf-hub-microsoft-BiomedCLIP-...``;
    ``local-dir:/a/b/clip`` -> ``local-dir-clip-<6 hex of the full path>`` (two folders of the
    same name stay apart).
    """
    if not spec or not isinstance(spec, str):
        raise ValueError(f"model spec must be a non-empty string, got {spec!r}")
    if spec.startswith("local-dir:"):
        path = spec[len("local-dir:"):].rstrip("/\\")
        tail = Path(path).name or "model"
        h = hashlib.sha256(str(Path(path).expanduser().resolve()).encode()).hexdigest()[:6]
        spec = f"local-dir-{tail}-{h}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", spec.replace(":", "-")).strip("-")


def _variant_suffix(variant: str, seed: int | None) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(repr(v) for v in VARIANTS)}")
    parts = [p for p in (variant, None if seed is None else f"seed{seed}") if p]
    return "".join(f"-{p}" for p in parts)


@dataclass(frozen=True)
class Artefacts:
    """The files of one (profile, model) pair. ``model`` is the spec as run (e.g. ``tiny``);
    ``quick``: the pair's quick runs (see the module docstring), kept apart from its full run."""

    profile: str
    model: str
    quick: bool = False

    @classmethod
    def of(cls, profile: str, model: str | None = None, quick: bool = False) -> "Artefacts":
        """The pair for ``profile`` and ``model`` (empty or ``None``: the profile's default);
        ``quick=True``: its quick runs' folder."""

        return cls(profile, model or get_profile(profile).model, bool(quick))

    @property
    def slug(self) -> str:
        return model_slug(self.model)

    @property
    def dir(self) -> Path:
        """Metrics JSON, test scores and findings of this pair (its ``quick/`` sub-folder for quick runs)."""
        d = output_root() / self.profile / self.slug
        return d / QUICK_DIR if self.quick else d

    @property
    def runs_dir(self) -> Path:
        """Fine-tuning checkpoints of this pair (large; kept out of the outputs folder)."""

        d = data_dir() / "runs" / self.profile / self.slug
        return d / QUICK_DIR if self.quick else d

    def metrics(self, setting: str) -> Path:
        """Test metrics JSON of a setting (``zs``, ``lp``, ``ft``)."""
        return self.dir / METRICS_FILES[_check_setting(setting)]

    def scores(self, setting: str, variant: str = "", seed: int | None = None) -> Path:
        """Test scores (``metrics.save_scores``) of a setting, variant and training seed."""
        return self.dir / f"{_check_setting(setting)}_test_scores{_variant_suffix(variant, seed)}.npz"

    def scored_seeds(self, setting: str, variant: str = "", made_by: str = "") -> list[int]:
        """The seeds whose test scores exist for (setting, variant); an error names the chapter
        that writes them when there are none."""
        prefix = self.scores(setting, variant, 0).name.rsplit("seed0", 1)[0] + "seed"
        seeds = sorted(int(p.stem[len(prefix):]) for p in self.dir.glob(f"{prefix}*.npz")
                       if p.stem[len(prefix):].isdigit())
        if not seeds:
            raise FileNotFoundError(f"no test scores {prefix}*.npz in {self.dir}; run "
                                    f"{made_by or 'the chapter that writes them'} first "
                                    f"(python -m helpers.book.runner {made_by or '<chapter>'})")
        return seeds

    def probe(self, variant: str = "") -> Path:
        """The fitted linear probe (``probe.save_probe``)."""
        return self.dir / f"probe{_variant_suffix(variant, None)}.npz"

    def finetune_runs(self, variant: str = "") -> Path:
        """Root folder of the fine-tuning runs of a variant (one sub-folder per run key)."""
        return self.runs_dir / f"finetune{_variant_suffix(variant, None)}"

    def finetune_index(self) -> Path:
        """JSON naming the run folder of every fine-tuned (variant, seed) that chapter 4 made."""
        return self.dir / "fine_tune_runs.json"

    @property
    def geometry(self) -> Path:
        return self.dir / GEOMETRY_FILE

    @property
    def grad_cam(self) -> Path:
        return self.dir / GRAD_CAM_FILE

    @property
    def cam_hits(self) -> Path:
        """Per-pair Grad-CAM hits of chapter 6's settings, read by its sanity checks (06b)."""
        return self.dir / CAM_HITS_FILE

    @property
    def grad_cam_sanity(self) -> Path:
        """Chapter 6b's record: cascade, randomised copies, off-prior scores."""
        return self.dir / SANITY_FILE

    @property
    def reference(self) -> Path:
        """Chance-level reference scorers on this pair's split (chapter 2)."""
        return self.dir / REFERENCE_FILE

    def findings(self, chapter: str) -> Path:
        """The finding records a chapter wrote (``findings.write_findings``)."""
        return self.dir / f"findings-{chapter}.json"


def _check_setting(setting: str) -> str:
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; valid: {', '.join(SETTINGS)}")
    return setting


def _has_results(folder: Path) -> bool:
    return any(p.name != "fine_tune_runs.json" for p in folder.glob("*.json"))


def all_pairs(root: str | os.PathLike | None = None) -> list[tuple[str, str, Path]]:
    """Every (profile, model slug, folder) under the output root that holds a JSON file.

    A pair's quick runs (``<slug>/quick``, listed with the slug ``<slug>/quick``) stand in only
    for a pair that has no full results: a quick run is never gathered beside or instead of a
    full one. Their stamps carry ``quick_run`` (why the run is quick)."""
    root = Path(root) if root else output_root()
    out = []
    for prof in sorted(p for p in root.glob("*") if p.is_dir()):
        for mdir in sorted(p for p in prof.glob("*") if p.is_dir()):
            if _has_results(mdir):
                out.append((prof.name, mdir.name, mdir))
            elif (mdir / QUICK_DIR).is_dir() and _has_results(mdir / QUICK_DIR):
                out.append((prof.name, f"{mdir.name}/{QUICK_DIR}", mdir / QUICK_DIR))
    return out
