"""Benchmarks, measured side by side in one run: ``make bench`` (``python -m helpers.bench.timing``).

On the same images and the same machine, each fast path of this project is timed against the
original study's way of doing the same work:

* embedding extraction: the original study's loop (one image at a time: PIL decode, open_clip
  preprocessing, ``encode_image``) against ours (decode + preprocess once into a uint8 cache,
  then batched ``inference_mode`` forward passes), cold (cache built in the timing) and warm,
  at the demo model's size and at BiomedCLIP's image-tower size (ViT-B/16, 224 px, randomly
  initialised: speed needs no weights), in each precision the device supports; on a GPU also a
  bare forward pass of the same tower on random tensors (the hardware's ceiling);
* linear-probe fitting on embeddings of IU-Xray's split sizes (14 labels, 4 values of C): the
  per-label sklearn loop against the vectorised fit;
* fine-tuning steps: PNG decode per step in a DataLoader (the original study's) against
  the pixel cache (ours), with the CPU thread count that the machine's load allows;
* on a GPU, fine-tuning at BiomedCLIP size end to end (``finetune()``: data, augmentation,
  validation every epoch, checkpoints) for the issue's 30 epochs, and the step variants that
  decide the fast path (fused Adam, ``torch.compile``, host or device augmentation, checkpoint
  cost);
* the whole demo book, from the runner's ``run_times.json``: each chapter's time, the machine's
  load while it ran and its three costliest cells (:mod:`helpers.bench.book_costs`); the warm
  ``load_study("demo")`` in fresh processes, with the imports the call triggers; a
  torch-profiler table of the demo fine-tuning step's hottest operators; FLOPs per image of the
  BiomedCLIP-size tower.

The sizes follow the device (:func:`plan_for`: a CPU runs small sizes, a GPU >= 2,048 images at
ViT-B). Results are kept per device in ``benchmarks/results.json`` (``devices``, keyed by
:func:`device_key`), so CPU and GPU results live side by side; the book's benchmark page renders
every device in the file. A new run of a device keeps that device's previous entry beside it
(``previous``), so the page shows each measurement with the one before. ``--smoke`` writes to
``outputs/bench_smoke.json`` instead.
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

from helpers.bench.report import read_results
from helpers.config import REPO_ROOT

from helpers.bench.book_costs import chapter_costs, load_study_time
from helpers.bench.finetune_timing import (
    BIOMEDCLIP_SIZE,
    IUXRAY_TRAIN,
    SEED_FINETUNE_MIN,
    _build_model,
    _images,
    _timed,
    bench_finetune,
    bench_finetune_e2e,
    profile_step,
    step_variants,
)
from helpers.data.images import build_pixel_cache
from helpers.protocols.embeddings import compute_image_embeddings
from helpers.protocols.models import load_model
from helpers.protocols.probe import DEFAULT_CS, fit_probe
from helpers.protocols.training import autocast, cpu_has_bf16, maybe_compile
from helpers.storage import atomic_write_json

RESULTS = REPO_ROOT / "benchmarks" / "results.json"
IUXRAY_VAL = 368  # validation images of the split, one frontal per report (chapter 1; tested)


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


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


@torch.no_grad()
def seed_style_embeddings(model: nn.Module, preprocess, paths: Sequence[str], device: torch.device) -> np.ndarray:
    """The original study's loop: per image, PIL decode, preprocess, a batch of one through the model."""
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
    """Seconds and images/s for the original study's loop (on ``seed_images`` of the images) and ours (cold
    and warm cache) in each precision (and compiled, warm); speed-ups per image; max |diff|."""

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


