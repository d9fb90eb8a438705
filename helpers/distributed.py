"""Scaling past one process: fine-tuning under ``torchrun`` (DistributedDataParallel) and
embedding extraction sharded across ranks.

Multi-GPU fine-tuning of a profile (one process per GPU, NCCL)::

    torchrun --nproc_per_node=4 -m helpers.distributed finetune --profile full

It trains exactly the run chapter 4 would (same configuration, same run key), so executing
chapter 4 afterwards with the same parameters loads the finished run instead of training
again. On CPUs the same command runs on the gloo backend (``--nproc_per_node=2``).
Each rank takes a disjoint slice of every global batch; DDP averages the gradients, so the
update equals one process's on the whole batch (the tests check weights and losses).
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence

import numpy as np
import torch

from .training import rank_and_world  # noqa: F401 - its home is helpers.training (no import cycle)


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

    from .embeddings import compute_image_embeddings

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


def _finetune_main(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from . import finetune as F
    from .config import data_dir, get_profile
    from .study import load_study

    rank, world, dev = init(args.backend)
    d = get_profile(args.profile).finetune
    cfg = F.FinetuneConfig(objective=args.objective, epochs=args.epochs or d["epochs"], lr=args.lr or d["lr"],
                           batch_size=args.batch_size or d["batch_size"], patience=args.patience or d["patience"],
                           temperature=args.temperature, max_steps_per_epoch=args.max_steps_per_epoch or None,
                           seed=args.seed)
    study = load_study(args.profile, args.model or None, style=args.style, limit=args.limit or None,
                       device=str(dev))
    run = F.finetune(study.model, study.tokenizer, study.pixels, study.y(), study.rows("train"), study.rows("val"),
                     study.labels, study.info.mean, study.info.std, study.info.weights_sha256, cfg,
                     data_dir() / "runs" / args.profile / "finetune", device=dev, progress=rank == 0)
    if rank == 0:
        print(f"{world} ranks: best epoch {run.best_epoch}, val macro AUROC {run.best_val_auroc:.3f}, "
              f"run folder {run.run_dir}")
    dist.destroy_process_group()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="torchrun ... -m helpers.distributed", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    f = sub.add_parser("finetune", help="fine-tune a profile's model with DDP (chapter 4's run)")
    f.add_argument("--profile", default="demo")
    f.add_argument("--model", default="")
    f.add_argument("--style", default="target")
    f.add_argument("--limit", type=int, default=0)
    f.add_argument("--objective", default="contrastive")
    f.add_argument("--epochs", type=int, default=0)
    f.add_argument("--lr", type=float, default=0.0)
    f.add_argument("--batch-size", type=int, default=0)
    f.add_argument("--patience", type=int, default=0)
    f.add_argument("--temperature", type=float, default=0.17)
    f.add_argument("--max-steps-per-epoch", type=int, default=0)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--backend", default="auto", help="nccl, gloo or auto")
    a = ap.parse_args(argv)
    return _finetune_main(a)


if __name__ == "__main__":
    raise SystemExit(main())
