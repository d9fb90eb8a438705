"""Batched image and text embeddings, cached on disk.

Image embeddings are keyed by the model's weights hash, the pixel cache key (which covers
preprocessing and the image list) and the batch-independent settings; text embeddings by the
weights hash and the texts. Caches are ``.npy`` files written atomically; a truncated file is
detected and recomputed. :data:`STATS` counts real computations, so tests can check that a
second call is served from the cache.
"""

from __future__ import annotations

import os
import weakref
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from helpers.config import data_dir
from helpers.data.images import PixelCache
from helpers.storage import read_npy_cache, sha256_bytes, write_npy_cache
from helpers.book.progress import bar as tqdm
from helpers.protocols.training import autocast, maybe_compile, normalize01, to_device

STATS: Counter = Counter()
"""Number of batches actually computed, per kind (``image``, ``text``)."""


def _load_npy(path: Path, n: int) -> np.ndarray | None:
    """A cached (n, d) float32 array, or None (a miss: absent, unparsable, hash, shape or a
    non-finite value wrong; see :func:`helpers.storage.read_npy_cache`)."""
    return read_npy_cache(path, shape=(n, None), dtype=np.float32, finite=True)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    write_npy_cache(path, np.ascontiguousarray(arr, dtype=np.float32))


PRECISIONS = ("auto", "fp32", "autocast", "bf16")


def _embed_plan(model: torch.nn.Module, device: torch.device, precision: str, compile: str):
    """(callable images -> embeddings, autocast context, input dtype) for the chosen precision.

    ``fp32``: the model as is; ``autocast``: bf16 autocast (CUDA, or a CPU with bf16); ``bf16``: a
    bf16 copy of the image tower (the caller's model is left alone); ``auto``: ``autocast`` on CUDA,
    ``fp32`` elsewhere. ``compile`` (``on``/``off``/``auto``: CUDA only) wraps the tower in
    ``torch.compile`` with a fallback to eager.
    """
    import contextlib


    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        precision = "autocast" if device.type == "cuda" else "fp32"
    fn, dtype, ctx = model.encode_image, torch.float32, contextlib.nullcontext
    if precision == "bf16" and hasattr(model, "visual"):
        fn, dtype = _bf16_copy(model.visual, device), torch.bfloat16
    elif precision in ("autocast", "bf16"):
        ctx = lambda: autocast(device, cpu_bf16=True)  # noqa: E731
    fn, _ = maybe_compile(fn, compile, device, dynamic=False)
    return fn, ctx, dtype


_BF16_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Image tower -> (fingerprint of its weights, bf16 copy)."""


def _bf16_copy(tower: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A bf16 copy of ``tower`` on ``device``, made once and re-used while the tower's weights are
    unchanged (same storage and in-place version counters), so repeated extractions, and a
    compiled copy, do not pay for the copy again."""
    import copy

    key = (str(device), tuple((p.data_ptr(), p._version) for p in tower.parameters()))
    hit = _BF16_COPIES.get(tower)
    if hit is None or hit[0] != key:
        hit = (key, copy.deepcopy(tower).to(device, torch.bfloat16).eval())
        _BF16_COPIES[tower] = hit
    return hit[1]


def _uint8_batches(cache: PixelCache, rows: np.ndarray, batch_size: int, device: torch.device):
    """uint8 batches (B, S, S) of ``cache`` rows on ``device``, in order. On a GPU a thread reads
    the next batches from the cache into pinned memory while the current one is computed."""

    starts = range(0, len(rows), batch_size)
    read = lambda i: torch.from_numpy(np.ascontiguousarray(cache.pixels[rows[i:i + batch_size]]))  # noqa: E731
    if device.type != "cuda":
        yield from (read(i) for i in starts)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        ahead = [pool.submit(lambda i=i: read(i).pin_memory()) for i in list(starts)[:2]]
        for k, _ in enumerate(starts):
            nxt = (k + 2) * batch_size
            if nxt < len(rows):
                ahead.append(pool.submit(lambda i=nxt: read(i).pin_memory()))
            yield to_device(ahead[k].result(), device)
            ahead[k] = None


