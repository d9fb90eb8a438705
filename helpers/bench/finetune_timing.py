"""Fine-tuning benchmarks (part of ``make bench``, see :mod:`helpers.bench.timing`).

* the original study's step (PNG decode in a DataLoader, a host sync per step) against ``finetune()`` on
  the pixel cache, on a CPU at every thread count up to the process's;
* ``finetune()`` end to end (data, augmentation, validation every epoch, checkpoints) for a model
  of the demo's or BiomedCLIP's size;
* the step variants that decide the fast path (fused Adam, compile, host or device augmentation,
  checkpoint cost), and a profiler table of the hottest operators.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from helpers.data.images import build_pixel_cache
from helpers.data.labels import CHEXPERT_LABELS
from helpers.phantoms.rendering import generate
from helpers.protocols import finetune as F
from helpers.protocols.models import TinyConfig, build_tiny, load_model
from helpers.protocols.pretrain import chexpert_corpus
from helpers.protocols.training import augment, augment_pixels, autocast, maybe_compile, to_cpu

IUXRAY_TRAIN = 2575  # training images of the split, one frontal per report (chapter 1; tested)
SEED_FINETUNE_MIN = 15.47  # the original study's reported fine-tuning time (30 epochs)
BIOMEDCLIP_SIZE = dict(embed_dim=512, vit_width=768, vit_depth=12, vit_heads=12, bert_width=768, bert_depth=12,
                       bert_heads=12, vocab_size=30522, context_length=256, image_size=224, patch_size=16,
                       mlp_ratio=4.0, pad_vocab=True)
"""TinyConfig fields of a model with BiomedCLIP's architecture and size (random weights): ViT-B/16 at
224 px (MLP ratio 4), a BERT-base text tower (PubMedBERT's 30,522-token vocabulary, 256-token context)."""


def _timed(fn, dev: torch.device | None = None) -> tuple[float, object]:
    import time

    if dev is not None and dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    out = fn()
    if dev is not None and dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t0, out


def _images(n: int, size: int, folder: Path, seed: int = 123) -> tuple[list[str], np.ndarray]:
    """``n`` target-style phantoms of CheXpert label vectors: (PNG paths, labels (n, 14))."""

    corpus = chexpert_corpus(n, seed=seed)
    man = generate(corpus, folder, style="target", size=size, progress=False)
    return [str(folder / p) for p in man.path], corpus[list(CHEXPERT_LABELS)].to_numpy(int)


def _seed_style_loader(paths, y, preprocess, batch_size):
    from PIL import Image

    class PNGs(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            return preprocess(Image.open(paths[i]).convert("RGB")), torch.as_tensor(y[i], dtype=torch.float32)

    return torch.utils.data.DataLoader(PNGs(), batch_size=batch_size, shuffle=True, num_workers=0)


def _seed_step_s(model, tokenizer, preprocess, paths, y, steps: int, batch_size: int, device) -> float:
    """Seconds per step of the original study's loop: PNG decode per step, autocast-free forward, Adam,
    a host sync per step to log the loss (one warm-up pass first)."""

    scorer = F.build_scorer(model, tokenizer, CHEXPERT_LABELS, F.FinetuneConfig()).to(device).train()
    opt = torch.optim.Adam([p for p in scorer.parameters() if p.requires_grad], lr=1e-5)
    dl = _seed_style_loader(paths, y, preprocess, batch_size)

    def seed_steps():
        it = iter(dl)
        for _ in range(steps):
            try:
                x, t = next(it)
            except StopIteration:  # a new epoch over the images: decoded again, as in the seed
                it = iter(dl)
                x, t = next(it)
            loss = nn.functional.binary_cross_entropy_with_logits(scorer(x.to(device)), t.to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            float(loss)  # the seed logs every step: a host sync

    seed_steps()
    return _timed(seed_steps, device)[0] / steps


def bench_finetune(model, tokenizer, preprocess, info, paths, steps: int, batch_size: int, device,
                   thread_variants: bool = False) -> dict:
    """Seconds per fine-tuning step: PNG decode in the loop (seed) vs ``finetune()`` on the pixel
    cache (ours, one epoch of ``steps`` steps, validation excluded); on a CPU also ours at every
    thread count from 1 to the process's (the load decides which pays). Epoch and 30-epoch
    figures are extrapolated to IU-Xray's training split (labelled as such)."""

    y = (np.random.default_rng(0).random((len(paths), 14)) < 0.15).astype(int)
    steps = min(steps, len(paths) // batch_size)  # ours runs at most one epoch over the images
    seed_step = _seed_step_s(model, tokenizer, preprocess, paths, y, steps, batch_size, device)
    ids = [Path(p).stem for p in paths]
    threads0 = torch.get_num_threads()
    counts = range(1, threads0 + 1) if thread_variants and device.type == "cpu" else [0]
    by_threads = {}
    with tempfile.TemporaryDirectory() as d:
        cache = build_pixel_cache(paths, ids, preprocess, cache_dir=d, progress=False)
        train, val = np.arange(len(paths)), np.arange(min(len(paths), 2 * batch_size))
        for n in counts:
            cfg = F.FinetuneConfig(epochs=1, batch_size=batch_size, lr=1e-5, max_steps_per_epoch=steps,
                                   augmentation=False, patience=1, cpu_threads=n)
            args = (model, tokenizer, cache, y, train, val, CHEXPERT_LABELS, info.mean, info.std, "bench", cfg)
            F.finetune(*args, Path(d) / f"warm{n}", device=device, progress=False)
            run = F.finetune(*args, Path(d) / f"runs{n}", device=device, progress=False)
            by_threads[str(run.history[0]["threads"]) if n else "auto"] = run.history[0]["epoch_s"] / steps
    ours_step = by_threads.get("auto", min(by_threads.values()))
    steps_epoch = IUXRAY_TRAIN // batch_size
    return {"steps": steps, "batch_size": batch_size, "seed_step_s": seed_step, "ours_step_s": ours_step,
            "ours_step_s_by_threads": by_threads, "load_avg_1min": os.getloadavg()[0],
            "speedup": seed_step / ours_step, "ours_epoch_s_extrapolated": ours_step * steps_epoch,
            "ours_30_epochs_min_extrapolated": ours_step * steps_epoch * 30 / 60,
            "seed_30_epochs_min_extrapolated": seed_step * steps_epoch * 30 / 60}


def _build_model(spec: str, texts: Sequence[str], folder: Path, device: torch.device):
    """``tiny`` (the committed demo model) or ``biomedclip-size`` (BiomedCLIP's architecture and
    size from configs, random weights): (model, preprocess, tokenizer, info)."""

    if spec == "tiny":
        return load_model("tiny", device=device)
    if spec != "biomedclip-size":
        raise ValueError(f"model size must be 'tiny' or 'biomedclip-size', got {spec!r}")
    return load_model(f"local-dir:{build_tiny(folder, list(texts), TinyConfig(**BIOMEDCLIP_SIZE))}", device=device)


def bench_finetune_e2e(spec: str, n_train: int, n_val: int, epochs: int, batch_sizes: Sequence[int],
                       checkpoint_every: int, device: torch.device, folder: Path) -> dict:
    """``finetune()`` end to end (data, augmentation, validation every epoch, checkpoints, resume
    files) on ``n_train`` + ``n_val`` rendered phantoms, per batch size: wall minutes, seconds per
    epoch, what the fast path ran, and the validation curve."""

    paths, y = _images(n_train + n_val, 224, folder / "png", seed=7)
    model, preprocess, tok, info = _build_model(spec, chexpert_corpus(n_train, seed=7).caption, folder / "model", device)
    cache = build_pixel_cache(paths, [Path(p).stem for p in paths], preprocess, cache_dir=folder / "cache",
                              progress=False)
    train, val = np.arange(n_train), np.arange(n_train, n_train + n_val)
    out: dict = {"model": spec, "n_params_M": info.n_params / 1e6, "n_train": n_train, "n_val": n_val,
                 "epochs": epochs, "checkpoint_every": checkpoint_every, "runs": {}}
    for bs in batch_sizes:
        cfg = F.FinetuneConfig(epochs=epochs, batch_size=bs, lr=1e-5, patience=epochs, checkpoint_every=checkpoint_every)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t, run = _timed(lambda: F.finetune(model, tok, cache, y, train, val, _labels(), info.mean, info.std,
                                           f"bench-{spec}", cfg, folder / f"runs{bs}", device=device, progress=False),
                        device)
        ep = [h["epoch_s"] for h in run.history]
        out["runs"][str(bs)] = {
            "wall_min": t / 60, "epoch_s_median": float(np.median(ep)), "first_epoch_s": ep[0],
            "speedup_vs_seed_reported": SEED_FINETUNE_MIN / (t / 60) if epochs == 30 else None,
            "fast_path": run.fast_path, "val_auroc": [h["val_auroc"] for h in run.history],
            "peak_mem_GB": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None}
    return out


def _labels() -> list[str]:

    return list(CHEXPERT_LABELS)


def step_variants(model, tokenizer, image_size: int, device: torch.device, batch_size: int, steps: int = 20,
                  compile_too: bool = True) -> dict:
    """Milliseconds per fine-tuning step (random inputs on the device) for the choices the fast path
    makes: Adam unfused / fused, eager / compiled, augmentation on the host / on the device, and
    the cost of one checkpoint (snapshot to the host, and the file write)."""

    S = image_size
    x = torch.randn(batch_size, 3, S, S, device=device)
    y = (torch.rand(batch_size, 14, device=device) < 0.15).float()
    out = {}
    variants = [("as_is", False, "off"), ("fused_adam", True, "off")]
    variants += [("fused_adam+compile", True, "on")] if compile_too else []
    for name, fused, comp in variants:
        sc = F.build_scorer(model, tokenizer, _labels(), F.FinetuneConfig()).to(device).train()
        opt = torch.optim.Adam([p for p in sc.parameters() if p.requires_grad], lr=1e-5,
                               **({"fused": True} if fused and device.type == "cuda" else {}))

        def loss_of(x, y, sc=sc):
            with autocast(device):
                return nn.functional.binary_cross_entropy_with_logits(sc(x).float(), y)

        fn = maybe_compile(loss_of, comp, device)[0]

        def step(fn=fn, opt=opt):
            loss = fn(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(3):
            step()
        out[f"{name}_ms"] = 1e3 * _timed(lambda: [step() for _ in range(steps)], device)[0] / steps
    u8 = torch.randint(0, 256, (batch_size, S, S), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    out["augment_host_ms"] = 1e3 * _timed(lambda: [augment(u8.float().div(255), g) for _ in range(5)])[0] / 5
    u8d = u8.to(device)
    out["augment_device_ms"] = 1e3 * _timed(lambda: [augment_pixels(u8d, g, "device") for _ in range(5)], device)[0] / 5
    t_snap, snap = _timed(lambda: to_cpu({"scorer": sc.state_dict(), "opt": opt.state_dict()}), device)
    with tempfile.TemporaryDirectory() as d:
        t_write, _ = _timed(lambda: torch.save(snap, Path(d) / "last.pt"))
        size = (Path(d) / "last.pt").stat().st_size
    out.update(checkpoint_snapshot_s=t_snap, checkpoint_write_s=t_write, checkpoint_GB=size / 1e9)
    return out


def profile_step(model, tokenizer, info, batch_size: int, device, top: int = 8) -> list[dict]:
    """torch.profiler over three fine-tuning steps: the operators with the most self CPU time."""
    from torch.profiler import ProfilerActivity, profile


    scorer = F.build_scorer(model, tokenizer, _labels(), F.FinetuneConfig(batch_size=batch_size)).to(device).train()
    opt = torch.optim.Adam([p for p in scorer.parameters() if p.requires_grad], lr=1e-5)
    x = torch.randn(batch_size, 3, info.image_size, info.image_size, device=device)
    y = (torch.rand(batch_size, 14, device=device) < 0.15).float()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            loss = nn.functional.binary_cross_entropy_with_logits(scorer(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    ev = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    return [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3 / 3, "share": e.self_cpu_time_total / total}
            for e in ev]
