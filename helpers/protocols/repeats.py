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

import json
from dataclasses import replace
from typing import Sequence

import numpy as np

from helpers.book.artefacts import Artefacts
from helpers.config import data_dir
from helpers.protocols.embeddings import compute_image_embeddings
from helpers.protocols.finetune import finetune, load_finetuned
from helpers.protocols.training import rank_and_world
from helpers.storage import atomic_write_json

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

    arts = study.artefacts
    out = []
    for s in seeds:
        y = control_targets(study, s) if variant == "permuted" else study.y()
        head = None
        if cfg.objective == "lp-ft":
            head = probe(s, y) if callable(probe) else probe
        out.append(finetune(study.model, study.tokenizer, study.pixels, y, study.rows("train"),
                            study.rows("val"), study.labels, study.info.mean, study.info.std,
                            study.info.weights_sha256, replace(cfg, seed=s), arts.finetune_runs(variant),
                            device=study.device, progress=progress, probe=head))
    _record(arts, variant, {s: r.run_dir for s, r in zip(seeds, out)})
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
    (computed for ``rows`` only: no cache, a few seconds per seed on the demo)."""

    seeds = finetuned_seeds(study, variant)
    if not seeds:
        raise FileNotFoundError("chapter 4 has not trained any model for variant "
                                f"{variant or 'real'!r}; run python -m helpers.book.runner 04_fine_tune")
    return [compute_image_embeddings(finetuned_scorer(study, variant, s).clip, study.pixels,
                                     study.info.mean, study.info.std, rows=rows,
                                     device=study.device, progress=False) for s in seeds]