@torch.inference_mode()
def compute_image_embeddings(model: torch.nn.Module, cache: PixelCache, mean: Sequence[float],
                             std: Sequence[float], rows: Sequence[int] | None = None,
                             batch_size: int | None = 64, device: str | torch.device = "cpu",
                             num_workers: int = 0, progress: bool = True, precision: str = "auto",
                             compile: str = "off") -> np.ndarray:
    """Image embeddings (unnormalised) of the cache's rows: float32 (n, embed_dim).

    uint8 batches go to the device (read ahead into pinned memory on a GPU) and are normalised
    there; the embeddings stay on the device until the end. ``batch_size``: images per forward
    pass (``None``: 512 on CUDA, 64 elsewhere). ``precision``: ``auto`` (bf16 autocast on CUDA,
    fp32 elsewhere: the numbers of earlier versions), ``fp32``, ``autocast``, ``bf16`` (bf16
    weights; fastest on a GPU). ``compile``: ``off`` (default), ``on`` or ``auto`` (CUDA only):
    ``torch.compile`` with the last batch padded to full size, so one shape is compiled; it pays
    only when the process embeds many images. ``num_workers`` is accepted for compatibility (the
    cache needs no decoding workers).
    """


    device = torch.device(device)
    batch_size = batch_size or (512 if device.type == "cuda" else 64)
    model = model.to(device).eval()
    rows = np.arange(len(cache)) if rows is None else np.asarray(rows, dtype=np.int64)
    fn, ctx, dtype = _embed_plan(model, device, precision, compile)
    padded = getattr(fn, "state", None) == "compiled"
    out = []
    for x in tqdm(_uint8_batches(cache, rows, batch_size, device), desc="image embeddings", disable=not progress,
                  total=-(-len(rows) // batch_size)):
        n = len(x)
        if padded and n < batch_size:  # one input shape for the compiled tower
            x = torch.cat([x, x.new_zeros((batch_size - n, *x.shape[1:]))])
        with ctx():
            out.append(fn(normalize01(x.to(dtype).div_(255), mean, std))[:n].float())
        STATS["image"] += 1
    return torch.cat(out).cpu().numpy() if out else np.zeros((0, 0), np.float32)


def image_embeddings(model: torch.nn.Module, weights_sha256: str, cache: PixelCache,
                     mean: Sequence[float], std: Sequence[float], batch_size: int | None = None,
                     device: str | torch.device = "cpu", num_workers: int = 0,
                     cache_dir: str | os.PathLike | None = None, progress: bool = True,
                     precision: str = "auto") -> np.ndarray:
    """Cached image embeddings of every row of ``cache``: float32 (N, embed_dim).

    Key: weights hash + pixel cache key + normalisation + the numerical precision actually used
    (``auto`` resolves to ``autocast`` on CUDA and ``fp32`` elsewhere, see
    :func:`compute_image_embeddings`), so a bf16 run never serves an fp32 request. Computed in
    batches under ``torch.inference_mode`` (``batch_size=None``: 512 on CUDA, 64 elsewhere),
    written atomically. A cache of rows taken from a larger one (``cache.parent``: a limited
    run) is served the larger cache's embeddings at those rows when they are cached.
    """
    dev = torch.device(device)
    used = precision if precision != "auto" else ("autocast" if dev.type == "cuda" else "fp32")
    if used not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    tag = "" if used == "fp32" else f"|{used}"  # fp32 keys stay those of earlier versions
    folder = Path(cache_dir) if cache_dir else data_dir() / "cache"

    def file_of(pixel_key: str) -> Path:
        key = sha256_bytes(f"{weights_sha256}|{pixel_key}|{tuple(mean)}|{tuple(std)}{tag}".encode(), 16)
        return folder / f"img_emb-{key}.npy"

    path = file_of(cache.key)
    hit = _load_npy(path, len(cache))
    if hit is not None:
        return hit
    if cache.parent is not None:  # rows of a larger cache (a limited run): its embeddings' rows
        parent_key, rows, n = cache.parent
        larger = _load_npy(file_of(parent_key), n)
        if larger is not None:
            return np.ascontiguousarray(larger[rows])
    emb = compute_image_embeddings(model, cache, mean, std, None, batch_size, dev, num_workers,
                                   progress, precision=used)
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
