"""The positive control of chapter 6: a model whose evidence is local by construction.

Chapter 6 asks whether attribution maps show *where* a model finds a finding. To know that the
maps and their scores *can* say yes, it needs a model that certainly looks in the right place.
Two things make this one local:

* **the data**: every image is shown with each of its findings *marked* inside the finding's
  region by a grating whose orientation names the finding (:func:`marked_pixels`); the mark is
  evidence for that finding there and nowhere else;
* **the model**: :class:`LocalisingNet` is the study model's image tower (a copy of its timm
  ViT) with a patch-level head. Every patch token ``t_p`` (after the tower's final norm) gets one
  logit per label, ``z_pj = w_j . t_p`` (no separate bias, so Grad-CAM on the final norm equals
  the positive part of the patch logits: the model's own evidence map), and the image's logit
  is their smooth maximum,

      z_j = (1/r) log( (1/P) sum_p exp(r z_pj) )      (log-mean-exp pooling, sharpness r),

  trained with the image labels *and* the masks as patch-level targets: patch ``p`` is a
  positive of label ``j`` when the finding covers at least ``cover`` of it (or is the finding's
  most covered patch), a negative everywhere else and for every absent label. No Finding has no
  region and is left out of the patch loss; a positive patch of label ``j`` weighs as much as
  all its negatives together (capped at ``max_pos_weight``, :func:`balanced_pos_weight`).

The tower stays the study model's (frozen) except its last ``train_blocks`` blocks (more than the
tower has: the patch embedding too), the final norm and the head. The tokens entering the first
trained block are computed once, so an epoch costs a pass through the trained layers only. No
geometric augmentation (it would move findings off their masks).

Such a model is a *control*, not a result: it was told where the findings are and shown them
marked, so its maps localising proves nothing about any model of the study; its use is to show
that the chapter's methods and scores detect localisation where it exists, and that its
randomised copy does not.

The trained weights are cached under ``runs_dir/localising/<key>/model.pt`` (written atomically),
``key`` hashing the config, the base weights, the pixel cache and the masks, so the book
re-uses them.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from helpers.book.progress import bar as tqdm
from helpers.data.images import to_model_input
from helpers.protocols.training import cosine_lr, optimizer_step, set_lr
from helpers.saliency.explain import load_masks
from helpers.storage import atomic_write_bytes, sha256_bytes

VERSION = "1"


@dataclass(frozen=True)
class ControlConfig:
    """Training of the positive control. ``max_images``: at most this many training images."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 3e-3
    train_blocks: int = 1
    weight_decay: float = 1e-4
    patch_weight: float = 1.0
    max_pos_weight: float = 50.0
    mark_amplitude: float = 80.0
    mark_period: float = 16.0
    sharpness: float = 5.0
    cover: float = 0.25
    max_images: int = 1200
    seed: int = 0

    def validate(self) -> None:
        """Raise ``ValueError`` naming a bad parameter."""
        for name in ("epochs", "batch_size", "max_images"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"control {name} must be >= 1, got {getattr(self, name)!r}")
        if int(self.train_blocks) < 0:
            raise ValueError(f"control train_blocks must be >= 0, got {self.train_blocks!r}")
        if self.mark_amplitude < 0 or self.mark_period <= 0:
            raise ValueError(f"control mark_amplitude must be >= 0 and mark_period > 0, got "
                             f"{self.mark_amplitude!r}, {self.mark_period!r}")
        if not (self.lr > 0 and self.sharpness > 0 and 0 < self.cover <= 1):
            raise ValueError(f"control lr and sharpness must be > 0 and cover in (0, 1], got "
                             f"{self.lr!r}, {self.sharpness!r}, {self.cover!r}")


