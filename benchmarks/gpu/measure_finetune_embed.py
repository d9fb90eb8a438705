"""GPU measurement of the project's paths at BiomedCLIP size (random weights), via its public API.

Run from the repository root with the project on PYTHONPATH; writes ``$OUT/gpu_measure.json``
after every stage (a run cut short keeps what it measured). Stages:

1. ~3,970 phantoms (IU-Xray's train + val sizes) and their pixel cache;
2. ``compute_image_embeddings``: the earlier default (batch 64, autocast) against the fast path
   (batch 512: autocast, bf16 weights, bf16 + compile; warm), and the seed's per-image loop;
3. ``finetune()`` end to end, 30 epochs (``EPOCHS``) at batch 32 and 128: the fast path as
   shipped (``auto``: compile, device pixels, device noise, fused Adam, checkpoint every 10) and,
   at batch 32, the fast path switched off (the earlier behaviour), so the validation curves and
   times of both sit side by side.
"""
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from helpers.protocols import finetune as F
from helpers.bench.timing import BIOMEDCLIP_SIZE, IUXRAY_TRAIN, IUXRAY_VAL, seed_style_embeddings
from helpers.protocols.embeddings import compute_image_embeddings
from helpers.data.images import build_pixel_cache
from helpers.data.labels import CHEXPERT_LABELS
from helpers.protocols.models import TinyConfig, build_tiny, load_model
from helpers.phantoms.rendering import generate
from helpers.protocols.pretrain import chexpert_corpus

OUT = Path(os.environ.get("OUT", "/tmp/out"))
OUT.mkdir(parents=True, exist_ok=True)
EPOCHS = int(os.environ.get("EPOCHS", "30"))
dev = torch.device("cuda")
res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "epochs": EPOCHS}
d = Path(tempfile.mkdtemp())


def dump():
    (OUT / "gpu_measure.json").write_text(json.dumps(res, indent=1, default=str))


def timed(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t, out


t = time.perf_counter()
corpus = chexpert_corpus(IUXRAY_TRAIN + IUXRAY_VAL, seed=1)
man = generate(corpus, d / "png", style="target", size=224, progress=False)
res["phantoms_s"] = time.perf_counter() - t
paths = [str(d / "png" / p) for p in man.path]
folder = build_tiny(d / "bmc", corpus["caption"].tolist(), TinyConfig(**BIOMEDCLIP_SIZE))
model, preprocess, tok, info = load_model(f"local-dir:{folder}", device=dev)
res["params_M"] = info.n_params / 1e6
res["pixel_cache_s"], cache = timed(lambda: build_pixel_cache(paths, [Path(p).stem for p in paths], preprocess,
                                                             cache_dir=d / "cache", progress=False))
dump()
ref = None
for name, kw in (("bs64_autocast", dict(batch_size=64)), ("bs512_autocast", dict(batch_size=512)),
                 ("bs512_bf16", dict(batch_size=512, precision="bf16")),
                 ("bs512_bf16_compile", dict(batch_size=512, precision="bf16", compile="on"))):
    run = lambda: compute_image_embeddings(model, cache, info.mean, info.std, device=dev, progress=False, **kw)  # noqa: E731
    run()  # warm-up (compilation, allocator)
    s, e = timed(run)
    ref = e if ref is None else ref
    cos = float(((e * ref).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(ref, axis=1)).min())
    res[f"embed_{name}"] = {"img_per_s": len(paths) / s, "min_cosine_vs_bs64_autocast": cos}
    dump()
s, _ = timed(lambda: seed_style_embeddings(model, preprocess, paths[:256], dev))
res["seed_loop_img_per_s"] = 256 / s
dump()
y = corpus[list(CHEXPERT_LABELS)].to_numpy(int)
train, val = np.arange(IUXRAY_TRAIN), np.arange(IUXRAY_TRAIN, len(paths))
runs = (("bs32_fast", 32, {}), ("bs128_fast", 128, {}),
        ("bs32_off", 32, dict(compile="off", device_pixels="off", augment_noise="host", checkpoint_every=1)))
for name, bs, extra in runs:
    cfg = F.FinetuneConfig(epochs=EPOCHS, batch_size=bs, lr=1e-5, patience=EPOCHS, checkpoint_every=10, **extra)
    torch.cuda.reset_peak_memory_stats()
    s, run = timed(lambda: F.finetune(model, tok, cache, y, train, val, CHEXPERT_LABELS, info.mean, info.std,
                                      f"gpu-{name}", cfg, d / f"runs-{name}", device=dev, progress=False))
    res[f"ft_{name}"] = {"wall_min": s / 60, "speedup_vs_seed_15.47_min": 15.47 / (s / 60) if EPOCHS == 30 else None,
                         "epoch_s": [h["epoch_s"] for h in run.history], "val_auroc": [h["val_auroc"] for h in run.history],
                         "train_loss": [h["train_loss"] for h in run.history], "fast_path": run.fast_path,
                         "peak_mem_GB": torch.cuda.max_memory_allocated() / 1e9}
    dump()
print(json.dumps(res, indent=1, default=str))
