"""Images for a profile, decoded and preprocessed once into a uint8 cache.

* ``demo``: phantoms (:mod:`helpers.phantoms.rendering`) rendered for the split's image ids.
* ``full``: the Open-I IU-Xray PNGs (``<image_id>.png`` in one folder, as the NLMCXR_png
  archive unpacks).

:func:`build_pixel_cache` applies open_clip's own geometric preprocessing (its ``Resize`` and
``CenterCrop``, taken from the model's transform) to every image once and stores the result as
a uint8 array (N, S, S) on disk. Batches are then converted to float and normalised on the fly
(:func:`to_model_input`), which reproduces open_clip's ``preprocess`` exactly for grey-level
images, without decoding a PNG twice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from helpers.config import data_dir
from helpers.book.progress import bar as tqdm
from helpers.phantoms import rendering
from helpers.storage import (
    CacheIntegrityError,
    _pid_alive,
    atomic_write_json,
    read_cache,
    read_json_cache,
    remove_stale_temps,
    sha256_bytes,
    sha256_file,
    temp_path,
)
from helpers.workers import pool as worker_pool

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
    (:func:`rendering.noise_rates` of the label table's reports), or None for none.
    """

    folder = data_dir() / "phantoms" / f"{style}-{size}"
    man = rendering.generate(split, folder, style=style, size=size, workers=workers, progress=progress,
                            noise=noise)
    man = man.set_index("image_id")
    out = split.copy()
    out["path"] = [str(folder / p) for p in man.loc[out.image_id, "path"]]
    out["mask_path"] = [str(folder / p) for p in man.loc[out.image_id, "mask_path"]]
    return out


def rendered_phantoms(split: pd.DataFrame, style: str = "target", size: int = 224) -> pd.DataFrame | None:
    """The split with ``path`` and ``mask_path`` of the phantoms already rendered for it (as
    :func:`phantom_images` names them), or ``None`` when one of its images has none yet.
    Renders and verifies nothing: for finding caches built for these files, whose keys cover
    each file's size and time."""
    folder = data_dir() / "phantoms" / f"{style}-{size}"
    man = read_cache(folder / "manifest.csv", lambda p: pd.read_csv(p, dtype=str, keep_default_na=False),
                     lambda m: None if {"image_id", "path", "mask_path"} <= set(m.columns)
                     else "no image_id, path and mask_path columns")
    if man is None:
        return None
    man = man.drop_duplicates("image_id", keep="last").set_index("image_id")
    ids = split.image_id.astype(str)
    if not ids.isin(man.index).all():
        return None
    out = split.copy()
    out["path"] = [str(folder / p) for p in man.loc[ids, "path"]]
    out["mask_path"] = [str(folder / p) for p in man.loc[ids, "mask_path"]]
    return out


def openi_images(split: pd.DataFrame, image_dir: str | os.PathLike) -> pd.DataFrame:
    """The split with ``path`` = ``image_dir/<image_id>.png`` (Open-I naming).

    Raises ``FileNotFoundError`` when the folder does not exist (naming it and the command
    that fetches the images). Missing single files are reported by :func:`build_pixel_cache`.
    """
    d = Path(image_dir)
    if not d.is_dir():
        raise FileNotFoundError(
            f"Open-I image folder not found: {d}; fetch the images with `python -m helpers.data.download images` "
            f"(into {data_dir() / 'openi' / 'images'}), or put the PNGs (named <image id>.png) there, "
            f"or point the chapters at another folder with `-p image_dir DIR`; "
            f"IUXRAY_DATA_DIR=DIR moves the default folder to DIR/openi/images")
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


HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
"""PIL modes with more than 8 bits per pixel (16-bit PNGs open as ``I;16``)."""


def to_grey(im) -> "Image.Image":
    """Any PIL image -> 8-bit grey (mode ``L``), preserving what the pixels mean.

    * ``L``: unchanged; ``1``, ``P`` (palette), ``RGB``, ``CMYK``, ``YCbCr``...: PIL's conversion
      (ITU-R 601 luma through the palette where there is one);
    * with transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent entry): composited over
      black (transparent = no signal, as air on a radiograph);
    * 16-bit and wider (``I;16``, ``I``, ``F``): scaled by the image's own range, ``min -> 0``,
      ``max -> 255`` (linear). PIL's ``convert("L")`` would clip every value above 255 to white.
      A constant image becomes all 0. Non-finite float pixels are refused (``ValueError``).
    """
    from PIL import Image

    if im.mode == "L":
        return im
    if im.mode in HIGH_DEPTH_MODES:
        a = np.asarray(im)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ValueError(f"mode {im.mode} image holds NaN or infinite pixels")
        a = a.astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        out = np.zeros(a.shape, np.uint8) if hi <= lo else np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)
        return Image.fromarray(out, mode="L")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("L")
    return im.convert("L")