class LocalisingNet(nn.Module):
    """A ViT trunk with a per-patch, per-label head: images (B, 3, S, S) -> logits (B, k)."""

    readout = "patches"  # attention read-out for rollout / Chefer: the mean of the patch rows

    def __init__(self, trunk: nn.Module, k: int, sharpness: float = 5.0):
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(trunk.embed_dim, k, bias=False)  # offsets: the final norm's bias
        self.sharpness = float(sharpness)
        nn.init.normal_(self.head.weight, std=0.02)

    def patch_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Per-patch logits (B, P, k) (P = g*g patch tokens; prefix tokens dropped)."""
        return self.head_on(self.trunk.forward_features(x))

    def head_on(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-patch logits (B, P, k) of the tower's output tokens (B, N, C)."""
        return self.head(tokens[:, self.trunk.num_prefix_tokens:])

    def tokens_before(self, x: torch.Tensor, block: int) -> torch.Tensor:
        """Tokens (B, N, C) entering block ``block`` (timm's ``forward_features`` up to there)."""
        t = self.trunk
        h = t.norm_pre(t.patch_drop(t._pos_embed(t.patch_embed(x))))
        for blk in t.blocks[:block]:
            h = blk(h)
        return h

    def tokens_after(self, h: torch.Tensor, block: int) -> torch.Tensor:
        """The tower's output tokens (B, N, C) from tokens entering block ``block``."""
        for blk in self.trunk.blocks[block:]:
            h = blk(h)
        return self.trunk.norm(h)

    def pool(self, z: torch.Tensor) -> torch.Tensor:
        """Log-mean-exp over patches: (B, P, k) -> (B, k)."""
        r = self.sharpness
        return (torch.logsumexp(r * z, dim=1) - np.log(z.shape[1])) / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.patch_logits(x))


def patch_targets(masks: np.ndarray, patch: int, cover: float) -> np.ndarray:
    """Patch targets (n, P) in {0, 1} from regions (n, S, S): covered share >= ``cover``, or the
    region's most covered patch (so a small finding keeps one positive patch)."""
    m = np.asarray(masks, dtype=np.float32)
    n, S = m.shape[0], m.shape[-1]
    g = S // patch
    frac = m[:, :g * patch, :g * patch].reshape(n, g, patch, g, patch).mean((2, 4)).reshape(n, -1)
    top = (frac == frac.max(1, keepdims=True)) & (frac > 0)
    return ((frac >= cover) | top).astype(np.float32)


