"""The positive control of chapter 6: a model whose evidence is local by construction.

Chapter 6 asks whether attribution maps show *where* a model finds a finding. To know that the
maps and their scores *can* say yes, it needs a model that certainly looks in the right place.
:class:`LocalisingNet` is the study model's image tower (a copy of its timm ViT) with a
patch-level head: every patch token ``t_p`` (after the tower's final norm) gets one logit per
label, ``z_pj = w_j . t_p + b_j``, and the image's logit is their smooth maximum,

    z_j = (1/r) log( (1/P) sum_p exp(r z_pj) )        (log-mean-exp pooling, sharpness r).

It is trained on the training split with two losses: the image-level BCE of ``z_j`` against the
labels, and a patch-level BCE of ``z_pj`` against the phantoms' masks: patch ``p`` is a positive
of label ``j`` when the finding covers at least ``cover`` of it (or is the finding's most covered
patch), a negative everywhere else and for every absent label. No Finding has no region and is
left out of the patch loss. No geometric augmentation (it would move findings off their masks).

Such a model is a *control*, not a result: it was told where the findings are, so its maps
localising proves nothing about any model of the study; its use is to show that the chapter's
methods and scores detect localisation where it exists, and that its randomised copy does not.

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

VERSION = "1"


@dataclass(frozen=True)
class ControlConfig:
    """Training of the positive control. ``max_images``: at most this many training images."""

    epochs: int = 4
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 1e-4
    patch_weight: float = 1.0
    sharpness: float = 5.0
    cover: float = 0.25
    max_images: int = 1200
    seed: int = 0

    def validate(self) -> None:
        """Raise ``ValueError`` naming a bad parameter."""
        for name in ("epochs", "batch_size", "max_images"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"control {name} must be >= 1, got {getattr(self, name)!r}")
        if not (self.lr > 0 and self.sharpness > 0 and 0 < self.cover <= 1):
            raise ValueError(f"control lr and sharpness must be > 0 and cover in (0, 1], got "
                             f"{self.lr!r}, {self.sharpness!r}, {self.cover!r}")


class LocalisingNet(nn.Module):
    """A ViT trunk with a per-patch, per-label head: images (B, 3, S, S) -> logits (B, k)."""

    readout = "patches"  # attention read-out for rollout / Chefer: the mean of the patch rows

    def __init__(self, trunk: nn.Module, k: int, sharpness: float = 5.0):
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(trunk.embed_dim, k)
        self.sharpness = float(sharpness)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def patch_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Per-patch logits (B, P, k) (P = g*g patch tokens; prefix tokens dropped)."""
        tokens = self.trunk.forward_features(x)
        return self.head(tokens[:, self.trunk.num_prefix_tokens:])

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
    from tqdm.auto import tqdm

    from .cam import load_masks

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
    from .io import sha256_bytes

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
    from .io import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _train(net: LocalisingNet, study, rows: np.ndarray, cfg: ControlConfig, progress: bool) -> list[dict]:
    """The training loop (Adam, cosine schedule with warm-up); returns the per-epoch history."""
    from tqdm.auto import tqdm

    from .pretrain import cosine_lr, normalize01

    y, pt, w = training_targets(study, rows, cfg.cover, progress)
    yt, ptt, wt = torch.from_numpy(y), torch.from_numpy(pt), torch.from_numpy(w)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, len(rows) // cfg.batch_size)
    total, warm = steps * cfg.epochs, max(1, steps // 2)
    bce = nn.BCEWithLogitsLoss(reduction="none")
    hist = []
    dev = next(net.parameters()).device
    for ep in range(cfg.epochs):
        g = torch.Generator().manual_seed(cfg.seed * 7919 + ep)
        order = torch.randperm(len(rows), generator=g).numpy()
        net.train()
        losses = []
        for b in tqdm(range(steps), desc=f"control epoch {ep + 1}/{cfg.epochs}", disable=not progress,
                      leave=False):
            idx = np.sort(order[b * cfg.batch_size:(b + 1) * cfg.batch_size])
            x01 = torch.from_numpy(np.asarray(study.pixels.pixels[rows[idx]])).float().div_(255)
            x = normalize01(x01, study.info.mean, study.info.std).to(dev)
            for gr in opt.param_groups:
                gr["lr"] = cosine_lr(ep * steps + b, total, cfg.lr, warm)
            zp = net.patch_logits(x)
            img = bce(net.pool(zp), yt[idx].to(dev)).mean()
            wp = wt[idx].to(dev)[:, None, :]
            patch = (bce(zp, ptt[idx].to(dev)) * wp).sum() / (wp.sum() * zp.shape[1]).clamp_min(1)
            loss = img + cfg.patch_weight * patch
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        hist.append({"epoch": ep + 1, "train_loss": float(np.mean(losses))})
    return hist


def positive_control(study, cfg: ControlConfig = ControlConfig(), progress: bool = True
                     ) -> tuple[LocalisingNet, dict]:
    """The trained control (eval mode) and its record (key, history, rows, wall time, cached?).

    Trained once per key and loaded from ``study.artefacts.runs_dir/localising/<key>/model.pt``
    afterwards. Needs the phantoms' masks (``demo`` profile): ``full`` has no training regions.
    """
    cfg.validate()
    if "mask_path" not in study.table:
        raise ValueError(f"profile {study.profile!r} has no training regions (no phantom masks): the "
                         "positive control is trained in the demo profile only")
    rows = control_rows(study, cfg)
    key = control_key(study, cfg, rows)
    path = Path(study.artefacts.runs_dir) / "localising" / key / "model.pt"
    torch.manual_seed(cfg.seed)
    net = LocalisingNet(copy.deepcopy(study.model.visual.trunk).float(), len(study.labels), cfg.sharpness)
    net = net.to(study.device)
    if path.is_file():
        ck = torch.load(path, map_location=study.device, weights_only=False)
        net.load_state_dict(ck["state"])
        return net.eval(), {**ck["record"], "cached": True}
    t0 = time.perf_counter()
    hist = _train(net, study, rows, cfg, progress)
    record = {"key": key, "config": asdict(cfg), "n_images": int(len(rows)), "history": hist,
              "train_s": time.perf_counter() - t0, "base_weights": study.info.weights_sha256}
    _save({"state": net.state_dict(), "record": record}, path)
    return net.eval(), {**record, "cached": False}
