"""Benchmarks, measured side by side in one run: ``make bench`` (``python -m helpers.bench``).

On the same images and the same machine, each fast path of this project is timed against the
seed study's way of doing the same work:

* embedding extraction: the seed's loop (one image at a time: PIL decode, open_clip
  preprocessing, ``encode_image``) against ours (decode + preprocess once into a uint8 cache,
  then batched ``inference_mode`` forward passes), cold (cache built in the timing) and warm,
  at the demo model's size and at BiomedCLIP's image-tower size (ViT-B/16, 224 px, randomly
  initialised: speed needs no weights), in each precision the device supports; on a GPU also a
  bare forward pass of the same tower on random tensors (the hardware's ceiling);
* linear-probe fitting on embeddings of IU-Xray's split sizes (14 labels, 4 values of C): the
  per-label sklearn loop against the vectorised fit;
* fine-tuning steps: PNG decode per step in a DataLoader (the seed's) against the pixel cache
  (ours), with the CPU thread count that the machine's load allows;
* on a GPU, fine-tuning at BiomedCLIP size end to end (``finetune()``: data, augmentation,
  validation every epoch, checkpoints) for the issue's 30 epochs, and the step variants that
  decide the fast path (fused Adam, ``torch.compile``, host or device augmentation, checkpoint
  cost);
* the whole demo book, from the runner's ``run_times.json``; a torch-profiler table of the demo
  fine-tuning step's hottest operators; FLOPs per image of the BiomedCLIP-size tower.

The sizes follow the device (:func:`plan_for`: a CPU runs small sizes, a GPU >= 2,048 images at
ViT-B). Results are kept per device in ``benchmarks/results.json`` (``devices``, keyed by
:func:`device_key`), so CPU and GPU results live side by side; the book's benchmark page renders
every device in the file. ``--smoke`` writes to ``outputs/bench_smoke.json`` instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .config import REPO_ROOT

RESULTS = REPO_ROOT / "benchmarks" / "results.json"
IUXRAY_TRAIN, IUXRAY_VAL = 3475, 495  # frontal images in the demo split (chapter 1)
SEED_FINETUNE_MIN = 15.47  # the seed study's reported fine-tuning time (30 epochs)
BIOMEDCLIP_SIZE = dict(embed_dim=512, vit_width=768, vit_depth=12, vit_heads=12, bert_width=768, bert_depth=12,
                       bert_heads=12, vocab_size=30522, context_length=256, image_size=224, patch_size=16)
"""TinyConfig fields of a model with BiomedCLIP's architecture and size (random weights)."""


def smoke_path() -> Path:
    """Where ``--smoke`` writes by default: outside the committed results."""
    return Path(os.environ.get("IUXRAY_OUTPUT_DIR", REPO_ROOT / "outputs")) / "bench_smoke.json"


class _Tower(nn.Module):
    """An image tower with the ``encode_image`` interface of an open_clip model."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)


def biomedclip_size_tower() -> nn.Module:
    """BiomedCLIP's image tower architecture (timm ViT-B/16, 224 px, linear projection to 512),
    randomly initialised, offline."""
    from open_clip.timm_model import TimmModel

    return _Tower(TimmModel("vit_base_patch16_224", embed_dim=512, image_size=224, pool="", proj="linear"))


def device_key(dev: torch.device) -> str:
    """The name results are kept under: ``cuda: <GPU name>`` or ``cpu: <CPU model> (<n> cores)``."""
    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    model = next((ln.split(":", 1)[1].strip() for ln in _cpuinfo().splitlines() if ln.startswith("model name")),
                 platform.processor() or "unknown CPU")
    return f"cpu: {model} ({os.cpu_count()} cores)"


def plan_for(device_type: str, smoke: bool = False) -> dict:
    """Benchmark sizes for a device: a CPU runs small sizes (minutes on two cores), a GPU the
    issue's sizes (>= 2,048 images through ViT-B, fine-tuning at BiomedCLIP size for 30 epochs)."""
    if smoke:
        return dict(n_images=16, image_px=512, emb_batch=64, vitb_images=0, vitb_batch=8, vitb_seed_images=0,
                    precisions=("auto",), compile_variants=False, ft_images=16, ft_steps=2, ft_batch=8,
                    probe_dims=(96,), probe_sizes=(400, 100), e2e=dict(spec="tiny", n_train=16, n_val=8, epochs=1,
                                                                         batch_sizes=(8,), checkpoint_every=1),
                    step_variants=False, thread_variants=False)
    if device_type == "cuda":
        return dict(n_images=2048, image_px=224, emb_batch=512, vitb_images=2048, vitb_batch=512, vitb_seed_images=256,
                    precisions=("autocast", "bf16"), compile_variants=True, ft_images=512, ft_steps=12, ft_batch=32,
                    probe_dims=(96, 512), probe_sizes=(IUXRAY_TRAIN, IUXRAY_VAL),
                    e2e=dict(spec="biomedclip-size", n_train=IUXRAY_TRAIN, n_val=IUXRAY_VAL, epochs=30,
                             batch_sizes=(32, 128), checkpoint_every=10),
                    step_variants=True, thread_variants=False)
    return dict(n_images=256, image_px=512, emb_batch=64, vitb_images=64, vitb_batch=8, vitb_seed_images=64,
                precisions=("auto", "autocast"), compile_variants=False, ft_images=192, ft_steps=6, ft_batch=32,
                probe_dims=(96, 512), probe_sizes=(IUXRAY_TRAIN, IUXRAY_VAL), e2e=None, step_variants=False,
                thread_variants=True)


