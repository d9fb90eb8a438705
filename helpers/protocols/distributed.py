"""Scaling past one process: fine-tuning under ``torchrun`` (DistributedDataParallel) and
embedding extraction sharded across ranks.

Multi-GPU fine-tuning of a profile (one process per GPU, NCCL)::

    torchrun --nproc_per_node=4 -m helpers.protocols.distributed finetune --profile full

It trains exactly the runs chapter 4 would (same configuration, same run keys, one run per
``--seeds`` entry, real labels or ``--variant permuted``) into the same folders and records them
in the same (profile, model) index (:meth:`helpers.book.artefacts.Artefacts.finetune_index`), so
executing chapter 4 afterwards with the same parameters loads the finished runs instead of
training again. Every data parameter of chapter 4 (:data:`DATA_OPTIONS`: label policy, split,
views, report archive, images, limit) is an option with the same default and reaches
:func:`load_study` unchanged; the objective is named (``contrastive`` or ``bce``). On CPUs the
same command runs on the gloo backend (``--nproc_per_node=2``). Each rank takes a disjoint slice
of every global batch; DDP averages the gradients, so the update equals one process's on the
whole batch (the tests check weights and losses).
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from typing import Sequence

import numpy as np
import torch

from helpers.protocols.training import rank_and_world  # noqa: F401 - its home is helpers.protocols.training (no import cycle)
from helpers.book import params as P
from helpers.book.study import load_study
from helpers.config import PROFILES, get_profile
from helpers.protocols import finetune as F, repeats
from helpers.protocols.embeddings import compute_image_embeddings


def init(backend: str = "auto") -> tuple[int, int, torch.device]:
    """Join the process group that ``torchrun`` describes (env ``RANK``, ``WORLD_SIZE``, ...).

    Returns (rank, world size, this rank's device). NCCL with one GPU per rank where CUDA is
    available, gloo on CPU otherwise.
    """
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", rank))
    if cuda and backend == "nccl":
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


@torch.inference_mode()
def sharded_image_embeddings(model, cache, mean, std, batch_size: int = 64,
                             device: torch.device | str = "cpu") -> np.ndarray:
    """Image embeddings (N, d) of every row of ``cache``: rank ``r`` embeds rows ``r::world`` and
    the shards are gathered and put back in row order on every rank (a single process embeds all)."""
    import torch.distributed as dist


    rank, world = rank_and_world()
    rows = np.arange(len(cache))[rank::world]
    mine = compute_image_embeddings(model, cache, mean, std, rows, batch_size, device, progress=rank == 0)
    if world == 1:
        return mine
    parts: list = [None] * world
    dist.all_gather_object(parts, (rows, mine))
    out = np.empty((len(cache), mine.shape[1]), np.float32)
    for r, e in parts:
        out[r] = e
    return out


DATA_OPTIONS: tuple[str, ...] = ("image_dir", "style", "uncertain_policy", "split_seed", "split_fractions",
                                  "views", "reports_path", "limit", "on_error")
"""Chapter 4's data parameters (what it passes to :func:`load_study` besides profile and model):
each one is an option here, with :func:`load_study`'s own default, and reaches the study unchanged."""
_STUDY_DEFAULTS = {k: v.default for k, v in inspect.signature(load_study).parameters.items()}


def study_arguments(a: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`load_study` (besides profile, model and device) that the
    command line asks for: every data parameter of chapter 4 (:data:`DATA_OPTIONS`)."""
    return {k: getattr(a, k) for k in DATA_OPTIONS}


def finetune_config(a: argparse.Namespace) -> F.FinetuneConfig:
    """The fine-tuning configuration the command line asks for (0 = the profile's default)."""
    d = get_profile(a.profile).finetune
    return F.FinetuneConfig(objective=a.objective, epochs=a.epochs or d["epochs"], lr=a.lr or d["lr"],
                            batch_size=a.batch_size or d["batch_size"], patience=a.patience or d["patience"],
                            temperature=a.temperature, max_steps_per_epoch=a.max_steps_per_epoch or None)


def _finetune_main(args: argparse.Namespace) -> int:
    import torch.distributed as dist


    rank, world, dev = init(args.backend)
    cfg = finetune_config(args)
    study = load_study(args.profile, args.model, **study_arguments(args), device=str(dev))
    variant = "" if args.variant == "real" else args.variant
    done = repeats.finetune_runs(study, cfg, args.seeds, variant, progress=rank == 0)
    if rank == 0:
        for s, run in zip(args.seeds, done):
            print(f"{world} ranks, {args.variant} labels, seed {s}: best epoch {run.best_epoch}, "
                  f"val macro AUROC {run.best_val_auroc:.3f}, run folder {run.run_dir}")
        print(f"recorded in {study.artefacts.finetune_index()} (chapter 4 loads these runs)")
    dist.destroy_process_group()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``torchrun ... -m helpers.protocols.distributed`` (every option states its default)."""
    ap = argparse.ArgumentParser(prog="torchrun --nproc_per_node=N -m helpers.protocols.distributed",
                                 description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    f = sub.add_parser("finetune", help="fine-tune a profile's model with DDP (chapter 4's run)",
                       description="Fine-tune a profile's model with DDP: the same run as chapter 4 with the "
                                   "same parameters. 0 means the profile's default where stated.")
    f.add_argument("--profile", default="demo", help="demo or full (default: demo)")
    f.add_argument("--model", default="", help="model spec (default: empty, the profile's: tiny or biomedclip)")
    d = _STUDY_DEFAULTS
    f.add_argument("--style", default=d["style"],
                   help=f"demo only: phantom style, source or target (default: {d['style']})")
    f.add_argument("--uncertain-policy", default=d["uncertain_policy"],
                   help=f"as chapter 1: uncertain mentions positive or negative (default: {d['uncertain_policy']})")
    f.add_argument("--split-seed", type=int, default=d["split_seed"],
                   help=f"as chapter 1: seed of the report-level split (default: {d['split_seed']})")
    f.add_argument("--split-fractions", type=float, nargs=3, default=list(d["split_fractions"]),
                   metavar=("TRAIN", "VAL", "TEST"),
                   help="as chapter 1: train, val, test fractions (default: "
                        f"{' '.join(f'{x:g}' for x in d['split_fractions'])})")
    f.add_argument("--views", nargs="+", default=[d["views"]] if isinstance(d["views"], str) else list(d["views"]),
                   help=f"as chapter 1: image views in the study (default: {d['views']})")
    f.add_argument("--reports-path", default="",
                   help="as chapter 1: report archive (default: empty, torchxrayvision's copy)")
    f.add_argument("--limit", type=int, default=0, help="at most this many images per split (default: 0 = all)")
    f.add_argument("--on-error", default=d["on_error"],
                   help=f"an unreadable image: stop (naming it) or skip (counted) (default: {d['on_error']})")
    f.add_argument("--objective", default="contrastive", help="contrastive or bce (default: contrastive)")
    f.add_argument("--epochs", type=int, default=0, help="epochs (default: 0 = the profile's)")
    f.add_argument("--lr", type=float, default=0.0, help="learning rate (default: 0 = the profile's)")
    f.add_argument("--batch-size", type=int, default=0, help="global batch size (default: 0 = the profile's)")
    f.add_argument("--patience", type=int, default=0,
                   help="early-stopping patience in epochs (default: 0 = the profile's)")
    f.add_argument("--temperature", type=float, default=0.17, help="the original study's temperature T (default: 0.17)")
    f.add_argument("--max-steps-per-epoch", type=int, default=0,
                   help="cap on steps per epoch (default: 0 = whole split)")
    f.add_argument("--image-dir", default="", help="full only: folder of Open-I PNGs (default: the profile's)")
    f.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="training seeds, one run each; chapter 4 trains 0 .. n_seeds-1 (default: 0)")
    f.add_argument("--variant", default="real", choices=("real", "permuted"),
                   help="real labels, or chapter 4's permuted-label control (default: real)")
    f.add_argument("--backend", default="auto", choices=("auto", "nccl", "gloo"),
                   help="process-group backend: nccl, gloo or auto = nccl on GPUs, gloo on CPUs (default: auto)")
    return ap


def _check(a: argparse.Namespace) -> None:
    """Refuse bad options before joining the process group, with the same rules as chapter 4's
    parameters (:mod:`helpers.book.params`, paths made absolute as the runner makes them);
    refuse an option the profile would ignore; refuse running outside ``torchrun``."""

    prof = get_profile(a.profile)
    for name, value in (("model", a.model), *((k, getattr(a, k)) for k in DATA_OPTIONS),
                        ("objective", a.objective), ("epochs", a.epochs), ("lr", a.lr),
                        ("batch_size", a.batch_size), ("patience", a.patience),
                        ("temperature", a.temperature), ("max_steps_per_epoch", a.max_steps_per_epoch),
                        *(("seed", s) for s in a.seeds)):
        try:
            checked = P.check(name, value)
        except P.ParameterError as e:
            raise ValueError(str(e).replace(f"parameter {name!r}", f"--{name.replace('_', '-')}")) from None
        if name != "seed":
            setattr(a, name, checked)
        need = P.PROFILE_IMAGES.get(name)
        if need is not None and prof.images != need and value not in ("", _STUDY_DEFAULTS[name]):
            users = [p for p, pr in PROFILES.items() if pr.images == need]
            raise ValueError(f"--{name.replace('_', '-')} is read only by the {', '.join(users)} profile; "
                             f"the {a.profile} profile would ignore it")
    if a.objective not in F.OBJECTIVES or a.objective == "lp-ft":
        raise ValueError(f"--objective {a.objective!r}: under torchrun only contrastive or bce (LP-FT's head "
                         f"starts from chapter 3's probe, and 'sweep' is chapter 4's choice of one of them: "
                         f"name the objective)")
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"not started by torchrun (environment lacks {', '.join(missing)}); run e.g. "
                           f"`torchrun --nproc_per_node=2 -m helpers.protocols.distributed finetune --profile {a.profile}`")


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        _check(a)
        return _finetune_main(a)
    except KeyboardInterrupt:
        print("\ninterrupted; a finished epoch is kept and the run resumes from it", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
