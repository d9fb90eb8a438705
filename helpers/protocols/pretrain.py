"""Contrastive pretraining of the tiny model on a source corpus with no IU-Xray data.

``python -m helpers.protocols.pretrain`` reproduces the committed demo checkpoint
(``models/tiny-pretrained``). BiomedCLIP was pretrained on figure-caption pairs from PubMed
Central, a different distribution from IU-Xray; this module recreates that situation in
miniature:

* **labels** come from CheXpert's training table (``chexpert_train.csv.gz``, shipped with
  torchxrayvision): another hospital, another label distribution and co-occurrence;
* **images** are phantoms rendered in the ``source`` style (IU-Xray's demo images use the
  ``target`` style);
* **text** is a caption written from the labels (varied phrasing, negations, hedges), not a
  radiology report.

No IU-Xray id, label or text enters the corpus (a test checks it): the tokenizer is trained on
the captions only.

Objective: CLIP's symmetric InfoNCE (open_clip's ``ClipLoss``) with a learnable temperature,
AdamW, a cosine learning-rate schedule with linear warm-up, bf16 autocast on GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from helpers.config import REPO_ROOT, data_dir
from helpers.data.labels import CHEXPERT_LABELS
from helpers.protocols.training import (
    augment,
    autocast,
    cosine_lr,
    normalize01,
    optimizer_step,
    set_lr,
    trim_tokens,
)
from helpers.book.progress import bar as tqdm
from helpers.data import images as I
from helpers.data.iuxray import package_file
from helpers.phantoms.rendering import generate
from helpers.protocols.models import TinyConfig, build_tiny, load_model, save_weights
from helpers.storage import atomic_write_json, building_dir, sha256_bytes, sha256_file

PRETRAINED_DIR = REPO_ROOT / "models" / "tiny-pretrained"

SYNONYMS: dict[str, list[str]] = {
    "Enlarged Cardiomediastinum": ["enlarged cardiomediastinum", "widened mediastinum",
                                   "mediastinal widening"],
    "Cardiomegaly": ["cardiomegaly", "enlarged heart", "cardiac enlargement"],
    "Lung Opacity": ["lung opacity", "pulmonary opacity", "airspace opacity"],
    "Lung Lesion": ["lung lesion", "pulmonary nodule", "lung mass"],
    "Edema": ["pulmonary edema", "edema", "interstitial edema"],
    "Consolidation": ["consolidation", "lobar consolidation", "airspace consolidation"],
    "Pneumonia": ["pneumonia", "infectious process", "pneumonic infiltrate"],
    "Atelectasis": ["atelectasis", "atelectatic change", "subsegmental atelectasis"],
    "Pneumothorax": ["pneumothorax", "collapsed lung with pleural air", "apical pneumothorax"],
    "Pleural Effusion": ["pleural effusion", "effusion", "pleural fluid"],
    "Pleural Other": ["pleural thickening", "pleural plaque", "pleural scarring"],
    "Fracture": ["fracture", "rib fracture", "displaced rib fracture"],
    "Support Devices": ["support devices", "medical devices", "lines and tubes"],
}
POSITIVE = ["{x}.", "there is {x}.", "{x} is present.", "findings consistent with {x}.", "evidence of {x}."]
NEGATIVE = ["no {x}.", "there is no {x}.", "no evidence of {x}.", "{x} is not seen."]
UNCERTAIN = ["possible {x}.", "{x} cannot be excluded.", "may represent {x}.", "questionable {x}."]
NORMAL = ["no acute cardiopulmonary abnormality.", "normal chest radiograph.",
          "the lungs are clear.", "no acute findings."]


def caption(labels: dict[str, float], rng: np.random.Generator) -> str:
    """A caption from three-valued CheXpert labels (1 / 0 / -1 / NaN), phrasing varied by ``rng``.

    Positive and uncertain findings are always mentioned; each explicit negative is mentioned
    with probability 0.7; No Finding adds a normal-study phrase.
    """
    parts = []
    for c in CHEXPERT_LABELS[:-1]:
        v = labels.get(c, float("nan"))
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        x = SYNONYMS[c][rng.integers(len(SYNONYMS[c]))]
        if v == 1:
            parts.append(POSITIVE[rng.integers(len(POSITIVE))].format(x=x))
        elif v == -1:
            parts.append(UNCERTAIN[rng.integers(len(UNCERTAIN))].format(x=x))
        elif v == 0 and rng.random() < 0.7:
            parts.append(NEGATIVE[rng.integers(len(NEGATIVE))].format(x=x))
    if labels.get("No Finding") == 1:
        parts.append(NORMAL[rng.integers(len(NORMAL))])
    rng.shuffle(parts)
    return " ".join(parts) if parts else NORMAL[rng.integers(len(NORMAL))]


def chexpert_corpus(n: int, seed: int = 0, path: str | Path | None = None) -> pd.DataFrame:
    """Sample ``n`` frontal rows of CheXpert's training table and caption them.

    Returns one row per sample: ``image_id`` (``chexpert-<row>``), 14 binary labels (positive,
    and uncertain with probability 1/2), the raw three-valued labels as ``raw:<label>`` (the
    phantom is rendered from these: uncertain findings at reduced conspicuity, no label noise),
    and ``caption``.
    """

    p = Path(path) if path is not None else package_file("chexpert_train.csv.gz")
    df = pd.read_csv(p)
    df = df[df["Frontal/Lateral"] == "Frontal"].reset_index()
    rows = df.sample(n=min(n, len(df)), random_state=seed)
    rng = np.random.default_rng(seed)
    out = []
    for _, r in rows.iterrows():
        raw = {c: r[c] for c in CHEXPERT_LABELS}
        draw = {c: int(raw[c] == 1 or (raw[c] == -1 and rng.random() < 0.5)) for c in CHEXPERT_LABELS}
        if not any(draw[c] for c in CHEXPERT_LABELS[:-1] if c != "Support Devices"):
            draw["No Finding"] = int(raw["No Finding"] == 1 or not any(raw[c] == 1 for c in CHEXPERT_LABELS[:-1]))
        out.append({"image_id": f"chexpert-{int(r['index'])}", **draw,
                    **{f"raw:{c}": raw[c] for c in CHEXPERT_LABELS},
                    "caption": caption(raw, rng)})
    return pd.DataFrame(out)


def clip_step(model, images: torch.Tensor, tokens: torch.Tensor, loss_fn, device: torch.device):
    """One forward pass: the CLIP loss of a batch (images normalised float, tokens trimmed)."""
    with autocast(device):
        img, txt, scale = model(images, tokens)[:3]
        return loss_fn(img.float(), txt.float(), scale.float())


def pretrain(n_samples: int = 8000, epochs: int = 8, batch_size: int = 64, lr: float = 1e-3,
             weight_decay: float = 0.1, seed: int = 0, out: str | Path = PRETRAINED_DIR,
             device: str = "auto", workers: int | None = None, progress: bool = True,
             max_steps: int | None = None, augmentation: bool = True) -> dict:
    """Render the source corpus, pretrain the tiny model, save a ``local-dir:`` checkpoint in ``out``.

    The checkpoint is built in a temporary folder beside ``out`` and renamed into place only when
    training has finished (:func:`helpers.storage.building_dir`): an interrupted or failed run leaves
    ``out`` (e.g. the committed ``models/tiny-pretrained``) byte for byte as it was.

    Returns the log dict (also written to ``out/pretrain_log.json``): parameters, corpus
    hash, per-step losses, wall time, the weights' SHA-256 and every file's SHA-256
    (``files_sha256``, checked by :func:`helpers.protocols.models.load_model`).
    """

    with building_dir(out) as build:
        log = _pretrain_into(build, n_samples=n_samples, epochs=epochs, batch_size=batch_size, lr=lr,
                             weight_decay=weight_decay, seed=seed, device=device, workers=workers,
                             progress=progress, max_steps=max_steps, augmentation=augmentation)
        log["files_sha256"] = {p.name: sha256_file(p) for p in sorted(build.iterdir())
                               if p.is_file() and p.name != "pretrain_log.json"}
        atomic_write_json(build / "pretrain_log.json", log)
    return log


def _pretrain_into(out: Path, n_samples: int, epochs: int, batch_size: int, lr: float, weight_decay: float,
                   seed: int, device: str, workers: int | None, progress: bool, max_steps: int | None,
                   augmentation: bool) -> dict:
    """:func:`pretrain`'s work, writing the checkpoint into the (temporary) folder ``out``."""
    from open_clip.loss import ClipLoss


    t0 = time.perf_counter()
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    torch.manual_seed(seed)
    corpus = chexpert_corpus(n_samples, seed)
    folder = data_dir() / "phantoms" / f"pretrain-source-{n_samples}-{seed}"

    three = corpus.rename(columns={f"raw:{c}": f"text:{c}" for c in CHEXPERT_LABELS})  # drawn from 1/0/-1/NaN
    man = generate(three, folder, style="source", workers=workers, progress=progress)
    out = Path(out)
    build_tiny(out, corpus.caption.tolist(), TinyConfig(), seed=seed)
    model, preprocess, tokenizer, info = load_model(f"local-dir:{out}", device=dev)
    pixels = I.build_pixel_cache([folder / p for p in man.path], man.image_id, preprocess,
                                 workers=workers, progress=progress)
    tokens = tokenizer(corpus.caption.tolist())
    n = len(corpus)
    steps_per_epoch = n // batch_size
    total = steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * epochs)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = ClipLoss()
    g = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    step = 0
    model.train()
    for ep in range(epochs):
        order = torch.randperm(n, generator=g)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {ep + 1}/{epochs}", disable=not progress)
        for b in bar:
            if step >= total:
                break
            idx = order[b * batch_size:(b + 1) * batch_size].sort().values.numpy()
            x01 = torch.from_numpy(np.asarray(pixels.pixels[idx])).float().div_(255)
            x = normalize01(augment(x01, g) if augmentation else x01, info.mean, info.std).to(dev)
            t = trim_tokens(tokens[idx]).to(dev)
            set_lr(opt, cosine_lr(step, total, lr, max(1, total // 20)))
            loss = clip_step(model, x, t, loss_fn, dev)
            optimizer_step(opt, loss)
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(float(loss))
            step += 1
            if step % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    model.eval()
    save_weights(model.cpu(), out)
    log = {
        "command": f"python -m helpers.protocols.pretrain --n-samples {n_samples} --epochs {epochs} "
                   f"--batch-size {batch_size} --lr {lr} --seed {seed}",
        "n_samples": n, "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "weight_decay": weight_decay, "seed": seed, "augmentation": augmentation, "steps": step, "device": str(dev),
        "corpus_sha256": sha256_bytes(corpus.drop(columns=[c for c in corpus if c.startswith("raw:")])
                                      .to_csv(index=False).encode()),
        "losses": losses, "wall_s": time.perf_counter() - t0,
        "weights_file_sha256": sha256_file(out / "open_clip_model.safetensors"),
        "n_params": info.n_params, "torch": torch.__version__,
    }
    atomic_write_json(out / "pretrain_log.json", log)
    return log


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m helpers.protocols.pretrain`` (every option states its default)."""
    ap = argparse.ArgumentParser(prog="python -m helpers.protocols.pretrain", description=__doc__.split("\n")[0]
                                 + " The checkpoint is replaced only when training finishes.")
    ap.add_argument("--n-samples", type=int, default=8000,
                    help="CheXpert rows in the source corpus, one phantom each (default: 8000)")
    ap.add_argument("--epochs", type=int, default=8, help="passes over the corpus (default: 8)")
    ap.add_argument("--batch-size", type=int, default=64, help="pairs per contrastive batch (default: 64)")
    ap.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate (default: 0.001)")
    ap.add_argument("--seed", type=int, default=0, help="seed of corpus, initial weights and order (default: 0)")
    ap.add_argument("--max-steps", type=int, default=None,
                    help="stop after this many optimiser steps (default: none, all epochs)")
    ap.add_argument("--out", type=Path, default=PRETRAINED_DIR,
                    help="checkpoint folder, replaced when training finishes (default: models/tiny-pretrained)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto: CUDA if available)")
    return ap


def _check_args(a: argparse.Namespace) -> None:
    """Refuse values that would train nothing or diverge, naming the option."""
    if not (math.isfinite(a.lr) and a.lr > 0):
        raise ValueError(f"--lr {a.lr}: expected a finite number > 0")
    for name, v, lo in (("--batch-size", a.batch_size, 2), ("--epochs", a.epochs, 1), ("--n-samples", a.n_samples, 2)):
        if v < lo:
            raise ValueError(f"{name} {v}: expected at least {lo}")
    if a.n_samples < a.batch_size:
        raise ValueError(f"--n-samples {a.n_samples} is smaller than --batch-size {a.batch_size}: no full batch, "
                         f"nothing would be trained")
    if a.max_steps is not None and a.max_steps < 1:
        raise ValueError(f"--max-steps {a.max_steps}: expected at least 1")
    if a.seed < 0:
        raise ValueError(f"--seed {a.seed}: expected 0 or more")
    torch.device(a.device if a.device != "auto" else "cpu")  # ValueError/RuntimeError names a bad device


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        _check_args(a)
        log = pretrain(a.n_samples, a.epochs, a.batch_size, a.lr, seed=a.seed, out=a.out, device=a.device,
                       max_steps=a.max_steps)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {a.out} is unchanged", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in log.items() if k != "losses"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