def bare_forward(tower: nn.Module, device: torch.device, batch: int = 512, steps: int = 10, size: int = 224,
                 compile_too: bool = True) -> dict:
    """Images/s of the tower's forward on random tensors already on the device (no data path):
    autocast, bf16 weights, bf16 weights compiled. The ceiling the embedding path is read against."""
    import copy


    out = {}
    x = torch.randn(batch, 3, size, size, device=device)
    bf = copy.deepcopy(tower.visual).to(device, torch.bfloat16).eval()
    variants = [("autocast", lambda v: tower.to(device).eval().encode_image(v), x), ("bf16", bf, x.bfloat16())]
    if compile_too:
        variants.append(("bf16+compile", maybe_compile(bf, "on", device)[0], x.bfloat16()))
    for name, fn, xin in variants:
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


def flops_per_image(tower: nn.Module, size: int = 224) -> float:
    """Forward FLOPs of one image through ``tower`` (torch's FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.no_grad():
        tower.encode_image(torch.randn(1, 3, size, size))
    return float(fc.get_total_flops())


def book_time(profile: str = "demo") -> dict | None:
    """The runner's per-chapter times (``run_times.json``), their total over the book's chapters,
    each chapter's load and costliest cells (:func:`bench_book.chapter_costs`)."""

    return chapter_costs(profile)


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


def merge_entry(previous: dict, res: dict) -> dict:
    """The results file's ``devices`` once this device's new entry ``res`` is in. Other devices'
    entries stay (an entry of this device type from before the per-device format, whose machine
    has no ``key``, is replaced); this device's ``full_profile_run`` (:mod:`helpers.bench.at_scale`)
    is carried over, and its last ``make bench`` entry is kept inside the new one as
    ``previous`` (without its own ``previous``), so the page shows the two runs side by side."""
    devices = {k: v for k, v in previous.get("devices", {}).items()
               if v.get("machine", {}).get("key") or v.get("machine", {}).get("device") != res["machine"]["device"]}
    before = devices.get(res["machine"]["key"], {})
    if before.get("full_profile_run") is not None:
        res["full_profile_run"] = before["full_profile_run"]
    if "probe_fit" in before:  # a run of make bench, not only a full-profile record
        res["previous"] = {k: v for k, v in before.items() if k != "previous"}
    devices[res["machine"]["key"]] = res
    return devices


def run(smoke: bool = False, out: Path | None = None, full_size: bool = True, device: str = "auto",
        e2e: bool = True) -> dict:
    """Run every benchmark sized by :func:`plan_for` and store the results under this device's key
    in ``out`` (default: ``benchmarks/results.json``; ``outputs/bench_smoke.json`` for ``smoke``);
    results of other devices in the file are kept. Returns this device's results."""

    out = Path(out) if out is not None else (smoke_path() if smoke else RESULTS)
    if smoke and out.resolve() == RESULTS.resolve():
        raise ValueError(f"--smoke results must not overwrite the committed {RESULTS}; pass another --out")
    previous = read_results(out)
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    plan = plan_for(dev.type, smoke)
    if dev.type == "cpu" and not cpu_has_bf16():  # bf16 autocast without bf16 instructions is emulated: skip
        plan["precisions"] = tuple(p for p in plan["precisions"] if p not in ("autocast", "bf16"))
    res: dict = {"machine": _machine(dev, smoke), "plan": plan}
    res["load_study"] = load_study_time("demo", repeats=1 if smoke else 5, limit=4 if smoke else None)
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

            big, _, big_tok, _ = _build_model("biomedclip-size", ["no finding", "cardiomegaly"] * 50, Path(d) / "big", dev)
            res["step_variants_biomedclip_size"] = {str(bs): step_variants(big, big_tok, 224, dev, bs) for bs in (32, 128)}
    res["probe_fit"] = bench_probe(plan["probe_dims"], *plan["probe_sizes"])
    res["book"] = book_time()
    devices = merge_entry(previous, res)
    atomic_write_json(out, {"format": 2, "latest": res["machine"]["key"], "devices": devices})
    return res


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m helpers.bench.timing", description=__doc__.split("\n")[0].replace("``", ""),
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
        print(f"python -m helpers.bench.timing: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in res.items() if k not in ("profile_tiny_step", "previous")}, indent=1,
                     default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