def _load_one(job: tuple[int, str, object]) -> tuple[int, np.ndarray | None, str]:
    """Decode + preprocess one image: (row, uint8 (S, S) or None, why it failed or '').

    Every failure of decoding (unidentified, truncated, a header claiming more pixels than PIL
    accepts: ``DecompressionBombError``, out of memory, ...) is returned as a reason, never
    raised, so the caller names the file and ``on_error="skip"`` covers them all."""
    i, path, geo = job
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # a bomb is a bad file too
            with Image.open(path) as im:
                im.load()
                g = to_grey(im)
        return i, np.asarray(geo(g), dtype=np.uint8), ""
    except FileNotFoundError:
        return i, None, "file not found"
    except (Exception, MemoryError) as e:  # noqa: BLE001 - any decode failure is this file's
        return i, None, f"cannot decode ({type(e).__name__}: {e})"


@dataclass
class PixelCache:
    """Preprocessed images: ``pixels`` uint8 (N, S, S) memory-map, one row per id.

    ``parent``: for rows taken from a larger cache (:meth:`subset`), that cache's key, the rows
    taken (in order) and its length, so what is cached for the larger one (embeddings:
    :func:`helpers.protocols.embeddings.image_embeddings`) serves these rows too."""

    pixels: np.ndarray
    ids: list[str]
    ok: np.ndarray
    key: str
    path: Path
    failures: dict[str, str] = field(default_factory=dict)
    parent: tuple[str, np.ndarray, int] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: Sequence[int], paths: Sequence[str], geometry: str) -> "PixelCache":
        """The cache of the images at ``rows`` (files ``paths``, in that order), in memory: the
        same pixels, flags and key as :func:`build_pixel_cache` gives for those files alone
        (keyed by ``geometry``, the files' sizes and times), without decoding any of them."""
        rows = np.asarray(rows, dtype=np.int64)
        ids = [self.ids[r] for r in rows]
        paths = [str(p) for p in paths]
        failures = {p: self.failures[p] for p in paths if p in self.failures}
        return PixelCache(np.ascontiguousarray(self.pixels[rows]), ids, self.ok[rows].copy(),
                          _cache_key(paths, ids, geometry), self.path, failures,
                          parent=(self.key, rows, len(self)))

    @classmethod
    def in_memory(cls, pixels: np.ndarray, name: str = "in-memory") -> "PixelCache":
        """A cache over images already preprocessed in memory (uint8 (N, S, S)), e.g. rendered
        counterfactuals, so every embedding and scoring function takes them as they take files."""
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        return cls(pixels, [f"{name}-{i}" for i in range(len(pixels))], np.ones(len(pixels), bool),
                   sha256_bytes(pixels.tobytes(), 16), Path(name))


def _cache_key(paths: Sequence[str], ids: Sequence[str], geometry: str) -> str:
    parts = [geometry]
    for i, p in zip(ids, paths):
        try:
            st = os.stat(p)
            parts.append(f"{i}|{p}|{st.st_size}|{st.st_mtime_ns}")
        except FileNotFoundError:
            parts.append(f"{i}|{p}|missing")
    return sha256_bytes("\n".join(parts).encode(), 16)


def _open_cache(npy: Path, meta: Path, ids: Sequence[str]) -> tuple[np.ndarray, dict] | None:
    """The cached array (memory-mapped) and its metadata, or None (a miss, rebuilt) when absent,
    unparsable, for other ids, of the wrong shape or dtype, or when the array file's SHA-256
    differs from the one recorded in the metadata (e.g. zeroed or truncated behind a valid header)."""

    n = len(ids)

    def meta_ok(m: dict) -> str | None:
        if m.get("ids") != list(ids) or len(m.get("ok", [])) != n or not isinstance(m.get("npy_sha256"), str):
            return "its ids, flags or content hash do not match this image list"
        return None

    if not npy.is_file():
        return None
    m = read_json_cache(meta, meta_ok)
    if m is None:
        return None

    def load(p: Path) -> np.ndarray:
        got = sha256_file(p)
        if got != m["npy_sha256"]:
            raise CacheIntegrityError(f"content hash {got[:12]} differs from the recorded {m['npy_sha256'][:12]}")
        return np.load(p, mmap_mode="r")

    arr = read_cache(npy, load, lambda a: None if a.shape[0] == n and a.dtype == np.uint8 and a.ndim == 3
                     else f"shape {a.shape} / dtype {a.dtype}, expected ({n}, S, S) uint8")
    return None if arr is None else (arr, m)


