"""Images for a profile, decoded and preprocessed once into a uint8 cache.

* ``demo``: phantoms (:mod:`helpers.phantoms`) rendered for the split's image ids.
* ``full``: the Open-I IU-Xray PNGs (``<image_id>.png`` in one folder, as the NLMCXR_png
  archive unpacks).

:func:`build_pixel_cache` applies open_clip's own geometric preprocessing (its ``Resize`` and
``CenterCrop``, taken from the model's transform) to every image once and stores the result as
a uint8 array (N, S, S) on disk. Batches are then converted to float and normalised on the fly
(:func:`to_model_input`), which reproduces open_clip's ``preprocess`` exactly for grey-level
images, without decoding a PNG twice.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .config import data_dir
from .io import atomic_write_json, sha256_bytes

ON_ERROR = ("stop", "skip")


class ImageError(RuntimeError):
    """An image that cannot be read; the message names the file and how to repair it."""


def phantom_images(split: pd.DataFrame, style: str = "target", size: int = 224,
                   workers: int | None = None, progress: bool = True,
                   noise: pd.DataFrame | None = None) -> pd.DataFrame:
    """The split with ``path`` and ``mask_path`` columns pointing at rendered phantoms.

    Phantoms are rendered (or re-used) in ``data_dir()/phantoms/<style>-<size>``, from the
    split's three-valued ``text:<label>`` columns when it has them (so the uncertainty policy
    never changes a pixel), else from its binary labels. ``noise``: label-noise rates
    (:func:`phantoms.noise_rates` of the label table's reports), or None for none.
    """
    from . import phantoms

    folder = data_dir() / "phantoms" / f"{style}-{size}"
    man = phantoms.generate(split, folder, style=style, size=size, workers=workers, progress=progress,
                            noise=noise)
    man = man.set_index("image_id")
    out = split.copy()
    out["path"] = [str(folder / p) for p in man.loc[out.image_id, "path"]]
    out["mask_path"] = [str(folder / p) for p in man.loc[out.image_id, "mask_path"]]
    return out


def openi_images(split: pd.DataFrame, image_dir: str | os.PathLike) -> pd.DataFrame:
    """The split with ``path`` = ``image_dir/<image_id>.png`` (Open-I naming).

    Raises ``FileNotFoundError`` when the folder does not exist (naming it and the command
    that fetches the images). Missing single files are reported by :func:`build_pixel_cache`.
    """
    d = Path(image_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"Open-I image folder not found: {d}; fetch the images with "
                                f"`python -m helpers.download` or pass image_dir=<folder of PNGs>")
    out = split.copy()
    out["path"] = [str(d / f"{i}.png") for i in out.image_id]
    return out


def geometric_transform(preprocess):
    """open_clip's preprocessing without its tensor conversion and normalisation."""
    from torchvision import transforms as T

    keep = [t for t in preprocess.transforms
            if type(t).__name__ not in ("MaybeToTensor", "ToTensor", "Normalize", "MaybeConvertMode",
                                        "_convert_to_rgb", "function")]
    return T.Compose(keep)


def _load_one(job: tuple[int, str, object]) -> tuple[int, np.ndarray | None, str]:
    i, path, geo = job
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            g = im.convert("L")
        return i, np.asarray(geo(g), dtype=np.uint8), ""
    except FileNotFoundError:
        return i, None, "file not found"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        return i, None, f"cannot decode ({type(e).__name__}: {e})"


@dataclass
class PixelCache:
    """Preprocessed images: ``pixels`` uint8 (N, S, S) memory-map, one row per id."""

    pixels: np.ndarray
    ids: list[str]
    ok: np.ndarray
    key: str
    path: Path
    failures: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


def _cache_key(paths: Sequence[str], ids: Sequence[str], geo) -> str:
    parts = [repr(geo)]
    for i, p in zip(ids, paths):
        try:
            st = os.stat(p)
            parts.append(f"{i}|{p}|{st.st_size}|{st.st_mtime_ns}")
        except FileNotFoundError:
            parts.append(f"{i}|{p}|missing")
    return sha256_bytes("\n".join(parts).encode(), 16)


def _open_cache(npy: Path, meta: Path, n: int) -> tuple[np.ndarray, dict] | None:
    """The cached array and its metadata, or None when absent, truncated or inconsistent."""
    if not (npy.is_file() and meta.is_file()):
        return None
    try:
        m = json.loads(meta.read_text())
        arr = np.load(npy, mmap_mode="r")
    except (ValueError, OSError, json.JSONDecodeError):
        return None
    if arr.shape[0] != n or len(m.get("ids", [])) != n or arr.dtype != np.uint8:
        return None
    return arr, m


def build_pixel_cache(paths: Sequence[str], ids: Sequence[str], preprocess, on_error: str = "stop",
                      workers: int | None = None, cache_dir: str | os.PathLike | None = None,
                      progress: bool = True) -> PixelCache:
    """Decode + preprocess every image once into ``cache_dir/pixels-<key>.npy``.

    Parameters
    ----------
    paths, ids : image files and their ids (same order).
    preprocess : the model's open_clip transform (only its Resize/CenterCrop are applied here).
    on_error : ``"stop"`` (default) raises :class:`ImageError` naming the first bad file;
        ``"skip"`` leaves that row black, marks it ``ok=False`` and records it in ``failures``.
    workers : decoding processes (default: all cores).

    The key covers the transform, the ids and each file's size and mtime, so a changed image
    or preprocessing builds a new cache. A truncated or inconsistent cache file is rebuilt.
    The array is written to a temporary file and renamed; the metadata JSON is written last.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r} is not valid; expected one of {ON_ERROR}")
    geo = geometric_transform(preprocess)
    paths, ids = [str(p) for p in paths], list(ids)
    key = _cache_key(paths, ids, geo)
    folder = Path(cache_dir) if cache_dir is not None else data_dir() / "cache"
    npy, meta = folder / f"pixels-{key}.npy", folder / f"pixels-{key}.json"
    hit = _open_cache(npy, meta, len(ids))
    if hit is not None:
        arr, m = hit
        failures = m.get("failures", {})
        if failures and on_error == "stop":
            bad = next(iter(failures))
            raise ImageError(_bad_message(bad, failures[bad]))
        return PixelCache(arr, ids, np.array(m["ok"], bool), key, npy, failures)

    probe = _load_one((0, paths[0], geo)) if paths else (0, None, "")
    S = probe[1].shape if probe[1] is not None else _output_size(geo)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".pixels-{key}.{os.getpid()}.npy.tmp"
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(ids), *S))
    ok = np.zeros(len(ids), bool)
    failures: dict[str, str] = {}

    try:
        jobs = [(i, p, geo) for i, p in enumerate(paths)]
        for i, px, err in _imap(jobs, workers, progress):
            if px is None:
                failures[paths[i]] = err
                if on_error == "stop":
                    raise ImageError(_bad_message(paths[i], err))
                continue
            arr[i] = px
            ok[i] = True
        arr.flush()
        del arr
        os.replace(tmp, npy)
    finally:
        if tmp.exists():
            tmp.unlink()
    atomic_write_json(meta, {"ids": ids, "ok": ok.tolist(), "failures": failures,
                             "transform": repr(geo)})
    return PixelCache(np.load(npy, mmap_mode="r"), ids, ok, key, npy, failures)


def _imap(jobs, workers, progress):
    from tqdm.auto import tqdm

    workers = workers or os.cpu_count() or 1
    bar = dict(total=len(jobs), desc="decode + preprocess", disable=not progress)
    if workers == 1 or len(jobs) < 32:
        yield from tqdm(map(_load_one, jobs), **bar)
        return
    import multiprocessing as mp

    with mp.get_context("fork").Pool(workers) as pool:
        yield from tqdm(pool.imap(_load_one, jobs, chunksize=32), **bar)


def _output_size(geo) -> tuple[int, int]:
    for t in geo.transforms:
        if type(t).__name__ == "CenterCrop":
            return tuple(t.size)
    raise ValueError("cannot infer the output size from the transform")


def _bad_message(path: str, err: str) -> str:
    return (f"{path}: {err}; expected a readable PNG image. Re-fetch it with "
            f"`python -m helpers.download`, or leave it out with `-p on_error skip` (on_error='skip'; "
            f"skipped images are counted in the page stamp)")


def to_model_input(batch: torch.Tensor | np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, S, S) grey levels -> float (B, 3, S, S), normalised as open_clip does."""
    x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.array(batch))
    x = x.float().div_(255.0).unsqueeze(1).expand(-1, 3, -1, -1)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


class PixelDataset(torch.utils.data.Dataset):
    """Rows of a :class:`PixelCache` as uint8 tensors (S, S), with their index."""

    def __init__(self, cache: PixelCache, rows: Sequence[int] | None = None):
        self.cache = cache
        self.rows = np.arange(len(cache)) if rows is None else np.asarray(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        r = int(self.rows[i])
        return torch.from_numpy(np.array(self.cache.pixels[r])), r
