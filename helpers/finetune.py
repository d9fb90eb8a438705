"""Full fine-tuning of the CLIP model on the IU-Xray training split (chapter 4).

Both objectives end in one logit per label ``z_ij`` for image ``i`` and label ``j`` and the loss
``BCE(sigmoid(z_ij), y_ij)`` averaged over images and labels:

* ``contrastive`` (image-text, with label prompts): ``z_ij = (<u_i, v_j+> - <u_i, v_j->) / T``,
  the log-odds of CheXzero's softmax over label ``j``'s positive and negative prompt, with
  ``u`` the normalised image embedding, ``v`` the normalised text embeddings (recomputed every
  step: the text tower trains too) and a fixed temperature ``T`` (the seed's 0.17). Scoring after
  training is exactly chapter 2's paired-prompt zero-shot rule.
* ``bce`` (classification head): ``z_i = W u_i + b``, a linear head on the normalised image
  embedding, initialised at the zero-shot solution ``W_j = (v_j+ - v_j-) / T``, ``b = 0``; the
  text tower is then unused and frozen.

Every weight of the image tower is trained (Adam, cosine schedule with warm-up, bf16 autocast
on GPU). After each epoch the validation macro AUROC decides early stopping; the best epoch's
weights are kept. ``last.pt`` (model, head, optimiser, history) is written atomically after every
epoch, so an interrupted run resumes from its last finished epoch; a finished run is loaded,
not retrained. Under ``torchrun`` the model is wrapped in DistributedDataParallel and each rank
takes a disjoint slice of every global batch.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .io import sha256_bytes

OBJECTIVES = ("contrastive", "bce")
VERSION = "1"
"""Part of every run key: bump when training semantics change, so stale runs are not reloaded."""


@dataclass
class FinetuneConfig:
    """Fine-tuning parameters. ``batch_size`` is the global batch (split across DDP ranks)."""

    objective: str = "contrastive"
    optimizer: str = "adam"
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-6
    weight_decay: float = 0.0
    temperature: float = 0.17
    patience: int = 5
    warmup_frac: float = 0.05
    augmentation: bool = True
    template: str = "bare"
    seed: int = 0
    max_steps_per_epoch: int | None = None

    def validate(self) -> None:
        """Raise ``ValueError`` naming a bad parameter."""
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' (the seed's) or 'sgd', got {self.optimizer!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        for name in ("epochs", "batch_size", "patience"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not (self.lr > 0 and self.temperature > 0):
            raise ValueError(f"lr and temperature must be > 0, got {self.lr!r}, {self.temperature!r}")


class LabelScorer(nn.Module):
    """CLIP model + label prompts (+ head): images (B, 3, S, S) -> label logits (B, k)."""

    def __init__(self, clip: nn.Module, prompt_tokens: torch.Tensor, objective: str, temperature: float,
                 head_init: torch.Tensor | None = None):
        super().__init__()
        self.clip = clip
        self.objective = objective
        self.temperature = temperature
        self.register_buffer("prompt_tokens", prompt_tokens, persistent=False)  # (2k, L): k pos then k neg
        self.head = None
        if objective == "bce":
            k, d = head_init.shape
            self.head = nn.Linear(d, k)
            with torch.no_grad():
                self.head.weight.copy_(head_init)
                self.head.bias.zero_()
            for p in self.clip.text.parameters():
                p.requires_grad_(False)
        self.clip.logit_scale.requires_grad_(False)

    def text_directions(self) -> torch.Tensor:
        """``(v+ - v-) / T`` for every label: (k, d)."""
        v = nn.functional.normalize(self.clip.encode_text(self.prompt_tokens), dim=-1)
        k = v.shape[0] // 2
        return (v[:k] - v[k:]) / self.temperature

    def embedding_logits(self, e: torch.Tensor, directions: torch.Tensor | None = None) -> torch.Tensor:
        """Label logits (B, k) of raw image embeddings (B, d). ``directions`` (k, d): precomputed
        :meth:`text_directions` (for a frozen text side); computed here when ``None``."""
        u = nn.functional.normalize(e, dim=-1)
        if self.head is not None:
            return self.head(u)
        d = self.text_directions() if directions is None else directions
        return u @ d.to(u.device, u.dtype).T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding_logits(self.clip.encode_image(x))


@dataclass
class FinetuneResult:
    """Outcome of :func:`finetune`. ``history`` has one dict per epoch."""

    scorer: LabelScorer
    history: list[dict[str, float]]
    best_epoch: int
    best_val_auroc: float
    stopped_early: bool
    resumed_from: int
    run_dir: Path
    wall_s: float
    config: dict = field(default_factory=dict)


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * base * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def build_scorer(model: nn.Module, tokenizer, labels: Sequence[str], cfg: FinetuneConfig) -> LabelScorer:
    """A trainable copy of ``model`` with the label prompts of ``cfg.template``."""
    from .pretrain import trim_tokens
    from .zeroshot import prompts

    pos = [prompts(c, cfg.template)[0][0] for c in labels]
    neg = [prompts(c, cfg.template)[1][0] for c in labels]
    clip = copy.deepcopy(model).float()
    tokens = trim_tokens(tokenizer(pos + neg)).to(next(clip.parameters()).device)
    head = None
    if cfg.objective == "bce":
        tmp = LabelScorer(clip, tokens, "contrastive", cfg.temperature)
        with torch.no_grad():
            head = tmp.text_directions().float()
    return LabelScorer(clip, tokens, cfg.objective, cfg.temperature, head)


@torch.inference_mode()
def predict_logits(scorer: nn.Module, pixels, rows: Sequence[int], mean, std, batch_size: int = 128,
                   device: torch.device | str = "cpu") -> np.ndarray:
    """Label logits (len(rows), k) of pixel-cache rows, in eval mode."""
    from .embeddings import autocast
    from .images import to_model_input

    dev = torch.device(device)
    was = scorer.training
    scorer.eval()
    rows = np.asarray(rows)
    out = []
    for i in range(0, len(rows), batch_size):
        x = to_model_input(np.asarray(pixels.pixels[rows[i:i + batch_size]]), mean, std).to(dev)
        with autocast(dev):
            out.append(scorer(x).float().cpu())
    scorer.train(was)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def run_key(cfg: FinetuneConfig, base_weights: str, pixel_key: str, train_rows, val_rows, y) -> str:
    """Hash of everything that determines a run: config, base weights, images, split, labels."""
    parts = [VERSION, json.dumps(asdict(cfg), sort_keys=True), base_weights, pixel_key,
             sha256_bytes(np.asarray(train_rows).tobytes()), sha256_bytes(np.asarray(val_rows).tobytes()), sha256_bytes(np.ascontiguousarray(y).tobytes())]
    return sha256_bytes("|".join(parts).encode(), 16)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def finetune(model: nn.Module, tokenizer, pixels, y: np.ndarray, train_rows: Sequence[int],
             val_rows: Sequence[int], labels: Sequence[str], mean, std, base_weights: str,
             cfg: FinetuneConfig, run_root: str | os.PathLike, device: torch.device | str = "cpu",
             progress: bool = True, stop_after_epochs: int | None = None) -> FinetuneResult:
    """Fine-tune a copy of ``model``; resume or reload a run with the same key.

    Parameters
    ----------
    pixels : :class:`images.PixelCache` (uint8 (N, S, S)). y : (N, k) 0/1 targets.
    train_rows, val_rows : row indices into ``pixels`` / ``y``.
    run_root : folder; the run lives in ``run_root/<key>/`` (``last.pt``, ``best.pt``, ``history.json``).
    stop_after_epochs : stop (as if interrupted) after this many epochs of this call; for tests.
    """
    import torch.distributed as dist
    from tqdm.auto import tqdm

    from .distributed import rank_and_world
    from .embeddings import autocast
    from .io import atomic_write_json
    from .metrics import per_label_auroc
    from .pretrain import augment, normalize01

    cfg.validate()
    t0 = time.perf_counter()
    dev = torch.device(device)
    rank, world = rank_and_world()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of ranks {world}")
    train_rows, val_rows = np.asarray(train_rows), np.asarray(val_rows)
    y = np.asarray(y).astype(np.float32)
    key = run_key(cfg, base_weights, pixels.key, train_rows, val_rows, y)
    run_dir = Path(run_root) / key
    torch.manual_seed(cfg.seed)
    scorer = build_scorer(model, tokenizer, labels, cfg).to(dev)
    net: nn.Module = scorer
    if world > 1:
        net = nn.parallel.DistributedDataParallel(scorer, device_ids=[dev.index] if dev.type == "cuda" else None)
    params = [p for p in scorer.parameters() if p.requires_grad]
    opt = (torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay) if cfg.optimizer == "adam" else
           torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay))
    steps_per_epoch = len(train_rows) // cfg.batch_size
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    if steps_per_epoch < 1:
        raise ValueError(f"the training split has {len(train_rows)} images, fewer than one batch of {cfg.batch_size}")
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, int(cfg.warmup_frac * total))
    history: list[dict[str, float]] = []
    best = (-np.inf, 0)
    start = 0
    last = run_dir / "last.pt"
    if last.is_file():
        ck = torch.load(last, map_location=dev, weights_only=False)
        scorer.load_state_dict(ck["scorer"])
        opt.load_state_dict(ck["opt"])
        history, best, start = ck["history"], tuple(ck["best"]), ck["epoch"]
        torch.set_rng_state(ck["rng"])  # dropout draws continue as if never interrupted
        if dev.type == "cuda" and ck.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ck["cuda_rng"], dev)
    resumed_from = start
    finished = bool(history) and (start >= cfg.epochs or history[-1].get("stop", False))
    loss_fn = nn.BCEWithLogitsLoss()
    per_rank = cfg.batch_size // world
    yt = torch.from_numpy(y)
    ran = 0
    for ep in range(start, cfg.epochs):
        if finished or (stop_after_epochs is not None and ran >= stop_after_epochs):
            break
        g = torch.Generator().manual_seed(cfg.seed * 100003 + ep)  # same order on resume
        order = train_rows[torch.randperm(len(train_rows), generator=g).numpy()]
        scorer.train()
        ep_t0 = time.perf_counter()
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {ep + 1}/{cfg.epochs}", disable=not progress or rank)
        for b in bar:
            step = ep * steps_per_epoch + b
            batch = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            batch = np.sort(batch)
            mine = batch[rank * per_rank:(rank + 1) * per_rank]
            if cfg.augmentation:  # drawn for the whole global batch, so every rank sees what one process would
                x01 = augment(torch.from_numpy(np.asarray(pixels.pixels[batch])).float().div_(255), g)
                x01 = x01[rank * per_rank:(rank + 1) * per_rank]
            else:
                x01 = torch.from_numpy(np.asarray(pixels.pixels[mine])).float().div_(255)
            x = normalize01(x01, mean, std).to(dev, non_blocking=True)
            for gr in opt.param_groups:
                gr["lr"] = cosine_lr(step, total, cfg.lr, warmup)
            with autocast(dev):
                loss = loss_fn(net(x).float(), yt[mine].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
            if b % 10 == 9:
                bar.set_postfix(loss=f"{float(torch.stack(losses[-10:]).mean()):.4f}")
        train_loss = torch.stack(losses).mean()
        if world > 1:
            dist.all_reduce(train_loss)
            train_loss /= world
        val_logits = predict_logits(scorer, pixels, val_rows, mean, std, device=dev)
        val_loss = float(loss_fn(torch.from_numpy(val_logits), yt[val_rows]))
        val_auc = float(np.nanmean(per_label_auroc(y[val_rows].astype(int), val_logits)))
        improved = val_auc > best[0]
        if improved:
            best = (val_auc, ep + 1)
        stop = (ep + 1 - best[1]) >= cfg.patience
        history.append({"epoch": ep + 1, "train_loss": float(train_loss), "val_loss": val_loss,
                        "val_auroc": val_auc, "lr_end": opt.param_groups[0]["lr"], "stop": bool(stop),
                        "epoch_s": time.perf_counter() - ep_t0})
        if rank == 0:
            if improved:
                _atomic_torch_save({"scorer": scorer.state_dict(), "epoch": ep + 1}, run_dir / "best.pt")
            _atomic_torch_save({"scorer": scorer.state_dict(), "opt": opt.state_dict(), "history": history,
                                "best": list(best), "epoch": ep + 1, "config": asdict(cfg),
                                "rng": torch.get_rng_state(),
                                "cuda_rng": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None}, last)
            atomic_write_json(run_dir / "history.json", {"config": asdict(cfg), "history": history})
        ran += 1
        if stop:
            break
    if world > 1:
        dist.barrier()
    if (run_dir / "best.pt").is_file():
        scorer.load_state_dict(torch.load(run_dir / "best.pt", map_location=dev, weights_only=False)["scorer"])
    scorer.eval()
    return FinetuneResult(scorer, history, int(best[1]), float(best[0]),
                          bool(history and history[-1]["stop"]), resumed_from, run_dir,
                          time.perf_counter() - t0, asdict(cfg))


def load_finetuned(model: nn.Module, tokenizer, labels: Sequence[str], run_dir: str | os.PathLike,
                   device: torch.device | str = "cpu") -> LabelScorer:
    """The best epoch of a finished (or interrupted) run in ``run_dir``, on top of ``model``."""
    run_dir = Path(run_dir)
    best, last = run_dir / "best.pt", run_dir / "last.pt"
    if not best.is_file() or not last.is_file():
        raise FileNotFoundError(f"no fine-tuning checkpoint in {run_dir} (expected best.pt and last.pt); "
                                f"run chapter 4 first: python -m helpers.run 04_fine_tune")
    cfg = FinetuneConfig(**torch.load(last, map_location="cpu", weights_only=False)["config"])
    scorer = build_scorer(model, tokenizer, labels, cfg).to(device)
    scorer.load_state_dict(torch.load(best, map_location=device, weights_only=False)["scorer"])
    return scorer.eval()