def build_pixel_cache(paths: Sequence[str], ids: Sequence[str], preprocess, on_error: str = "stop",
                      workers: int | None = None, cache_dir: str | os.PathLike | None = None,
                      progress: bool = True, geometry: str | None = None) -> PixelCache:
    """Decode + preprocess every image once into ``cache_dir/pixels-<key>.npy``.

    Parameters
    ----------
    paths, ids : image files and their ids (same order).
    preprocess : the model's open_clip transform (only its Resize/CenterCrop are applied here).
    on_error : ``"stop"`` (default) raises :class:`ImageError` naming the first bad file;
        ``"skip"`` leaves that row black, marks it ``ok=False`` and records it in ``failures``.
    workers : decoding processes (default: all cores).
    geometry : ``repr`` of :func:`geometric_transform` of ``preprocess``, where the caller knows
        it (:func:`study.load_study` keeps it with the model's description): a cache hit then never
        touches ``preprocess`` and never imports torchvision (1.3 s of a chapter's start on two
        busy cores); a miss checks it against ``preprocess`` before building.

    Images of any mode are made 8-bit grey by :func:`to_grey` (16-bit ones scaled by their range).
    The key covers the transform, the ids and each file's size and mtime, so a changed image
    or preprocessing builds a new cache. The metadata records the array file's SHA-256; a cache
    that fails it (or is truncated, or inconsistent) is rebuilt. The array is written to a
    temporary file and renamed; the metadata JSON is written last. Temporary files left by an
    interrupted build are removed first.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r} is not valid; expected one of {ON_ERROR}")
    geo = geometric_transform(preprocess) if geometry is None else None
    paths, ids = [str(p) for p in paths], list(ids)
    key = _cache_key(paths, ids, repr(geo) if geometry is None else geometry)
    folder = Path(cache_dir) if cache_dir is not None else data_dir() / "cache"
    npy, meta = folder / f"pixels-{key}.npy", folder / f"pixels-{key}.json"
    _remove_stale_builds(folder)
    hit = _cached(key, ids, folder, on_error)
    if hit is not None:
        return hit
    if geo is None:
        geo = geometric_transform(preprocess)
        if repr(geo) != geometry:
            raise ValueError(f"geometry={geometry!r} is not the geometric transform of preprocess ({geo!r})")

    probe = _load_one((0, paths[0], geo)) if paths else (0, None, "")
    S = probe[1].shape if probe[1] is not None else _output_size(geo)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(npy)
    arr = _create_array(tmp, (len(ids), *S))
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
        digest = sha256_file(tmp)
        meta.unlink(missing_ok=True)
        os.replace(tmp, npy)
    finally:
        if tmp.exists():
            tmp.unlink()
    atomic_write_json(meta, {"ids": ids, "ok": ok.tolist(), "failures": failures,
                             "transform": repr(geo), "npy_sha256": digest})
    return PixelCache(np.load(npy, mmap_mode="r"), ids, ok, key, npy, failures)


def _cached(key: str, ids: list[str], folder: Path, on_error: str) -> PixelCache | None:
    """The cache ``pixels-<key>`` in ``folder`` if it holds ``ids`` intact, else ``None``;
    raises :class:`ImageError` for a recorded unreadable image under ``on_error="stop"``."""
    npy, meta = folder / f"pixels-{key}.npy", folder / f"pixels-{key}.json"
    hit = _open_cache(npy, meta, ids)
    if hit is None:
        return None
    arr, m = hit
    failures = m.get("failures", {})
    if failures and on_error == "stop":
        bad = next(iter(failures))
        raise ImageError(_bad_message(bad, failures[bad]))
    return PixelCache(arr, ids, np.array(m["ok"], bool), key, npy, failures)


def open_pixel_cache(paths: Sequence[str], ids: Sequence[str], geometry: str, on_error: str = "stop",
                     cache_dir: str | os.PathLike | None = None) -> PixelCache | None:
    """The pixel cache :func:`build_pixel_cache` built for exactly these files, or ``None`` when
    there is none (never builds one, never decodes an image)."""
    paths, ids = [str(p) for p in paths], list(ids)
    folder = Path(cache_dir) if cache_dir is not None else data_dir() / "cache"
    return _cached(_cache_key(paths, ids, geometry), ids, folder, on_error)


def pixels_from_larger(paths: Sequence[str], ids: Sequence[str], larger: pd.DataFrame, geometry: str,
                       on_error: str = "stop", cache_dir: str | os.PathLike | None = None
                       ) -> PixelCache | None:
    """The pixel cache of ``paths`` / ``ids`` taken from the cache already built for the larger
    image list ``larger`` (``path`` and ``image_id`` columns; e.g. the whole split, when a run is
    limited to a subset of it), or ``None`` when that cache was never built or ``larger`` lacks
    one of the images at the same path. The pixels are those of the same files decoded anew:
    the larger cache's key covers every file's size and modification time."""
    paths, ids = [str(p) for p in paths], [str(i) for i in ids]
    where = {(str(i), str(p)): r for r, (i, p) in enumerate(zip(larger.image_id, larger.path))}
    rows = [where.get(k) for k in zip(ids, paths)]
    if not paths or any(r is None for r in rows):
        return None
    full = open_pixel_cache(larger.path, larger.image_id.astype(str), geometry, "skip", cache_dir)
    if full is None:
        return None
    sub = full.subset(rows, paths, geometry)
    if sub.failures and on_error == "stop":
        bad = next(iter(sub.failures))
        raise ImageError(_bad_message(bad, sub.failures[bad]))
    return sub


SPACE_MARGIN = 64 << 20
"""Free space (bytes) left over after a pixel cache is allocated: 64 MiB for the metadata and
the other small files a run writes."""


class CacheSpaceError(OSError):
    """Not enough free disk space for a cache; the message names the folder and the sizes."""


def _create_array(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A uint8 ``.npy`` memory map of ``shape`` at ``path`` whose disk blocks are allocated up front.

    A memory map over a sparse file on a full disk dies with SIGBUS at the first page that cannot
    be stored, with no message; so the free space is checked first and the blocks are reserved
    with ``posix_fallocate`` (which fails with ENOSPC instead). Raises :class:`CacheSpaceError`
    naming the folder, the bytes needed and the bytes free."""
    import errno
    import shutil

    n = int(np.prod(shape, dtype=np.int64))
    folder = path.parent

    def no_space(free: int | None) -> CacheSpaceError:
        have = f"{free:,} bytes free" if free is not None else "the disk is full"
        return CacheSpaceError(errno.ENOSPC, f"not enough free disk space in {folder} for the pixel cache "
                               f"({n:,} bytes for {shape[0]} images of {shape[1]}x{shape[2]} pixels, {have}); "
                               f"free space there, or move the caches with IUXRAY_DATA_DIR=DIR", str(folder))

    free = shutil.disk_usage(folder).free
    if free < n + SPACE_MARGIN:
        raise no_space(free)
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    try:
        if hasattr(os, "posix_fallocate") and n:
            fd = os.open(path, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, int(arr.offset) + n)
            finally:
                os.close(fd)
    except OSError as e:
        del arr
        path.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise no_space(shutil.disk_usage(folder).free) from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    return arr