def _images(n: int, size: int, folder: Path, seed: int = 123) -> tuple[list[str], np.ndarray]:
    """``n`` target-style phantoms of CheXpert label vectors: (PNG paths, labels (n, 14))."""
    from .labels import CHEXPERT_LABELS
    from .phantoms import generate
    from .pretrain import chexpert_corpus

    corpus = chexpert_corpus(n, seed=seed)
    man = generate(corpus, folder, style="target", size=size, progress=False)
    return [str(folder / p) for p in man.path], corpus[list(CHEXPERT_LABELS)].to_numpy(int)


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(fn, dev: torch.device | None = None) -> tuple[float, object]:
    if dev is not None:
        _sync(dev)
    t0 = time.perf_counter()
    out = fn()
    if dev is not None:
        _sync(dev)
    return time.perf_counter() - t0, out


@torch.no_grad()
def seed_style_embeddings(model: nn.Module, preprocess, paths: Sequence[str], device: torch.device) -> np.ndarray:
    """The seed's loop: per image, PIL decode, preprocess, a batch of one through the model."""
    from PIL import Image

    model.eval().to(device)
    out = []
    for p in paths:
        x = preprocess(Image.open(p).convert("RGB")).unsqueeze(0).to(device)
        out.append(model.encode_image(x).float().cpu())
    return torch.cat(out).numpy()


def _variants(precisions: Sequence[str], compile_too: bool) -> list[tuple[str, str]]:
    return [(p, c) for p in precisions for c in (("off", "on") if compile_too else ("off",))]


def bench_embedding(model: nn.Module, preprocess, mean, std, paths: Sequence[str], device: torch.device,
                    batch_size: int = 64, seed_images: int | None = None, precisions: Sequence[str] = ("auto",),
                    compile_too: bool = False) -> dict:
    """Seconds and images/s for the seed's loop (on ``seed_images`` of the images) and ours (cold
    and warm cache) in each precision (and compiled, warm); speed-ups per image; max |diff|."""
    from .embeddings import compute_image_embeddings
    from .images import build_pixel_cache

    ids = [Path(p).stem for p in paths]
    k = len(paths) if seed_images is None else min(seed_images, len(paths))
    t_seed, e_seed = _timed(lambda: seed_style_embeddings(model, preprocess, paths[:k], device), device)
    n, res = len(paths), {}
    with tempfile.TemporaryDirectory() as d:
        t_cache, cache = _timed(lambda: build_pixel_cache(paths, ids, preprocess, cache_dir=d, progress=False))
        for prec, comp in _variants(precisions, compile_too):
            run = lambda: compute_image_embeddings(model, cache, mean, std, batch_size=batch_size,  # noqa: E731
                                                   device=device, progress=False, precision=prec, compile=comp)
            if comp == "on" or device.type == "cuda":
                run()  # warm-up: compilation, allocator, cuDNN/cuBLAS heuristics
            t, e = _timed(run, device)
            name = prec + ("+compile" if comp == "on" else "")
            diff = float(np.abs(e[:k] - e_seed).max() / np.abs(e_seed).max())
            res[name] = {"warm_s": t, "img_per_s": n / t, "speedup_warm": (t_seed / k) / (t / n), "max_rel_diff": diff}
    base = res[next(iter(res))]
    return {"n_images": n, "seed_images": k, "batch_size": batch_size, "seed_s": t_seed, "seed_img_per_s": k / t_seed,
            "ours_cache_build_s": t_cache, "ours_warm_s": base["warm_s"], "ours_warm_img_per_s": base["img_per_s"],
            "speedup_warm": base["speedup_warm"],
            "speedup_cold": (t_seed / k) / ((t_cache + base["warm_s"]) / n),
            "max_abs_diff": float(np.abs(e_seed - e[:k]).max()) if len(res) == 1 else None,
            "variants": res}


