"""Full fine-tuning of the CLIP model on the IU-Xray training split (chapter 4).

Both objectives end in one logit per label ``z_ij`` for image ``i`` and label ``j`` and the loss
``BCE(sigmoid(z_ij), y_ij)`` averaged over images and labels:

* ``contrastive`` (image-text, with label prompts): ``z_ij = (<u_i, v_j+> - <u_i, v_j->) / T``,
  the log-odds of CheXzero's softmax over label ``j``'s positive and negative prompt, with
  ``u`` the normalised image embedding, ``v`` the normalised text embeddings (recomputed every
  step: the text tower trains too) and a fixed temperature ``T`` (the original study's 0.17). Scoring after
  training is exactly chapter 2's paired-prompt zero-shot rule.
* ``bce`` (classification head): ``z_i = W u_i + b``, a linear head on the normalised image
  embedding, initialised at the zero-shot solution ``W_j = (v_j+ - v_j-) / T``, ``b = 0``; the
  text tower is then unused and frozen.
* ``lp-ft`` (Kumar et al. 2022): the same head, initialised at chapter 3's linear probe
  (:func:`probe_head`: the probe's logit rewritten as a function of the normalised embedding),
  then every weight trained. Starting from a head that already fits the frozen features keeps
  the first, large gradients from distorting the pretrained features.

Every weight of the image tower is trained (Adam, cosine schedule with warm-up, bf16 autocast
on GPU). After each epoch the validation macro AUROC decides early stopping; the best epoch's
weights are kept. Every ``checkpoint_every`` epochs (default: every epoch) and at the last one,
``last.pt`` (model, head, optimiser, history, random state, and the best weights when they are
not the current ones) and ``best.pt`` are written atomically on a background thread, so an
interrupted run resumes from its last checkpoint and replays the lost epochs exactly; a finished
run is loaded, not retrained. Under ``torchrun`` the model is wrapped in DistributedDataParallel
and each rank takes a disjoint slice of every global batch.

The fast path (settings in :class:`FinetuneConfig`; ``auto`` means on for CUDA, off on a CPU):
the training and validation rows' uint8 pixels are copied to the device once
(``device_pixels``) and augmented there (:func:`training.augment_pixels`, with the noise image
drawn on the device: ``augment_noise``); fused Adam on CUDA; the loss of the fixed-shape step is
``torch.compile``-d (``compile``) with a fallback to eager; the text directions are computed once
per validation pass; checkpoints are written while training goes on. ``compile``,
``device_pixels`` and ``checkpoint_every`` change speed only (results equal up to float
round-off) and are not part of the run key.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from helpers.storage import sha256_bytes
from helpers.analysis.metrics import per_label_auroc
from helpers.book.progress import bar as tqdm
from helpers.protocols.training import (
    BackgroundWriter,
    DevicePixels,
    augment_pixels,
    autocast,
    cosine_lr,
    cpu_threads_for_load,
    epoch_generator,
    maybe_compile,
    normalize01,
    optimizer_step,
    rank_and_world,
    rng_state,
    seed_all,
    set_lr,
    set_rng_state,
    to_cpu,
    to_device,
    trim_tokens,
)
from helpers.protocols.zeroshot import prompts

OBJECTIVES = ("contrastive", "bce", "lp-ft")
OBJECTIVE_PARAMETER = ("sweep",) + OBJECTIVES
"""Chapter 4's ``objective`` parameter: ``sweep`` takes the budget sweep's choice."""
SEED_LR = 1e-6
"""The original study's fine-tuning learning rate."""
HEAD_OBJECTIVES = ("bce", "lp-ft")
"""Objectives with a classification head (the text tower unused and frozen)."""
VERSION = "1"
"""Part of every run key: bump when training semantics change, so stale runs are not reloaded."""
SPEED_FIELDS = ("compile", "checkpoint_every", "device_pixels", "cpu_threads")
"""Settings that change speed only (the numbers agree up to float round-off): not in the run key."""
KEY_NEUTRAL = {"cpu_bf16": False, "augment_noise": "host", "head_init": "", "stop_epoch": 0}
"""Settings added after runs existed, at the value that reproduces those runs: left out of the
key at that value, so earlier runs keep their keys."""
SWITCHES = ("auto", "on", "off")


