"""Training runs of a study: several seeds, and the permuted-label negative control.

A claim about what training *learns* needs two things beside it: the spread between training
seeds (a single run can be lucky), and a run that cannot have learned it. This module trains
both, for the linear probe and for fine-tuning, and records where every run lives so later
chapters load them by (variant, seed) instead of by file name:

* ``variant=""``: the real labels, seeds ``0 .. n_seeds-1``;
* ``variant="permuted"``: every training (and validation) report receives the label vector of
  another report of the same split, drawn by a random permutation (:func:`permuted_labels`).
  Label frequencies and co-occurrences stay exactly as they are; only the link between an
  image and its labels is broken, so whatever this run "finds" is an artefact of the pipeline.
  Test labels are never permuted: test always asks about the real findings.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch

from helpers.book.artefacts import Artefacts
from helpers.book.progress import bar
from helpers.config import data_dir
from helpers.protocols.embeddings import image_embeddings
from helpers.protocols.finetune import FinetuneConfig, finetune, load_finetuned
from helpers.protocols.training import rank_and_world
from helpers.storage import atomic_write_json
from helpers.workers import pool

PERMUTATION_SEED = 1_000
"""Offset of the label permutation's random seed (permutation ``s`` uses ``PERMUTATION_SEED + s``)."""


def permuted_labels(y: np.ndarray, groups: Sequence, rows: np.ndarray, seed: int) -> np.ndarray:
    """A copy of targets ``y`` (N, k) whose ``rows`` carry the labels of another report.

    ``groups`` (N,) is the report id of each row. The reports among ``rows`` are permuted as a
    whole (an image takes the label vector of the first image of the report it is mapped to), so
    every label vector of the split survives, with its co-occurrences; rows outside ``rows`` are
    unchanged.
    """
    y = np.asarray(y)
    rows = np.asarray(rows)
    groups = np.asarray(groups)
    reports, first, inverse = np.unique(groups[rows], return_index=True, return_inverse=True)
    perm = np.random.default_rng(PERMUTATION_SEED + seed).permutation(len(reports))
    out = y.copy()
    out[rows] = y[rows[first[perm]]][inverse]
    return out


def control_targets(study, seed: int) -> np.ndarray:
    """The study's targets (N, k) with training and validation labels permuted across reports."""
    y = study.y()
    groups = study.table.report_id.to_numpy()
    for split in ("train", "val"):
        y = permuted_labels(y, groups, study.rows(split), seed + (0 if split == "train" else 500))
    return y


@dataclass
class RunPlan:
    """Runs of one fine-tuned model: its config, training seeds, variant (``""``,
    ``"permuted"``, ...) and, for ``lp-ft``, the head's start (a probe, or a function of
    ``(seed, targets)`` returning one; see :func:`finetune_runs`)."""

    cfg: FinetuneConfig
    seeds: Sequence[int]
    variant: str = ""
    probe: Any = None


SIDE_BY_SIDE = 2
"""Runs trained at once on a CPU, one thread each. A training step of the demo model does not
use two threads fully (``make bench`` times the step at each thread count), so on two cores
two one-thread runs side by side train more steps per second than one run on two threads."""
_PLANNED: tuple | None = None
"""(study, jobs) of :func:`train_side_by_side`, inherited by its forked workers."""


def _one_run(study, cfg: FinetuneConfig, seed: int, variant: str, probe, progress: bool):
    """Train (or load) one run: the targets of its variant and seed, its LP-FT head."""
    y = control_targets(study, seed) if variant == "permuted" else study.y()
    head = None
    if cfg.objective == "lp-ft":
        head = probe(seed, y) if callable(probe) else probe
    return finetune(study.model, study.tokenizer, study.pixels, y, study.rows("train"),
                    study.rows("val"), study.labels, study.info.mean, study.info.std,
                    study.info.weights_sha256, replace(cfg, seed=seed),
                    study.artefacts.finetune_runs(variant), device=study.device,
                    progress=progress, probe=head)


def _train_job(i: int) -> int:
    """Worker: train job ``i`` of :data:`_PLANNED` on one thread, without a progress bar, then
    embed every image with the trained model (:func:`run_embeddings`), so that the chapters
    that read the run's embeddings find them cached."""
    study, jobs = _PLANNED
    plan, seed = jobs[i]
    torch.set_num_threads(1)
    result = _one_run(study, plan.cfg, seed, plan.variant, plan.probe, progress=False)
    run_embeddings(study, result.scorer)
    return i