def bare_forward(tower: nn.Module, device: torch.device, batch: int = 512, steps: int = 10) -> dict:
    """Images/s of the tower's forward on random tensors already on the device (no data path):
    autocast, bf16 weights, bf16 weights compiled. The ceiling the embedding path is read against."""
    import copy

    from .training import autocast, maybe_compile

    out = {}
    x = torch.randn(batch, 3, 224, 224, device=device)
    bf = copy.deepcopy(tower.visual).to(device, torch.bfloat16).eval()
    for name, fn, xin in (("autocast", lambda v: tower.to(device).eval().encode_image(v), x),
                          ("bf16", bf, x.bfloat16()), ("bf16+compile", maybe_compile(bf, "on", device)[0], x.bfloat16())):
        with torch.inference_mode(), (autocast(device) if name == "autocast" else torch.autocast("cpu", enabled=False)):
            for _ in range(3):
                fn(xin)
            t, _ = _timed(lambda: [fn(xin) for _ in range(steps)], device)
        out[name] = {"img_per_s": batch * steps / t, "batch": batch}
    return out


def _sklearn_path(x: np.ndarray, y: np.ndarray, Cs: Sequence[float]) -> dict:
    """The per-label sklearn loop (warm-started over C) that the vectorised fit replaced."""
    import warnings

    from sklearn.linear_model import LogisticRegression

    out = {}
    for j in range(y.shape[1]):
        lr = LogisticRegression(class_weight="balanced", max_iter=2000, warm_start=True)
        for C in sorted(Cs):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lr.set_params(C=C).fit(x, y[:, j])
            out.setdefault(C, []).append(lr.decision_function(x))
    return out


def bench_probe(dims: Sequence[int] = (96, 512), n_train: int = IUXRAY_TRAIN, n_val: int = IUXRAY_VAL) -> dict:
    """Linear-probe fit time (14 labels, the chapter's 4 values of C) on synthetic embeddings of
    IU-Xray's split sizes: the vectorised fit against the per-label sklearn loop, and the largest
    difference of their training logits."""
    from .probe import DEFAULT_CS, fit_probe

    rng = np.random.default_rng(0)
    out = {}
    prev = np.r_[0.02, 0.12, 0.2, 0.05, 0.03, 0.02, 0.02, 0.1, 0.01, 0.05, 0.01, 0.03, 0.04, 0.4]
    for d in dims:
        y = (rng.random((n_train + n_val, 14)) < prev).astype(int)
        e = y @ rng.normal(size=(14, d)) + 6 * rng.normal(size=(n_train + n_val, d))
        p = fit_probe(e[:n_train], y[:n_train], e[n_train:], y[n_train:], Cs=DEFAULT_CS)
        x = p.features(e[:n_train])
        t_sk, sk = _timed(lambda: _sklearn_path(x, y[:n_train], DEFAULT_CS))
        ours = x @ p.coef.T + p.intercept
        out[str(d)] = {"fit_s": p.fit_s, "sklearn_loop_s": t_sk, "speedup": t_sk / p.fit_s, "n_C": len(DEFAULT_CS),
                       "n_train": n_train, "chosen_C": p.C,
                       "max_logit_diff_vs_sklearn": float(np.abs(np.stack(sk[p.C], 1) - ours).max())}
    return out