@dataclass
class FinetuneConfig:
    """Fine-tuning parameters. ``batch_size`` is the global batch (split across DDP ranks).

    Speed settings: ``compile`` (``torch.compile`` the step), ``device_pixels`` (uint8 pixels
    resident on the device) are ``auto`` / ``on`` / ``off`` (``auto``: on for CUDA only);
    ``checkpoint_every``: epochs between checkpoints (the last epoch is always saved);
    ``cpu_threads``: torch threads on a CPU (0: chosen once at the start of a run from the
    machine's load, at most the process's setting; see :func:`training.cpu_threads_for_load`);
    ``augment_noise``: ``host`` (the noise image drawn on the host, as :func:`training.augment`),
    ``device`` (drawn on the device), ``auto`` (``device`` on CUDA); ``cpu_bf16``: bf16 autocast
    on a CPU (changes the numbers, so it is part of the run key).
    """

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
    cpu_bf16: bool = False
    augment_noise: str = "auto"
    compile: str = "auto"
    device_pixels: str = "auto"
    checkpoint_every: int = 1
    cpu_threads: int = 0
    head_init: str = ""
    """``lp-ft`` only: the hash of the probe the head starts from (:func:`probe_head`); part of
    the run key, so a run never reloads with another probe's head."""
    stop_epoch: int = 0
    """Stop after this epoch (1-based) of the ``epochs``-long schedule; 0 runs it all. The learning
    rate follows the full schedule either way, so a run stopped at the budget sweep's best epoch
    is the sweep's run up to the epoch the sweep chose on validation (part of the run key)."""

    @property
    def last_epoch(self) -> int:
        """The epoch (1-based) a run ends at, unless early stopping ends it sooner."""
        return self.stop_epoch or self.epochs

    def validate(self) -> None:
        """Raise ``ValueError`` naming a bad parameter."""
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' (the original study's) or 'sgd', got {self.optimizer!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        for name in ("epochs", "batch_size", "patience", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not (self.lr > 0 and self.temperature > 0):
            raise ValueError(f"lr and temperature must be > 0, got {self.lr!r}, {self.temperature!r}")
        if not 0 <= int(self.stop_epoch) <= int(self.epochs):
            raise ValueError(f"stop_epoch must be in [0, epochs={self.epochs}] (0: the whole schedule), "
                             f"got {self.stop_epoch!r}")
        for name in ("compile", "device_pixels"):
            if getattr(self, name) not in SWITCHES:
                raise ValueError(f"{name} must be one of {SWITCHES}, got {getattr(self, name)!r}")
        if int(self.cpu_threads) < 0:
            raise ValueError(f"cpu_threads must be >= 0 (0: chosen from the load), got {self.cpu_threads!r}")
        if self.augment_noise not in ("auto", "host", "device"):
            raise ValueError(f"augment_noise must be 'auto', 'host' or 'device', got {self.augment_noise!r}")
        if self.head_init and self.objective != "lp-ft":
            raise ValueError(f"head_init (a probe's hash) belongs to objective 'lp-ft' only, "
                             f"not {self.objective!r}")

    def resolved(self, device: torch.device | str) -> "FinetuneConfig":
        """A copy with every ``auto`` replaced by what runs on ``device``."""
        cuda = torch.device(device).type == "cuda"
        on = lambda v: v if v != "auto" else ("on" if cuda else "off")  # noqa: E731
        noise = self.augment_noise if self.augment_noise != "auto" else ("device" if cuda else "host")
        return replace(self, compile=on(self.compile), device_pixels=on(self.device_pixels), augment_noise=noise)


class LabelScorer(nn.Module):
    """CLIP model + label prompts (+ head): images (B, 3, S, S) -> label logits (B, k)."""

    def __init__(self, clip: nn.Module, prompt_tokens: torch.Tensor, objective: str, temperature: float,
                 head_init: torch.Tensor | None = None, head_bias: torch.Tensor | None = None):
        super().__init__()
        self.clip = clip
        self.objective = objective
        self.temperature = temperature
        self.register_buffer("prompt_tokens", prompt_tokens, persistent=False)  # (2k, L): k pos then k neg
        self.head = None
        if objective in HEAD_OBJECTIVES:
            k, d = head_init.shape
            self.head = nn.Linear(d, k)
            with torch.no_grad():
                self.head.weight.copy_(head_init)
                self.head.bias.copy_(head_bias if head_bias is not None else torch.zeros(k))
            for p in self.clip.text.parameters():
                p.requires_grad_(False)
        self.clip.logit_scale.requires_grad_(False)

    def text_directions(self) -> torch.Tensor:
        """``(v+ - v-) / T`` for every label: (k, d)."""
        v = nn.functional.normalize(self.clip.encode_text(self.prompt_tokens), dim=-1)
        k = v.shape[0] // 2
        return (v[:k] - v[k:]) / self.temperature

    def embedding_logits(self, e: torch.Tensor,
                         directions: torch.Tensor | None = None) -> torch.Tensor:
        """Label logits (B, k) of raw image embeddings (B, d). ``directions`` (k, d):
        precomputed :meth:`text_directions` (for a frozen text side); computed here when
        ``None``."""
        u = nn.functional.normalize(e, dim=-1)
        if self.head is not None:
            return self.head(u)
        d = self.text_directions() if directions is None else directions
        return u @ d.to(u.device, u.dtype).T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding_logits(self.clip.encode_image(x))


@dataclass
class FinetuneResult:
    """Outcome of :func:`finetune`. ``history`` has one dict per epoch; ``fast_path`` says what
    ran (``compile``: ``compiled`` or ``eager``, ``device_pixels``, ``augment_noise``, ``optimizer``)."""

    scorer: LabelScorer
    history: list[dict[str, float]]
    best_epoch: int
    best_val_auroc: float
    stopped_early: bool
    resumed_from: int
    run_dir: Path
    wall_s: float
    config: dict = field(default_factory=dict)
    fast_path: dict = field(default_factory=dict)


def probe_head(probe) -> tuple[np.ndarray, np.ndarray]:
    """Chapter 3's probe as a head ``W`` (k, d), ``b`` (k,) on the normalised embedding.

    The probe scores ``((u - mean) / scale) @ coef.T + intercept``, which is
    ``u @ (coef / scale).T + (intercept - coef @ (mean / scale))``.
    """
    coef = np.asarray(probe.coef, dtype=np.float64)
    scale = np.asarray(probe.scale, np.float64)
    shift = np.asarray(probe.mean, np.float64) / scale
    bias = np.asarray(probe.intercept, np.float64) - coef @ shift
    return (coef / scale).astype(np.float32), bias.astype(np.float32)


def head_hash(head: tuple[np.ndarray, np.ndarray]) -> str:
    """A short hash of a head's weights (the run key's ``head_init``)."""
    return sha256_bytes(b"".join(np.ascontiguousarray(a, np.float32).tobytes() for a in head), 16)


def build_scorer(model: nn.Module, tokenizer, labels: Sequence[str], cfg: FinetuneConfig,
                 head: tuple[np.ndarray, np.ndarray] | None = None) -> LabelScorer:
    """A trainable copy of ``model`` with the label prompts of ``cfg.template`` (tokens trimmed to
    the longest prompt: trailing padding changes no output). ``lp-ft`` takes its head ``(W, b)``
    from ``head`` (:func:`probe_head`)."""

    pos = [prompts(c, cfg.template)[0][0] for c in labels]
    neg = [prompts(c, cfg.template)[1][0] for c in labels]
    clip = copy.deepcopy(model).float()
    tokens = trim_tokens(tokenizer(pos + neg)).to(next(clip.parameters()).device)
    weight = bias = None
    if cfg.objective == "bce":
        tmp = LabelScorer(clip, tokens, "contrastive", cfg.temperature)
        with torch.no_grad():
            weight = tmp.text_directions().float()
    elif cfg.objective == "lp-ft":
        if head is None:
            raise ValueError("objective 'lp-ft' needs the probe's head (finetune.probe_head(probe))")
        weight, bias = (torch.as_tensor(a, dtype=torch.float32) for a in head)
    return LabelScorer(clip, tokens, cfg.objective, cfg.temperature, weight, bias)


@torch.inference_mode()
def _predict(scorer: nn.Module, px: DevicePixels, rows: np.ndarray, mean, std, batch_size: int,
             dev: torch.device, cpu_bf16: bool = False) -> np.ndarray:
    """Label logits (len(rows), k) in eval mode; a :class:`LabelScorer`'s text directions are
    computed once for the whole pass (the text tower does not change within it)."""
    was = scorer.training
    scorer.eval()
    out = []
    with autocast(dev, cpu_bf16):
        label_scorer = isinstance(scorer, LabelScorer)
        d = scorer.text_directions() if label_scorer and scorer.head is None else None
        for i in range(0, len(rows), batch_size):
            x = normalize01(px(rows[i:i + batch_size]).float().div_(255), mean, std)
            z = scorer.embedding_logits(scorer.clip.encode_image(x), d) if label_scorer else scorer(x)
            out.append(z.float())
    scorer.train(was)
    return torch.cat(out).cpu().numpy() if out else np.zeros((0, 0), np.float32)


def predict_logits(scorer: nn.Module, pixels, rows: Sequence[int], mean, std, batch_size: int = 128,
                   device: torch.device | str = "cpu", cpu_bf16: bool = False) -> np.ndarray:
    """Label logits (len(rows), k) of pixel-cache rows, in eval mode (bf16 autocast on CUDA, and on
    a CPU when ``cpu_bf16``)."""
    dev = torch.device(device)
    rows = np.asarray(rows, dtype=np.int64)
    return _predict(scorer, DevicePixels(pixels, rows, dev, resident=False), rows, mean, std, batch_size, dev, cpu_bf16)


@torch.inference_mode()
def logits_from_embeddings(scorer: LabelScorer, emb: np.ndarray) -> np.ndarray:
    """Label logits (n, k) of a :class:`LabelScorer` from its own image embeddings (n, d),
    unnormalised as ``scorer.clip.encode_image`` gives them: :func:`predict_logits` of the
    same images, up to float round-off, without a pass through the image tower."""
    was = scorer.training
    scorer.eval()
    d = scorer.text_directions() if scorer.head is None else None
    z = scorer.embedding_logits(torch.as_tensor(np.asarray(emb, np.float32)), d).float()
    scorer.train(was)
    return z.cpu().numpy()


def run_key(cfg: FinetuneConfig, base_weights: str, pixel_key: str, train_rows, val_rows, y) -> str:
    """Hash of everything that determines a run: config (as :meth:`FinetuneConfig.resolved`, less
    :data:`SPEED_FIELDS`), base weights, images, split, labels."""
    c = {k: v for k, v in asdict(cfg).items()
         if k not in SPEED_FIELDS and not (k in KEY_NEUTRAL and v == KEY_NEUTRAL[k])}
    parts = [VERSION, json.dumps(c, sort_keys=True), base_weights, pixel_key,
             sha256_bytes(np.asarray(train_rows).tobytes()), sha256_bytes(np.asarray(val_rows).tobytes()),
             sha256_bytes(np.ascontiguousarray(y).tobytes())]
    return sha256_bytes("|".join(parts).encode(), 16)


def _optimizer(params: list, cfg: FinetuneConfig, dev: torch.device) -> torch.optim.Optimizer:
    """Adam (fused on CUDA) or SGD with momentum 0.9."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    fused = {"fused": True} if dev.type == "cuda" else {}
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)


def _clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``module``'s state on its device (later training does not change it)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class _Trainer:
    """Model, optimiser, schedule and training state (history, best epoch and weights) of a run."""

    def __init__(self, model: nn.Module, tokenizer, labels: Sequence[str], cfg: FinetuneConfig,
                 dev: torch.device, world: int, n_train: int,
                 head: tuple[np.ndarray, np.ndarray] | None = None):
        self.cfg, self.dev = cfg, dev
        self.steps_per_epoch = n_train // cfg.batch_size
        if cfg.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.max_steps_per_epoch)
        if self.steps_per_epoch < 1:
            raise ValueError(f"the training split has {n_train} images, fewer than one batch of {cfg.batch_size}")
        self.total = self.steps_per_epoch * cfg.epochs
        self.warmup = max(1, int(cfg.warmup_frac * self.total))
        seed_all(cfg.seed)
        self.scorer = build_scorer(model, tokenizer, labels, cfg, head).to(dev)
        self.net: nn.Module = self.scorer
        if world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.scorer, device_ids=[dev.index] if dev.type == "cuda" else None)
        self.opt = _optimizer([p for p in self.scorer.parameters() if p.requires_grad], cfg, dev)
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.step_loss, _ = maybe_compile(self.loss, cfg.compile, dev)
        self.history: list[dict[str, float]] = []
        self.best: tuple[float, int] = (-np.inf, 0)
        self.best_state: dict | None = None
        self.best_written: int | None = None
        self.start = 0

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean BCE of the label logits of a normalised batch (B, 3, S, S) against 0/1 ``y`` (B, k)."""
        with autocast(self.dev, self.cfg.cpu_bf16):
            return self.loss_fn(self.net(x).float(), y)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimiser step on a batch; the loss (a device scalar). A compiled step whose backward
        fails to compile (it is compiled lazily, at the first backward) is redone eagerly."""
        loss = self.step_loss(x, y)
        try:
            optimizer_step(self.opt, loss)
        except Exception as e:  # noqa: BLE001
            if getattr(self.step_loss, "state", "eager") != "compiled":
                raise
            import warnings

            warnings.warn(f"the compiled backward failed ({type(e).__name__}: {str(e)[:200]}); running eager")
            self.step_loss.state = "eager"
            loss = self.step_loss(x, y)
            optimizer_step(self.opt, loss)
        return loss.detach()

    def compiled(self) -> str:
        """``compiled`` when the step runs through torch.compile, else ``eager``."""
        return getattr(self.step_loss, "state", "eager")

    def resume(self, run_dir: Path) -> None:
        """Load ``run_dir/last.pt`` when it exists: weights, optimiser, history, random state, best weights."""
        last = run_dir / "last.pt"
        if not last.is_file():
            return
        ck = torch.load(last, map_location=self.dev, weights_only=False)
        self.scorer.load_state_dict(ck["scorer"])
        self.opt.load_state_dict(ck["opt"])
        self.history, self.best, self.start = ck["history"], tuple(ck["best"]), ck["epoch"]
        set_rng_state(ck, self.dev)  # dropout draws continue as if never interrupted
        if self.best[1] == self.start:
            self.best_state = _clone_state(self.scorer)
        elif ck.get("best_scorer") is not None:
            self.best_state = ck["best_scorer"]
        elif (run_dir / "best.pt").is_file():  # runs from before last.pt held the best weights
            self.best_state = torch.load(run_dir / "best.pt", map_location=self.dev, weights_only=False)["scorer"]

    def record(self, ep: int, train_loss: float, val_loss: float, val_auc: float, epoch_s: float) -> bool:
        """Append epoch ``ep``'s history, keep its weights if best; return whether to stop early."""
        if val_auc > self.best[0]:
            self.best = (val_auc, ep + 1)
            self.best_state = _clone_state(self.scorer)
        stop = (ep + 1 - self.best[1]) >= self.cfg.patience
        self.history.append({"epoch": ep + 1, "train_loss": train_loss, "val_loss": val_loss, "val_auroc": val_auc,
                             "lr_end": self.opt.param_groups[0]["lr"], "stop": bool(stop), "epoch_s": epoch_s,
                             "threads": torch.get_num_threads()})
        return stop

    def checkpoint(self, ep: int) -> list[tuple[str, Any]]:
        """The files of a checkpoint after epoch ``ep`` as CPU snapshots: ``last.pt`` (self-contained:
        it holds the best weights when they are not the current ones), then ``best.pt`` if it changed."""
        now = to_cpu(self.scorer.state_dict())
        best = now if self.best[1] == ep + 1 else to_cpu(self.best_state)
        files: list[tuple[str, Any]] = [("last.pt", {
            "scorer": now, "opt": to_cpu(self.opt.state_dict()), "history": copy.deepcopy(self.history),
            "best": list(self.best), "epoch": ep + 1, "config": asdict(self.cfg),
            "best_scorer": None if best is now else best, **rng_state(self.dev)})]
        if self.best_written != self.best[1]:
            files.append(("best.pt", {"scorer": best, "epoch": self.best[1]}))
            self.best_written = self.best[1]
        return files


class _Batches:
    """The training batches of an epoch: a permutation drawn from the epoch's generator, each
    global batch sorted, augmented as a whole (so every rank sees what one process would), this
    rank's slice returned normalised on the device."""

    def __init__(self, px: DevicePixels, y: np.ndarray, train_rows: np.ndarray, cfg: FinetuneConfig,
                 steps: int, mean, std, rank: int, world: int, dev: torch.device):
        self.px, self.train_rows, self.cfg, self.steps, self.mean, self.std = px, train_rows, cfg, steps, mean, std
        self.y = torch.from_numpy(y).to(dev)
        self.per_rank = cfg.batch_size // world
        self.lo, self.hi, self.dev = rank * self.per_rank, (rank + 1) * self.per_rank, dev

    def epoch(self, ep: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x (B, 3, S, S) float, y (B, k)) for every step of epoch ``ep`` (0-based)."""
        g = epoch_generator(self.cfg.seed, ep)  # same order and augmentation on resume
        order = self.train_rows[torch.randperm(len(self.train_rows), generator=g).numpy()]
        bs = self.cfg.batch_size
        for b in range(self.steps):
            batch = np.sort(order[b * bs:(b + 1) * bs])
            mine = batch[self.lo:self.hi]
            if self.cfg.augmentation:
                x01 = augment_pixels(self.px(batch), g, self.cfg.augment_noise)[self.lo:self.hi]
            else:
                x01 = self.px(mine).float().div_(255)
            yield normalize01(x01, self.mean, self.std), self.y[to_device(torch.from_numpy(mine), self.dev)]


def _validate(tr: _Trainer, px: DevicePixels, val_rows: np.ndarray, y: np.ndarray, mean, std) -> tuple[float, float]:
    """(validation BCE loss, validation macro AUROC) of the current weights."""

    bs = 512 if tr.dev.type == "cuda" else 128
    logits = _predict(tr.scorer, px, val_rows, mean, std, bs, tr.dev, tr.cfg.cpu_bf16)
    val_loss = float(tr.loss_fn(torch.from_numpy(logits), torch.from_numpy(y[val_rows])))
    return val_loss, float(np.nanmean(per_label_auroc(y[val_rows].astype(int), logits)))


def _train_epoch(tr: _Trainer, batches: _Batches, ep: int, progress: bool) -> torch.Tensor:
    """One epoch of optimiser steps; the mean training loss (a device scalar: no host sync per step)."""

    tr.scorer.train()
    losses = []
    bar = tqdm(total=tr.steps_per_epoch, desc=f"epoch {ep + 1}/{tr.cfg.last_epoch}", disable=not progress)
    for b, (x, yb) in enumerate(batches.epoch(ep)):
        set_lr(tr.opt, cosine_lr(ep * tr.steps_per_epoch + b, tr.total, tr.cfg.lr, tr.warmup))
        losses.append(tr.step(x, yb))
        bar.update()
        if progress and b % 10 == 9:
            bar.set_postfix(loss=f"{float(torch.stack(losses[-10:]).mean()):.4f}")
    bar.close()
    return torch.stack(losses).mean()


def _run_epochs(tr: _Trainer, batches: _Batches, val: tuple, ckpt: BackgroundWriter, run_dir: Path, rank: int,
                world: int, progress: bool, stop_after_epochs: int | None) -> None:
    """Train from ``tr.start`` until the last epoch, early stopping, or ``stop_after_epochs`` epochs of
    this call (a graceful stop: checkpointed); checkpoint every ``checkpoint_every`` epochs."""
    import torch.distributed as dist

    cfg = tr.cfg
    end = cfg.last_epoch
    if tr.history and (tr.start >= end or tr.history[-1].get("stop", False)):
        return  # a finished run: loaded, not retrained
    ran = 0
    if tr.dev.type == "cpu":  # once per run: epochs of one run never change thread count
        torch.set_num_threads(cfg.cpu_threads or cpu_threads_for_load(torch.get_num_threads()))
    for ep in range(tr.start, end):
        if stop_after_epochs is not None and ran >= stop_after_epochs:
            break
        ep_t0 = time.perf_counter()
        train_loss = _train_epoch(tr, batches, ep, progress and rank == 0)
        if world > 1:
            dist.all_reduce(train_loss)
            train_loss /= world
        val_loss, val_auc = _validate(tr, *val)
        stop = tr.record(ep, float(train_loss), val_loss, val_auc, time.perf_counter() - ep_t0)
        ran += 1
        last = stop or ep + 1 == end or (stop_after_epochs is not None and ran >= stop_after_epochs)
        if rank == 0:
            files = tr.checkpoint(ep) if last or (ep + 1) % cfg.checkpoint_every == 0 else []
            files.append(("history.json", {"config": asdict(cfg), "history": copy.deepcopy(tr.history)}))
            ckpt.submit([(run_dir / name, obj) for name, obj in files])
        if stop:
            break


def finetune(model: nn.Module, tokenizer, pixels, y: np.ndarray, train_rows: Sequence[int],
             val_rows: Sequence[int], labels: Sequence[str], mean, std, base_weights: str,
             cfg: FinetuneConfig, run_root: str | os.PathLike, device: torch.device | str = "cpu",
             progress: bool = True, stop_after_epochs: int | None = None,
             probe=None) -> FinetuneResult:
    """Fine-tune a copy of ``model``; resume or reload a run with the same key.

    Parameters
    ----------
    pixels : :class:`images.PixelCache` (uint8 (N, S, S)). y : (N, k) 0/1 targets.
    train_rows, val_rows : row indices into ``pixels`` / ``y``.
    run_root : folder; the run lives in ``run_root/<key>/`` (``last.pt``, ``best.pt``, ``history.json``).
    stop_after_epochs : stop after this many epochs of this call, as a graceful interruption
        (a checkpoint is written); for tests and the budget sweep (:mod:`helpers.protocols.sweep`).
    probe : ``lp-ft`` only: chapter 3's :class:`probe.Probe`, the head's start (its hash joins
        the run key).
    """
    import torch.distributed as dist

    head = None
    if cfg.objective == "lp-ft":
        if probe is None:
            raise ValueError("objective 'lp-ft' starts from chapter 3's probe: pass probe=")
        head = probe_head(probe)
        cfg = replace(cfg, head_init=head_hash(head))
    cfg.validate()
    t0 = time.perf_counter()
    dev = torch.device(device)
    rank, world = rank_and_world()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of ranks {world}")
    cfg = cfg.resolved(dev)
    train_rows, val_rows = np.asarray(train_rows), np.asarray(val_rows)
    y = np.asarray(y).astype(np.float32)
    run_dir = Path(run_root) / run_key(cfg, base_weights, pixels.key, train_rows, val_rows, y)
    tr = _Trainer(model, tokenizer, labels, cfg, dev, world, len(train_rows), head)
    tr.resume(run_dir)
    resident = cfg.device_pixels == "on"
    batches = _Batches(DevicePixels(pixels, train_rows, dev, resident), y, train_rows, cfg, tr.steps_per_epoch,
                       mean, std, rank, world, dev)
    val = (DevicePixels(pixels, val_rows, dev, resident), val_rows, y, mean, std)
    ckpt = BackgroundWriter(active=rank == 0)
    resumed_from, threads = tr.start, torch.get_num_threads()
    try:
        _run_epochs(tr, batches, val, ckpt, run_dir, rank, world, progress, stop_after_epochs)
    finally:
        torch.set_num_threads(threads)
        ckpt.close()
    if world > 1:
        dist.barrier()
    if tr.best_state is not None:
        tr.scorer.load_state_dict(tr.best_state)
    tr.scorer.eval()
    fast = {"compile": tr.compiled(), "device_pixels": resident, "augment_noise": cfg.augment_noise,
            "optimizer": type(tr.opt).__name__ + (" (fused)" if tr.opt.defaults.get("fused") else "")}
    return FinetuneResult(tr.scorer, tr.history, int(tr.best[1]), float(tr.best[0]),
                          bool(tr.history and tr.history[-1]["stop"]), resumed_from, run_dir,
                          time.perf_counter() - t0, asdict(cfg), fast)


def load_finetuned(model: nn.Module, tokenizer, labels: Sequence[str], run_dir: str | os.PathLike,
                   device: torch.device | str = "cpu") -> LabelScorer:
    """The best epoch of a finished (or interrupted) run in ``run_dir``, on top of ``model``."""
    run_dir = Path(run_dir)
    best, last = run_dir / "best.pt", run_dir / "last.pt"
    if not best.is_file() or not last.is_file():
        raise FileNotFoundError(f"no fine-tuning checkpoint in {run_dir} (expected best.pt and last.pt); "
                                f"run chapter 4 first: python -m helpers.book.runner 04_fine_tune")
    ck = torch.load(last, map_location="cpu", weights_only=False)
    names = {f.name for f in FinetuneConfig.__dataclass_fields__.values()}
    cfg = FinetuneConfig(**{k: v for k, v in ck["config"].items() if k in names})
    b = torch.load(best, map_location="cpu", weights_only=False)
    if b.get("epoch", ck["best"][1]) != ck["best"][1]:  # best.pt not yet rewritten after the last checkpoint
        b = {"scorer": ck["best_scorer"] if ck.get("best_scorer") is not None else ck["scorer"]}
    head = None
    if cfg.objective == "lp-ft":  # any head of the right shape: the weights below replace it
        head = (b["scorer"]["head.weight"].numpy(), b["scorer"]["head.bias"].numpy())
    scorer = build_scorer(model, tokenizer, labels, cfg, head).to(device)
    scorer.load_state_dict(b["scorer"])
    return scorer.eval()