def training_targets(study, rows: np.ndarray, cover: float, progress: bool = True
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image targets (n, k), patch targets (n, P, k) and patch-loss weights (n, k) for ``rows``.

    The weight is 0 for No Finding and for a present finding whose region is empty at the input
    size (nothing to point at); 1 otherwise.
    """


    S = study.info.image_size
    patch = int(study.model.visual.trunk.patch_embed.patch_size[0])
    y = study.y(rows).astype(np.float32)
    k, P = len(study.labels), (S // patch) ** 2
    pt = np.zeros((len(rows), P, k), np.float32)
    w = np.ones((len(rows), k), np.float32)
    nf = study.labels.index("No Finding") if "No Finding" in study.labels else None
    paths = study.table.mask_path.to_numpy()
    for i, r in enumerate(tqdm(rows, desc="control targets", disable=not progress, leave=False)):
        present = [c for c in study.labels if c != "No Finding" and y[i, study.labels.index(c)]]
        if present:
            ms = load_masks([paths[r]] * len(present), present, S)
            t = patch_targets(ms, patch, cover)
            for c, mk, tc in zip(present, ms, t):
                j = study.labels.index(c)
                pt[i, :, j] = tc
                w[i, j] = float(mk.any())
    if nf is not None:
        w[:, nf] = 0.0
    return y, pt, w


def grating(j: int, k: int, size: int, period: float) -> np.ndarray:
    """Label ``j``'s mark (size, size) in [-1, 1]: a sinusoidal grating of ``period`` pixels at
    orientation ``pi * j / k`` (each of ``k`` labels its own orientation)."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    th = np.pi * j / max(k, 1)
    return np.sin(2 * np.pi * (xx * np.cos(th) + yy * np.sin(th)) / period).astype(np.float32)


@dataclass
class Marked:
    """The study's images with every finding marked inside its region: ``pixels`` uint8
    (N, S, S), rows as ``study.pixels`` (a drop-in for it in :func:`cam.explain_pairs`)."""

    pixels: np.ndarray
    rows: np.ndarray


def marked_pixels(study, rows: np.ndarray, cfg: "ControlConfig", progress: bool = True) -> Marked:
    """A copy of the pixel cache in which each of ``rows`` carries, inside the region of every
    finding it has, that finding's grating (:func:`grating`) of amplitude ``cfg.mark_amplitude``
    grey levels. The finding's evidence is then where its mask is, and nowhere else."""


    S = study.info.image_size
    px = np.array(study.pixels.pixels)
    if cfg.mark_amplitude <= 0:
        return Marked(px, np.asarray(rows))
    y, paths = study.y(), study.table.mask_path.to_numpy()
    for r in tqdm(rows, desc="marking findings", disable=not progress, leave=False):
        present = [c for j, c in enumerate(study.labels) if c != "No Finding" and y[r, j]]
        if present:
            ms = load_masks([paths[r]] * len(present), present, S)
            px[r] = mark_regions(px[r], dict(zip(present, ms)), study.labels, cfg)
    return Marked(px, np.asarray(rows))


def mark_regions(image: np.ndarray, regions: dict[str, np.ndarray], labels: Sequence[str],
                 cfg: "ControlConfig") -> np.ndarray:
    """One image (S, S) uint8 with each finding of ``regions`` (label -> bool region (S, S))
    marked inside its region by its grating (:func:`grating`, label ``j`` of ``labels``),
    ``cfg.mark_amplitude`` grey levels, clipped to [0, 255]: uint8 (S, S)."""
    if cfg.mark_amplitude <= 0 or not regions:
        return np.asarray(image, dtype=np.uint8).copy()
    S, k = image.shape[-1], len(labels)
    add = sum(m * grating(list(labels).index(c), k, S, cfg.mark_period)
              for c, m in regions.items())
    return np.clip(image + cfg.mark_amplitude * add, 0, 255).astype(np.uint8)


def balanced_pos_weight(pt: np.ndarray, w: np.ndarray, cap: float) -> np.ndarray:
    """Per label (k,): negatives / positives among the weighted training patches, in [1, cap]
    (positive patches are rare; unweighted, predicting "nowhere" would be the easy optimum)."""
    wp = np.broadcast_to(w[:, None, :], pt.shape)
    pos = (pt * wp).sum((0, 1))
    neg = ((1 - pt) * wp).sum((0, 1))
    return np.clip(neg / np.maximum(pos, 1), 1, cap).astype(np.float32)


def _stat_key(paths: Sequence[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except FileNotFoundError:
            h.update(f"{p}|missing\n".encode())
    return h.hexdigest()[:16]


def control_key(study, cfg: ControlConfig, rows: np.ndarray) -> str:
    """Hash of everything that determines the control: config, base weights, images, masks."""

    parts = [VERSION, json.dumps(asdict(cfg), sort_keys=True), study.info.weights_sha256,
             study.pixels.key, sha256_bytes(np.asarray(rows).tobytes()),
             sha256_bytes(study.y(rows).tobytes()), _stat_key(study.table.mask_path.to_numpy()[rows])]
    return sha256_bytes("|".join(parts).encode(), 16)


def control_rows(study, cfg: ControlConfig) -> np.ndarray:
    """The training rows of the control: at most ``max_images`` of the training split (seeded)."""
    rows = study.rows("train")
    if len(rows) > cfg.max_images:
        rows = np.sort(np.random.default_rng(cfg.seed).choice(rows, cfg.max_images, replace=False))
    return rows


def _save(obj, path: Path) -> None:

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _frozen_tokens(net: LocalisingNet, study, pixels: np.ndarray, rows: np.ndarray, start: int,
                   progress: bool) -> torch.Tensor:
    """Tokens (n, N, C) entering block ``start`` for every training row (frozen blocks, once)."""


    dev = next(net.parameters()).device
    out = []
    with torch.no_grad():
        for i in tqdm(range(0, len(rows), 64), desc="control tokens", disable=not progress, leave=False):
            x = to_model_input(pixels[rows[i:i + 64]], study.info.mean, study.info.std).to(dev)
            out.append(net.tokens_before(x, start).cpu())
    return torch.cat(out)


def _train(net: LocalisingNet, study, pixels: np.ndarray, rows: np.ndarray, cfg: ControlConfig,
           progress: bool) -> list[dict]:
    """The training loop (AdamW, cosine schedule with warm-up); returns the per-epoch history."""


    y, pt, w = training_targets(study, rows, cfg.cover, progress)
    yt, ptt, wt = torch.from_numpy(y), torch.from_numpy(pt), torch.from_numpy(w)
    n_blocks = len(net.trunk.blocks)
    whole = int(cfg.train_blocks) > n_blocks  # the patch embedding trains too: nothing to cache
    start = max(0, n_blocks - int(cfg.train_blocks))
    h0 = None if whole else _frozen_tokens(net, study, pixels, rows, start, progress)
    params = list(net.parameters()) if whole else [
        *net.head.parameters(), *net.trunk.norm.parameters(),
        *(p for blk in net.trunk.blocks[start:] for p in blk.parameters())]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, len(rows) // cfg.batch_size)
    total, warm = steps * cfg.epochs, max(1, steps // 2)
    hist = []
    dev = next(net.parameters()).device
    bce = nn.BCEWithLogitsLoss(reduction="none")
    pw = torch.from_numpy(balanced_pos_weight(pt, w, cfg.max_pos_weight)).to(dev)
    bce_patch = nn.BCEWithLogitsLoss(reduction="none", pos_weight=pw)
    for ep in range(cfg.epochs):
        g = torch.Generator().manual_seed(cfg.seed * 7919 + ep)
        order = torch.randperm(len(rows), generator=g).numpy()
        net.train()
        losses = []
        for b in tqdm(range(steps), desc=f"control epoch {ep + 1}/{cfg.epochs}", disable=not progress,
                      leave=False):
            idx = np.sort(order[b * cfg.batch_size:(b + 1) * cfg.batch_size])
            set_lr(opt, cosine_lr(ep * steps + b, total, cfg.lr, warm))
            if whole:
                x = to_model_input(pixels[rows[idx]], study.info.mean, study.info.std).to(dev)
                zp = net.patch_logits(x)
            else:
                zp = net.head_on(net.tokens_after(h0[idx].to(dev), start))
            img = bce(net.pool(zp), yt[idx].to(dev)).mean()
            wp = wt[idx].to(dev)[:, None, :]
            patch = (bce_patch(zp, ptt[idx].to(dev)) * wp).sum() / (wp.sum() * zp.shape[1]).clamp_min(1)
            loss = img + cfg.patch_weight * patch
            optimizer_step(opt, loss)
            losses.append(float(loss.detach()))
        hist.append({"epoch": ep + 1, "train_loss": float(np.mean(losses))})
    return hist


@dataclass
class Control:
    """The trained control (eval mode), its record (key, config, history, wall time, cached?) and
    the marked images it is trained and explained on."""

    net: LocalisingNet
    record: dict
    pixels: Marked


def positive_control(study, cfg: ControlConfig = ControlConfig(), progress: bool = True) -> Control:
    """The positive control of ``study``: trained once per key, loaded from
    ``study.artefacts.runs_dir/localising/<key>/model.pt`` afterwards.

    Needs the phantoms' masks (``demo`` profile): ``full`` has no training regions. Every usable
    image of the study is marked (:func:`marked_pixels`), so any split can be explained.
    """
    cfg.validate()
    if "mask_path" not in study.table:
        raise ValueError(f"profile {study.profile!r} has no training regions (no phantom masks): the "
                         "positive control is trained in the demo profile only")
    rows = control_rows(study, cfg)
    key = control_key(study, cfg, rows)
    path = Path(study.artefacts.runs_dir) / "localising" / key / "model.pt"
    marked = marked_pixels(study, np.flatnonzero(study.pixels.ok), cfg, progress)
    torch.manual_seed(cfg.seed)
    trunk = copy.deepcopy(study.model.visual.trunk).float()
    net = LocalisingNet(trunk, len(study.labels), cfg.sharpness)
    net = net.to(study.device)
    if path.is_file():
        ck = torch.load(path, map_location=study.device, weights_only=False)
        net.load_state_dict(ck["state"])
        return Control(net.eval(), {**ck["record"], "cached": True}, marked)
    t0 = time.perf_counter()
    hist = _train(net, study, marked.pixels, rows, cfg, progress)
    record = {"key": key, "config": asdict(cfg), "n_images": int(len(rows)), "history": hist,
              "train_s": time.perf_counter() - t0, "base_weights": study.info.weights_sha256}
    _save({"state": net.state_dict(), "record": record}, path)
    return Control(net.eval(), {**record, "cached": False}, marked)