def weights_id(scorer) -> str:
    """A name for a fine-tuned model's image tower: ``finetuned-`` and the SHA-256 of its
    weights (every tensor of ``scorer.clip.visual``, by name), so two models share it only if
    every image embedding they give is the same."""
    h = hashlib.sha256()
    for name, t in sorted(scorer.clip.visual.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return "finetuned-" + h.hexdigest()[:32]


def run_embeddings(study, scorer) -> np.ndarray:
    """Image embeddings (N, d), unnormalised, of every row of the study's pixel cache under a
    fine-tuned model (a :class:`finetune.LabelScorer`), cached in the data folder under
    :func:`weights_id` (:func:`embeddings.image_embeddings`). Computed once, by the worker that
    trained the run (:func:`train_side_by_side`), and read by chapter 4 (its test and
    validation logits, the probe on fine-tuned features) and chapter 5."""
    return image_embeddings(scorer.clip, weights_id(scorer), study.pixels, study.info.mean,
                            study.info.std, device=study.device, progress=False)


def train_side_by_side(study, plans: Sequence[RunPlan], workers: int = SIDE_BY_SIDE,
                       progress: bool = True) -> list[list]:
    """Every plan's runs (:class:`finetune.FinetuneResult` per seed, per plan).

    On a CPU with at least ``workers`` cores, every run first trains in one of ``workers``
    forked processes with one thread each (a finished run returns at once), with one
    progress bar on the console; then :func:`finetune_runs` loads each finished run here and
    records it. Each run is deterministic at its thread count. Elsewhere (a GPU, one core,
    ``workers`` 1) the runs train one after another in this process.
    """
    global _PLANNED
    plans = [replace(p, cfg=replace(p.cfg, cpu_threads=1)) for p in plans]
    # the longest runs first, so that no long run is left to train alone at the end
    jobs = sorted(((p, s) for p in plans for s in p.seeds), key=lambda j: -j[0].cfg.last_epoch)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if study.device.type == "cpu" and min(workers, cores or 1, len(jobs)) > 1:
        _PLANNED = (study, jobs)
        try:
            with pool(min(workers, len(jobs))) as p:
                for _ in bar(p.imap_unordered(_train_job, range(len(jobs))), total=len(jobs),
                             desc="fine-tuning runs, side by side", disable=not progress):
                    pass
        finally:
            _PLANNED = None
    return [finetune_runs(study, p.cfg, list(p.seeds), p.variant, progress, p.probe)
            if len(p.seeds) else [] for p in plans]


def finetune_runs(study, cfg, seeds: Sequence[int], variant: str = "", progress: bool = True,
                  probe=None) -> list:
    """Fine-tune one run per seed (``cfg.seed`` replaced); resumed or reloaded when already done.

    ``variant="permuted"`` trains on :func:`control_targets` of the same seed. ``probe``: the
    head's start for ``cfg.objective == "lp-ft"``: chapter 3's probe, or a function of
    ``(seed, targets)`` returning one (for the permuted variant, a probe fitted on the same
    permuted labels). The run folders
    are recorded in the (profile, model) index (:meth:`Artefacts.finetune_index`). Returns the
    :class:`finetune.FinetuneResult` of every seed, in order.
    """

    out = [_one_run(study, cfg, s, variant, probe, progress) for s in seeds]
    _record(study.artefacts, variant, {s: r.run_dir for s, r in zip(seeds, out)})
    return out


def _record(arts: Artefacts, variant: str, run_dirs: dict) -> None:
    """Add (variant, seed) -> run folder to the index; under DDP only rank 0 writes it."""

    if rank_and_world()[0] != 0:
        return

    path = arts.finetune_index()
    index = json.loads(path.read_text()) if path.is_file() else {}
    index[variant or "real"] = {str(s): str(d.relative_to(data_dir())) for s, d in run_dirs.items()}
    atomic_write_json(path, index)


def finetuned_scorer(study, variant: str = "", seed: int = 0):
    """The fine-tuned :class:`finetune.LabelScorer` of (variant, seed) that chapter 4 trained."""

    arts = study.artefacts
    path = arts.finetune_index()
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run chapter 4 first: python -m helpers.book.runner 04_fine_tune")
    runs = json.loads(path.read_text()).get(variant or "real", {})
    if str(seed) not in runs:
        raise FileNotFoundError(f"chapter 4 has no fine-tuned run for variant {variant or 'real'!r}, seed {seed} "
                                f"(it has seeds {sorted(runs)}); re-run 04_fine_tune with more seeds")
    return load_finetuned(study.model, study.tokenizer, study.labels, data_dir() / runs[str(seed)],
                          study.device)


def finetuned_seeds(study, variant: str = "") -> list[int]:
    """The seeds chapter 4 trained for a variant (empty when it has not run)."""
    path = study.artefacts.finetune_index()
    if not path.is_file():
        return []
    return sorted(int(s) for s in json.loads(path.read_text()).get(variant or "real", {}))


def finetuned_embeddings(study, rows: np.ndarray, variant: str = "") -> list[np.ndarray]:
    """Image embeddings (len(rows), d) of every fine-tuned seed of a variant, one array per seed
    (:func:`run_embeddings`: cached when chapter 4 trained the run)."""

    seeds = finetuned_seeds(study, variant)
    if not seeds:
        raise FileNotFoundError("chapter 4 has not trained any model for variant "
                                f"{variant or 'real'!r}; run python -m helpers.book.runner 04_fine_tune")
    return [run_embeddings(study, finetuned_scorer(study, variant, s))[np.asarray(rows)]
            for s in seeds]
