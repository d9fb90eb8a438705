"""Which parts of the fine-tuning fast path pay on this GPU, at BiomedCLIP size (random weights).

``helpers.bench.timing.step_variants`` at batch 32 and 128: Adam unfused / fused, eager / compiled,
augmentation on the host / on the device, one checkpoint's snapshot and write; plus the image
side alone (text directions computed once, as for a frozen text tower): the lower bound of a
step. Writes ``$OUT/gpu_fast.json``.
"""
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from helpers.protocols import finetune as F
from helpers.bench.timing import BIOMEDCLIP_SIZE, step_variants
from helpers.data.labels import CHEXPERT_LABELS
from helpers.protocols.models import TinyConfig, build_tiny, load_model
from helpers.protocols.training import autocast

OUT = Path(os.environ.get("OUT", "/tmp/out"))
OUT.mkdir(parents=True, exist_ok=True)
dev = torch.device("cuda")
folder = build_tiny(Path(tempfile.mkdtemp()) / "bmc", ["no acute cardiopulmonary abnormality", "mild cardiomegaly",
                                                        "small left pleural effusion"] * 200, TinyConfig(**BIOMEDCLIP_SIZE))
model, _, tok, info = load_model(f"local-dir:{folder}", device=dev)
res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
for bs in (32, 128):
    res[f"bs{bs}"] = step_variants(model, tok, 224, dev, bs)
    s = F.build_scorer(model, tok, CHEXPERT_LABELS, F.FinetuneConfig()).to(dev).train()
    with torch.no_grad(), autocast(dev):
        dirs = s.text_directions().detach()
    opt = torch.optim.Adam(s.clip.visual.parameters(), lr=1e-5, fused=True)
    x, y = torch.randn(bs, 3, 224, 224, device=dev), (torch.rand(bs, 14, device=dev) < 0.15).float()

    def step():
        with autocast(dev):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                s.embedding_logits(s.clip.encode_image(x), dirs).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        step()
    torch.cuda.synchronize()
    res[f"bs{bs}"]["image_side_only_fused_ms"] = (time.perf_counter() - t) / 20 * 1e3
    print(bs, res[f"bs{bs}"], flush=True)
    (OUT / "gpu_fast.json").write_text(json.dumps(res, indent=1))
