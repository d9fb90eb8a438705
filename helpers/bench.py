"""Benchmarks, measured side by side in one run: ``make bench`` (``python -m helpers.bench``).

On the same images and the same machine, each fast path of this project is timed against the
seed study's way of doing the same work:

* embedding extraction: the seed's loop (one image at a time: PIL decode, open_clip
  preprocessing, ``encode_image``) against ours (decode + preprocess once into a uint8 cache,
  then batched ``inference_mode`` forward passes; bf16 autocast on GPU), cold (cache built in
  the timing) and warm (cache present), at the demo model's size and at BiomedCLIP's image-tower
  size (ViT-B/16, 224 px, randomly initialised: speed needs no weights);
* linear-probe fitting on cached embeddings (IU-Xray's split sizes, 14 labels, 4 values of C);
* fine-tuning steps: PNG decode per step in a DataLoader (the seed's) against the pixel cache
  (ours), extrapolated to one epoch over IU-Xray's training split and to 30 epochs;
* the whole demo book, from the runner's ``run_times.json``;
* a torch-profiler table of the fine-tuning step's hottest operators;
* FLOPs per image of the BiomedCLIP-size tower, and the GPU time they imply.

Results go to ``benchmarks/results.json`` (atomically) with the machine's description; the book's
benchmark page renders that file.
"""

from __future__ import annotations

import argparse
import os
import platform
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
H100_BF16_DENSE_TFLOPS = 989.0  # NVIDIA's datasheet figure (SXM, dense)


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


def _images(n: int, size: int, folder: Path) -> list[str]:
    from .phantoms import generate
    from .pretrain import chexpert_corpus

    corpus = chexpert_corpus(n, seed=123)
    man = generate(corpus, folder, style="target", size=size, progress=False)
    return [str(folder / p) for p in man.path]


def _cpu_flags() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
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


def bench_embedding(model: nn.Module, preprocess, mean, std, paths: Sequence[str], device: torch.device,
                    batch_size: int = 64) -> dict:
    """Seconds and images/s for the seed's loop and ours (cold and warm cache); ratios; max |diff|."""
    from .embeddings import compute_image_embeddings
    from .images import build_pixel_cache

    ids = [Path(p).stem for p in paths]
    t_seed, e_seed = _timed(lambda: seed_style_embeddings(model, preprocess, paths, device))
    with tempfile.TemporaryDirectory() as d:
        t_cache, cache = _timed(lambda: build_pixel_cache(paths, ids, preprocess, cache_dir=d, progress=False))
        t_warm, e_ours = _timed(lambda: compute_image_embeddings(model, cache, mean, std, batch_size=batch_size,
                                                                device=device, progress=False))
        t_bf16 = None
        if device.type == "cpu" and "avx512_bf16" in _cpu_flags():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                t_bf16, e_bf16 = _timed(lambda: compute_image_embeddings(model, cache, mean, std, batch_size=batch_size,
                                                                        device=device, progress=False))
    n = len(paths)
    extra = {} if t_bf16 is None else {
        "ours_warm_cpu_bf16_s": t_bf16, "speedup_warm_cpu_bf16": t_seed / t_bf16,
        "cpu_bf16_max_rel_diff": float(np.abs(e_bf16 - e_seed).max() / np.abs(e_seed).max())}
    return {**extra, "n_images": n, "seed_s": t_seed, "ours_cache_build_s": t_cache, "ours_warm_s": t_warm,
            "ours_cold_s": t_cache + t_warm, "seed_img_per_s": n / t_seed, "ours_warm_img_per_s": n / t_warm,
            "speedup_warm": t_seed / t_warm, "speedup_cold": t_seed / (t_cache + t_warm),
            "max_abs_diff": float(np.abs(e_seed - e_ours).max())}


def bench_probe(dims: Sequence[int] = (96, 512), n_train: int = IUXRAY_TRAIN, n_val: int = IUXRAY_VAL) -> dict:
    """Linear-probe fit time (14 labels, the chapter's 4 values of C) on synthetic embeddings of
    IU-Xray's split sizes."""
    from .probe import DEFAULT_CS, fit_probe

    rng = np.random.default_rng(0)
    out = {}
    prev = np.r_[0.02, 0.12, 0.2, 0.05, 0.03, 0.02, 0.02, 0.1, 0.01, 0.05, 0.01, 0.03, 0.04, 0.4]
    for d in dims:
        y = (rng.random((n_train + n_val, 14)) < prev).astype(int)
        e = y @ rng.normal(size=(14, d)) + 2 * rng.normal(size=(n_train + n_val, d))
        p = fit_probe(e[:n_train], y[:n_train], e[n_train:], y[n_train:], Cs=DEFAULT_CS)
        out[str(d)] = {"fit_s": p.fit_s, "n_C": len(DEFAULT_CS), "n_train": n_train}
    return out