def _seed_style_loader(paths, y, preprocess, batch_size):
    from PIL import Image

    class PNGs(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            return preprocess(Image.open(paths[i]).convert("RGB")), torch.as_tensor(y[i], dtype=torch.float32)

    return torch.utils.data.DataLoader(PNGs(), batch_size=batch_size, shuffle=True, num_workers=0)


def _seed_step_s(model, tokenizer, preprocess, paths, y, steps: int, batch_size: int, device) -> float:
    """Seconds per step of the seed's loop: PNG decode per step, autocast-free forward, Adam,
    a host sync per step to log the loss (one warm-up pass first)."""
    from . import finetune as F
    from .labels import CHEXPERT_LABELS

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
    from . import finetune as F
    from .images import build_pixel_cache
    from .labels import CHEXPERT_LABELS

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
    from .models import TinyConfig, build_tiny, load_model

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
    from . import finetune as F
    from .images import build_pixel_cache
    from .pretrain import chexpert_corpus

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
        t, run = _timed(lambda: F.finetune(model, tok, cache, y, train, val, _labels(), info.mean, info.std, f"bench-{spec}", cfg,
                                           folder / f"runs{bs}", device=device, progress=False), device)
        ep = [h["epoch_s"] for h in run.history]
        out["runs"][str(bs)] = {
            "wall_min": t / 60, "epoch_s_median": float(np.median(ep)), "first_epoch_s": ep[0],
            "speedup_vs_seed_reported": SEED_FINETUNE_MIN / (t / 60) if epochs == 30 else None,
            "fast_path": run.fast_path, "val_auroc": [h["val_auroc"] for h in run.history],
            "peak_mem_GB": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None}
    return out


def _labels() -> list[str]:
    from .labels import CHEXPERT_LABELS

    return list(CHEXPERT_LABELS)


def step_variants(model, tokenizer, image_size: int, device: torch.device, batch_size: int, steps: int = 20) -> dict:
    """Milliseconds per fine-tuning step (random inputs on the device) for the choices the fast path
    makes: Adam unfused / fused, eager / compiled, augmentation on the host / on the device, and
    the cost of one checkpoint (snapshot to the host, and the file write)."""
    from . import finetune as F
    from .training import augment, augment_pixels, autocast, maybe_compile, to_cpu

    S = image_size
    x = torch.randn(batch_size, 3, S, S, device=device)
    y = (torch.rand(batch_size, 14, device=device) < 0.15).float()
    out = {}
    for name, fused, comp in (("as_is", False, "off"), ("fused_adam", True, "off"), ("fused_adam+compile", True, "on")):
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

    from . import finetune as F

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


def flops_per_image(tower: nn.Module, size: int = 224) -> float:
    """Forward FLOPs of one image through ``tower`` (torch's FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.no_grad():
        tower.encode_image(torch.randn(1, 3, size, size))
    return float(fc.get_total_flops())


def book_time(profile: str = "demo") -> dict | None:
    """The runner's per-chapter times (``run_times.json``) and their total over the book's chapters."""
    from .config import output_dir
    from .run import toc_chapters

    f = output_dir(profile) / "run_times.json"
    if not f.is_file():
        return None
    t = json.loads(f.read_text())
    ch = toc_chapters()
    got = {c: t[c]["seconds"] for c in ch if c in t}
    return {"chapters_s": got, "total_s": sum(got.values()), "complete": len(got) == len(ch),
            "smoke_params": any(t[c]["params"].get("limit") for c in got)}


def _machine(dev: torch.device, smoke: bool) -> dict:
    return {"key": device_key(dev), "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "torch": torch.__version__, "load_avg_1min_start": os.getloadavg()[0], "smoke": smoke,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _biomedclip_size(plan: dict, paths: Sequence[str], dev: torch.device, res: dict) -> None:
    """The BiomedCLIP-size measurements: embedding, bare forward (GPU), FLOPs."""
    import open_clip

    tower = biomedclip_size_tower().to(dev)
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    pre = open_clip.image_transform(224, is_train=False, mean=mean, std=std)
    res["embedding_biomedclip_size"] = bench_embedding(
        tower, pre, mean, std, paths[:plan["vitb_images"]], dev, batch_size=plan["vitb_batch"],
        seed_images=plan["vitb_seed_images"], precisions=plan["precisions"], compile_too=plan["compile_variants"])
    if dev.type == "cuda":
        res["bare_forward_biomedclip_size"] = bare_forward(tower, dev, batch=plan["vitb_batch"])
    res["flops_biomedclip_size"] = {"image_forward_gflops": flops_per_image(tower.cpu()) / 1e9,
                                    "note": "forward FLOPs per 224 px image (torch FLOP counter); not a time"}


def run(smoke: bool = False, out: Path | None = None, full_size: bool = True, device: str = "auto",
        e2e: bool = True) -> dict:
    """Run every benchmark sized by :func:`plan_for` and store the results under this device's key
    in ``out`` (default: ``benchmarks/results.json``; ``outputs/bench_smoke.json`` for ``smoke``);
    results of other devices in the file are kept. Returns this device's results."""
    from .io import atomic_write_json
    from .models import load_model
    from .training import cpu_has_bf16

    out = Path(out) if out is not None else (smoke_path() if smoke else RESULTS)
    if smoke and out.resolve() == RESULTS.resolve():
        raise ValueError(f"--smoke results must not overwrite the committed {RESULTS}; pass another --out")
    previous = _read_results(out)
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    plan = plan_for(dev.type, smoke)
    if dev.type == "cpu" and not cpu_has_bf16():  # bf16 autocast without bf16 instructions is emulated: skip
        plan["precisions"] = tuple(p for p in plan["precisions"] if p not in ("autocast", "bf16"))
    res: dict = {"machine": _machine(dev, smoke), "plan": plan}
    with tempfile.TemporaryDirectory() as d:
        paths, _ = _images(plan["n_images"], plan["image_px"], Path(d) / "png")
        model, preprocess, tok, info = load_model("tiny", device=dev)
        res["embedding_tiny"] = bench_embedding(model, preprocess, info.mean, info.std, paths, dev,
                                                batch_size=plan["emb_batch"], precisions=plan["precisions"])
        res["finetune_tiny"] = bench_finetune(model, tok, preprocess, info, paths[:plan["ft_images"]], plan["ft_steps"],
                                              plan["ft_batch"], dev, plan["thread_variants"])
        res["profile_tiny_step"] = profile_step(model, tok, info, plan["ft_batch"], dev)
        if full_size and plan["vitb_images"]:
            _biomedclip_size(plan, paths, dev, res)
        if e2e and plan["e2e"]:
            res["finetune_e2e"] = bench_finetune_e2e(**plan["e2e"], device=dev, folder=Path(d) / "e2e")
        if plan["step_variants"]:
            from .models import TinyConfig, build_tiny, load_model as _load

            big = _load(f"local-dir:{build_tiny(Path(d) / 'big', ['no finding', 'cardiomegaly'] * 50, TinyConfig(**BIOMEDCLIP_SIZE))}",
                        device=dev)
            res["step_variants_biomedclip_size"] = {str(bs): step_variants(big[0], big[2], 224, dev, bs) for bs in (32, 128)}
    res["probe_fit"] = bench_probe(plan["probe_dims"], *plan["probe_sizes"])
    res["book"] = book_time()
    devices = {**previous.get("devices", {}), res["machine"]["key"]: res}
    atomic_write_json(out, {"format": 2, "latest": res["machine"]["key"], "devices": devices})
    return res


def _read_results(path: Path) -> dict:
    """The results file's content in the per-device format (an older single-device file becomes one
    device entry); ``{}`` when absent. A file that is not JSON is an error naming it."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it or pass another --out") from None
    if "devices" not in data:
        m = data.get("machine", {})
        data = {"devices": {m.get("key", f"{m.get('device', 'unknown')} ({m.get('cpu_count', '?')} cores)"): data}}
    return data


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m helpers.bench", description=__doc__.split("\n")[0],
        epilog="Results are kept per device: running on a GPU adds (or replaces) that GPU's entry and keeps "
               "the CPU's. Expected failures (bad option, unreadable results file, missing package) print one "
               "message and exit with status 2.")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes that check every code path in about a minute; writes to "
                         "outputs/bench_smoke.json (IUXRAY_OUTPUT_DIR) unless --out is given, never to "
                         "benchmarks/results.json")
    ap.add_argument("--out", type=Path, default=None,
                    help="results file to update (default: benchmarks/results.json, or the smoke file)")
    ap.add_argument("--no-full-size", action="store_true",
                    help="skip the BiomedCLIP-size measurements (ViT-B/16 embedding, bare forward, FLOPs)")
    ap.add_argument("--no-e2e", action="store_true",
                    help="skip the end-to-end fine-tuning runs (on a GPU: 30 epochs at BiomedCLIP size)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                    help="where to run: auto (CUDA when available), cpu or cuda; sizes follow the device")
    a = ap.parse_args(argv)
    try:
        if a.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available on this machine")
        res = run(a.smoke, a.out, not a.no_full_size, a.device, not a.no_e2e)
    except (ValueError, FileNotFoundError, PermissionError, ImportError) as e:
        print(f"python -m helpers.bench: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in res.items() if k != "profile_tiny_step"}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