def _remove_stale_builds(folder: Path) -> None:
    """Remove temporary arrays of interrupted builds: current names (:func:`io.temp_path`) and the
    older ``.pixels-<key>.<pid>.npy.tmp`` form, when their process no longer runs."""

    remove_stale_temps(folder)
    for p in folder.glob(".pixels-*.*.npy.tmp") if folder.is_dir() else ():
        pid = p.name.split(".")[-3]
        if pid.isdigit() and not _pid_alive(int(pid)):
            p.unlink(missing_ok=True)


def _imap(jobs, workers, progress):


    workers = workers or os.cpu_count() or 1
    bar = dict(total=len(jobs), desc="decode + preprocess", disable=not progress)
    if workers == 1 or len(jobs) < 32:
        yield from tqdm(map(_load_one, jobs), **bar)
        return
    with worker_pool(workers) as p:
        yield from tqdm(p.imap(_load_one, jobs, chunksize=32), **bar)


def _output_size(geo) -> tuple[int, int]:
    for t in geo.transforms:
        if type(t).__name__ == "CenterCrop":
            return tuple(t.size)
    raise ValueError("cannot infer the output size from the transform")


def _bad_message(path: str, err: str) -> str:
    phantom = (data_dir() / "phantoms").resolve() in Path(path).resolve().parents
    fix = ("Delete it: it is rendered again on the next run" if phantom else
           "Re-fetch the images with `python -m helpers.data.download images`")
    return (f"{path}: {err}; expected a readable PNG image. {fix}, or leave it out with "
            f"`-p on_error skip` (on_error='skip'; skipped images are counted in the page stamp)")


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