def _seed_style_loader(paths, y, preprocess, batch_size):
    from PIL import Image

    class PNGs(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            return preprocess(Image.open(paths[i]).convert("RGB")), torch.as_tensor(y[i], dtype=torch.float32)

    return torch.utils.data.DataLoader(PNGs(), batch_size=batch_size, shuffle=True, num_workers=0)


def bench_finetune(model, tokenizer, preprocess, info, paths, steps: int, batch_size: int, device) -> dict:
    """Seconds per fine-tuning step: PNG decode in the loop (seed) vs the pixel cache (ours).

    Both run the same model, objective (contrastive, label prompts) and Adam; the epoch and
    30-epoch figures extrapolate to IU-Xray's training split.
    """
    from . import finetune as F
    from .images import build_pixel_cache
    from .labels import CHEXPERT_LABELS

    rng = np.random.default_rng(0)
    y = (rng.random((len(paths), 14)) < 0.15).astype(int)
    steps = min(steps, len(paths) // batch_size)  # ours runs at most one epoch over the images
    cfg = F.FinetuneConfig(epochs=1, batch_size=batch_size, lr=1e-5, max_steps_per_epoch=steps,
                           augmentation=False, patience=1)
    scorer = F.build_scorer(model, tokenizer, CHEXPERT_LABELS, cfg).to(device).train()
    opt = torch.optim.Adam([p for p in scorer.parameters() if p.requires_grad], lr=1e-5)
    loss_fn = nn.BCEWithLogitsLoss()
    dl = _seed_style_loader(paths, y, preprocess, batch_size)

    def seed_steps():
        it = iter(dl)
        for _ in range(steps):
            try:
                x, t = next(it)
            except StopIteration:  # a new epoch over the images: decoded again, as in the seed
                it = iter(dl)
                x, t = next(it)
            loss = loss_fn(scorer(x.to(device)), t.to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            float(loss)  # the seed logs every step: a host sync
    seed_steps()  # warm-up (first-call allocations)
    t_seed, _ = _timed(seed_steps)
    ids = [Path(p).stem for p in paths]
    with tempfile.TemporaryDirectory() as d:
        cache = build_pixel_cache(paths, ids, preprocess, cache_dir=d, progress=False)
        train, val = np.arange(len(paths)), np.arange(min(len(paths), 2 * batch_size))
        args = (model, tokenizer, cache, y, train, val, CHEXPERT_LABELS, info.mean, info.std, "bench", cfg)
        F.finetune(*args, Path(d) / "warm", device=device, progress=False)
        t_ours, run = _timed(lambda: F.finetune(*args, Path(d) / "runs", device=device, progress=False))
        ours_step = run.history[0]["epoch_s"] / steps
    steps_epoch = IUXRAY_TRAIN // batch_size
    return {"steps": steps, "batch_size": batch_size, "seed_step_s": t_seed / steps, "ours_step_s": ours_step,
            "speedup": (t_seed / steps) / ours_step, "ours_epoch_s_extrapolated": ours_step * steps_epoch,
            "ours_30_epochs_min_extrapolated": ours_step * steps_epoch * 30 / 60,
            "seed_30_epochs_min_extrapolated": t_seed / steps * steps_epoch * 30 / 60}


def profile_step(model, tokenizer, info, batch_size: int, device, top: int = 8) -> list[dict]:
    """torch.profiler over three fine-tuning steps: the operators with the most self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    from . import finetune as F
    from .labels import CHEXPERT_LABELS

    cfg = F.FinetuneConfig(batch_size=batch_size)
    scorer = F.build_scorer(model, tokenizer, CHEXPERT_LABELS, cfg).to(device).train()
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
    import json

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


def run(smoke: bool = False, out: Path = RESULTS, full_size: bool = True) -> dict:
    """Run every benchmark (``smoke``: tiny sizes, seconds) and write the JSON."""
    import open_clip

    from .io import atomic_write_json
    from .models import load_model

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    res: dict = {"machine": {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
                             "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                             "platform": platform.platform(), "torch": torch.__version__},
                 "smoke": smoke, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    n_emb = 16 if smoke else 256
    with tempfile.TemporaryDirectory() as d:
        paths = _images(n_emb, 512, Path(d) / "png")
        model, preprocess, tok, info = load_model("tiny", device=dev)
        res["embedding_tiny"] = bench_embedding(model, preprocess, info.mean, info.std, paths, dev)
        res["finetune_tiny"] = bench_finetune(model, tok, preprocess, info, paths[: 192 if not smoke else 16],
                                              steps=2 if smoke else 6, batch_size=8 if smoke else 32, device=dev)
        res["profile_tiny_step"] = profile_step(model, tok, info, 8 if smoke else 32, dev)
        if full_size and not smoke:
            tower = biomedclip_size_tower().to(dev)
            mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
            pre = open_clip.image_transform(224, is_train=False, mean=mean, std=std)
            # on a CPU, large batches of a ViT-B lose to cache effects: 8 is the fastest measured
            res["embedding_biomedclip_size"] = bench_embedding(tower, pre, mean, std, paths[:64], dev,
                                                               batch_size=64 if dev.type == "cuda" else 8)
            f = flops_per_image(tower.cpu())
            images = IUXRAY_TRAIN * 30
            res["gpu_estimate_biomedclip_size"] = {
                "image_forward_gflops": f / 1e9,
                "finetune_30_epochs_image_pflop": 3 * f * images / 1e15,
                "h100_min_at_40pct_of_bf16_peak": 3 * f * images / (0.4 * H100_BF16_DENSE_TFLOPS * 1e12) / 60,
                "note": "image tower only (fwd + bwd = 3x forward); the text tower adds 28 prompts per step"}
    res["probe_fit"] = bench_probe((96,) if smoke else (96, 512), *( (400, 100) if smoke else ()))
    res["book"] = book_time()
    atomic_write_json(out, res)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the code path in seconds")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--no-full-size", action="store_true", help="skip the BiomedCLIP-size measurements")
    a = ap.parse_args(argv)
    res = run(a.smoke, a.out, not a.no_full_size)
    import json

    print(json.dumps({k: v for k, v in res.items() if k != "profile_tiny_step"}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
