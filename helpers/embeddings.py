"""Batched image and text embeddings, cached on disk.

Image embeddings are keyed by the model's weights hash, the pixel cache key (which covers
preprocessing and the image list) and the batch-independent settings; text embeddings by the
weights hash and the texts. Caches are ``.npy`` files written atomically; a truncated file is
detected and recomputed. :data:`STATS` counts real computations, so tests can check that a
second call is served from the cache.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .config import data_dir
from .images import PixelCache, PixelDataset, to_model_input
from .io import read_npy_cache, sha256_bytes, write_npy_cache

STATS: Counter = Counter()
"""Number of batches actually computed, per kind (``image``, ``text``)."""


def _load_npy(path: Path, n: int) -> np.ndarray | None:
    """A cached (n, d) float32 array, or None (a miss: absent, unparsable, hash, shape or a
    non-finite value wrong; see :func:`helpers.io.read_npy_cache`)."""
    return read_npy_cache(path, shape=(n, None), dtype=np.float32, finite=True)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    write_npy_cache(path, np.ascontiguousarray(arr, dtype=np.float32))


def autocast(device: torch.device):
    """bf16 autocast on CUDA, a no-op context elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext()


@torch.inference_mode()
def compute_image_embeddings(model: torch.nn.Module, cache: PixelCache, mean: Sequence[float],
                             std: Sequence[float], rows: Sequence[int] | None = None,
                             batch_size: int = 64, device: str | torch.device = "cpu",
                             num_workers: int = 0, progress: bool = True) -> np.ndarray:
    """Image embeddings (unnormalised) of the cache's rows: float32 (n, embed_dim)."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    model = model.to(device).eval()
    ds = PixelDataset(cache, rows)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                     pin_memory=device.type == "cuda")
    out = []
    for x, _ in tqdm(dl, desc="image embeddings", disable=not progress):
        x = to_model_input(x.to(device, non_blocking=True), mean, std)
        with autocast(device):
            out.append(model.encode_image(x).float().cpu())
        STATS["image"] += 1
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def image_embeddings(model: torch.nn.Module, weights_sha256: str, cache: PixelCache,
                     mean: Sequence[float], std: Sequence[float], batch_size: int = 64,
                     device: str | torch.device = "cpu", num_workers: int = 0,
                     cache_dir: str | os.PathLike | None = None, progress: bool = True) -> np.ndarray:
    """Cached image embeddings of every row of ``cache``: float32 (N, embed_dim).

    Key: weights hash + pixel cache key + normalisation. Computed in batches under
    ``torch.inference_mode`` (bf16 autocast on GPU), written atomically.
    """
    key = sha256_bytes(f"{weights_sha256}|{cache.key}|{tuple(mean)}|{tuple(std)}".encode(), 16)
    path = (Path(cache_dir) if cache_dir else data_dir() / "cache") / f"img_emb-{key}.npy"
    hit = _load_npy(path, len(cache))
    if hit is not None:
        return hit
    emb = compute_image_embeddings(model, cache, mean, std, None, batch_size, device, num_workers, progress)
    _save_npy(path, emb.astype(np.float32))
    return emb


@torch.inference_mode()
def text_embeddings(model: torch.nn.Module, tokenizer, weights_sha256: str, texts: Sequence[str],
                    batch_size: int = 128, device: str | torch.device = "cpu",
                    cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """Cached text embeddings (unnormalised): float32 (len(texts), embed_dim)."""
    texts = list(texts)
    key = sha256_bytes((weights_sha256 + "\x00" + "\x00".join(texts)).encode(), 16)
    path = (Path(cache_dir) if cache_dir else data_dir() / "cache") / f"txt_emb-{key}.npy"
    hit = _load_npy(path, len(texts))
    if hit is not None:
        return hit
    device = torch.device(device)
    model = model.to(device).eval()
    out = []
    for i in range(0, len(texts), batch_size):
        tok = tokenizer(texts[i:i + batch_size]).to(device)
        with autocast(device):
            out.append(model.encode_text(tok).float().cpu())
        STATS["text"] += 1
    emb = torch.cat(out).numpy().astype(np.float32)
    _save_npy(path, emb)
    return emb


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Rows scaled to unit Euclidean norm (zero rows stay zero)."""
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(n, 1e-12)
