"""One call that gives a chapter everything a profile provides.

``load_study(profile)`` ties the data flow together: label table and split (chapter 1) ->
images (phantoms or Open-I PNGs) -> pixel cache -> model -> cached embeddings, and builds the
page stamp. Chapters 2-6 start with it, so only ``profile`` and its parameters change between
the ``demo`` and ``full`` runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from helpers.config import data_dir, get_profile
from helpers.data.labels import CHEXPERT_LABELS
from helpers.book.artefacts import Artefacts, QUICK_ENV, quick_reason
from helpers.book.stamp import make_stamp
from helpers.data import annotations as A, images
from helpers.data.images import geometric_transform
from helpers.data.iuxray import load_study_data
from helpers.phantoms import rendering
from helpers.protocols import models
from helpers.protocols.embeddings import image_embeddings, text_embeddings
from helpers.protocols.models import ModelInfo, load_model, resolve_spec
from helpers.saliency.explain import load_masks
from helpers.storage import atomic_write_json, read_json_cache, sha256_bytes, sha256_file


MODEL_INFO_VERSION = "1"
"""Layout of the cached model description (:func:`model_loader`); part of its key."""
_MODEL_PACKAGES = ("torch", "open_clip_torch", "timm", "transformers", "tokenizers", "safetensors",
                   "torchvision")
"""Packages whose versions could change what a model folder loads as; part of the key."""


class ModelInfoMismatch(RuntimeError):
    """The model loaded on first use differs from the description cached for its folder."""


class ModelLoader:
    """A study's model, preprocessing and tokenizer, loaded on first use.

    ``info`` (:class:`models.ModelInfo`), ``geometry`` (the pixel cache's view of the
    preprocessing) and ``logit_scale`` are known without loading: from the model description
    cached for a ``local-dir:`` folder (:func:`model_loader`). Loading imports open_clip, and
    with it torchvision, timm and transformers: 3.7 s of a chapter's start on two busy cores,
    which a chapter that only reads cached embeddings never needs."""

    def __init__(self, spec: str, device: torch.device, info: Any, geometry: str, logit_scale: float,
                 loaded: tuple | None = None, cache_file: Path | None = None):
        self.spec, self.device, self.info, self.geometry = spec, device, info, geometry
        self.logit_scale, self.cache_file, self._loaded = logit_scale, cache_file, loaded

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def get(self) -> tuple:
        """``(model, preprocess, tokenizer)``, loading them (once) if needed; raises
        :class:`ModelInfoMismatch` naming the cached description if the model differs from it."""
        if self._loaded is None:
            m, pre, tok, info = _load_model(self.spec, self.device)
            if info != self.info:
                if self.cache_file is not None:
                    self.cache_file.unlink(missing_ok=True)
                raise ModelInfoMismatch(
                    f"model {self.spec!r} loads with weights {info.weights_sha256[:12]}, but the description "
                    f"cached in {self.cache_file} says {self.info.weights_sha256[:12]}; the cached file was "
                    f"removed: run the chapter again")
            self._loaded = (m, pre, tok)
        return self._loaded

    def deferred(self, index: int) -> "_Deferred":
        """A stand-in for item ``index`` of :meth:`get` that loads only when something uses it."""
        return _Deferred(self, index)


def _load_model(spec: str, device: torch.device) -> tuple:
    """:func:`models.load_model`, leaving torch's global random state as it was: building the
    model draws initial weights before loading the checkpoint, and a model loaded on first use
    (in the middle of a chapter) must not shift the random numbers the chapter draws next, nor
    may a first run (loaded at once) and a later one (loaded on use) differ in them."""

    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        return load_model(spec, device=device)


class _Deferred:
    """Forwards attribute access and calls to the model (0), preprocess (1) or tokenizer (2) of a
    :class:`ModelLoader`, loading it then: a cache hit that never touches it loads nothing."""

    def __init__(self, loader: ModelLoader, index: int):
        self._loader, self._index = loader, index

    def _target(self):
        return self._loader.get()[self._index]

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("_loader", "_index"):
            raise AttributeError(name)
        return getattr(self._target(), name)

    def __call__(self, *args, **kwargs):
        return self._target()(*args, **kwargs)


@dataclass
class Study:
    """The inputs of one profile. ``table`` rows align with ``pixels`` rows. The model, its
    preprocessing and tokenizer are loaded on first use (:class:`ModelLoader`)."""

    profile: str
    table: pd.DataFrame
    pixels: Any
    info: Any
    split_hash: str
    image_source: str
    device: torch.device
    loader: ModelLoader
    labels: list[str] = field(default_factory=lambda: list(CHEXPERT_LABELS))
    style: str | None = None
    """``demo``: the phantom style the images were rendered in (``None`` for real images)."""
    noise: pd.DataFrame | None = None
    """``demo``: the label-noise rates the phantoms were rendered with (:func:`rendering.noise_rates`)."""
    quick: str = ""
    """Why this is a quick run (:func:`artefacts.quick_reason`), ``''`` for a full run: a quick run's
    files go to the pair's ``quick/`` folder and its stamp says so (``quick_run``)."""
    all_image_ids: frozenset[str] = frozenset()
    """Every image id of the label table (all views and splits), to tell an annotation of another
    image of the study from one that names no IU-Xray image at all."""

    @property
    def model(self) -> torch.nn.Module:
        """The model (``open_clip.CustomTextCLIP``, eval mode), loaded on first use."""
        return self.loader.get()[0]

    @property
    def preprocess(self) -> Any:
        """open_clip's validation transform, loaded with the model."""
        return self.loader.get()[1]

    @property
    def tokenizer(self) -> Any:
        """open_clip's tokenizer, loaded with the model."""
        return self.loader.get()[2]

    def rows(self, split: str) -> np.ndarray:
        """Row indices of one split (``train``, ``val``, ``test``) among usable images."""
        return np.flatnonzero((self.table.split == split).to_numpy() & self.pixels.ok)

    def y(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Binary targets (n, 14) of the given rows (all rows by default)."""
        y = self.table[self.labels].to_numpy(dtype=int)
        return y if rows is None else y[rows]

    def groups(self, rows: np.ndarray) -> np.ndarray:
        """Report id of each row (the bootstrap's resampling unit)."""
        return self.table.report_id.to_numpy()[rows]

    def image_embeddings(self, batch_size: int | None = None, precision: str = "auto") -> np.ndarray:
        """Cached image embeddings of every row (unnormalised): (N, embed_dim). On a GPU the
        default batch is 512 with bf16 autocast; ``precision="bf16"`` (bf16 weights) is the
        fastest path (:func:`embeddings.compute_image_embeddings`)."""

        return image_embeddings(self.loader.deferred(0), self.info.weights_sha256, self.pixels, self.info.mean,
                                self.info.std, batch_size=batch_size, device=self.device,
                                precision=precision)

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """Cached text embeddings (unnormalised): (len(texts), embed_dim)."""

        return text_embeddings(self.loader.deferred(0), self.loader.deferred(2), self.info.weights_sha256,
                               texts, device=self.device)

    @property
    def artefacts(self):
        """The files this (profile, model) pair writes and reads (:class:`artefacts.Artefacts`)."""

        return Artefacts.of(self.profile, self.info.spec, quick=bool(self.quick))

    @property
    def logit_scale(self) -> float:
        """The model's temperature ``exp(logit_scale)`` (cached with the model's description)."""
        return float(self.model.logit_scale.detach().exp()) if self.loader.loaded else self.loader.logit_scale

    def stamp(self, **extra: Any) -> dict:
        """The provenance stamp for this study's pages and metrics JSON."""

        n_bad = int((~self.pixels.ok).sum())
        quick = {"quick_run": self.quick} if self.quick else {}
        return make_stamp(self.profile, self.info.id, self.split_hash, images=self.image_source,
                          n_images=len(self.table), unreadable_images_skipped=n_bad, **quick, **extra)


def subsample(split: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    """At most ``limit`` images per split (first by image id): for quick smoke runs."""
    if not limit:
        return split
    return split.groupby("split", observed=True, group_keys=False).head(limit).reset_index(drop=True)


def load_study(profile: str = "demo", model: str | None = None, image_dir: str | None = None,
               style: str = "target", uncertain_policy: str = "positive", split_seed: int = 0,
               limit: int | None = None, on_error: str = "stop", device: str = "auto",
               reports_path: str | None = None, split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
               views: Sequence[str] | str = "frontal") -> Study:
    """Everything a chapter needs for ``profile``.

    An empty ``model``, ``image_dir`` or ``reports_path`` and a ``limit`` of 0 mean the default,
    as ``None`` does, so a chapter passes its parameter values through unchanged.

    Parameters
    ----------
    model : model spec (default: the profile's, ``tiny`` or ``biomedclip``).
    image_dir : ``full`` profile: folder of Open-I PNGs (default ``data_dir()/openi/images``).
    style : ``demo`` profile: phantom style of the IU-Xray images (default ``target``).
    limit : at most this many images per split (smoke runs); ``None`` or 0 for all. A limited run
        is quick (:func:`artefacts.quick_reason`): its files never replace a full run's. It takes
        its pixels and embeddings from the full split's caches when those exist
        (:func:`pixel_cache`), so it decodes and embeds nothing a full run already did.
    on_error : unreadable image policy, ``stop`` or ``skip`` (skipped ones are counted).
    uncertain_policy, split_seed, split_fractions, views, reports_path : the label table and
        split of chapter 1
        (:func:`data.load_study_data`); every chapter takes them, so they reach every chapter.
    """
    import os


    prof = get_profile(profile)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    data = load_study_data(uncertain_policy, split_seed, split_fractions, views,
                           reports_path=reports_path or None)
    split = subsample(data.split, limit)
    noise = larger = None
    if prof.images == "phantoms":
        noise = rendering.noise_rates(data.table.reports)
        table = images.phantom_images(split, style=style, noise=noise)
        source = f"phantoms ({style} style)"
        if limit:
            larger = images.rendered_phantoms(data.split, style=style)
    else:
        folder = Path(image_dir) if image_dir else data_dir() / "openi" / "images"
        table = images.openi_images(split, folder)
        source = f"Open-I PNGs in {folder}"
        if limit:
            larger = images.openi_images(data.split, folder)
    loader = model_loader(model or prof.model, dev)
    pixels = pixel_cache(table, loader, on_error, larger)
    return Study(profile, table.reset_index(drop=True), pixels, loader.info, data.split_hash, source,
                 dev, loader, style=style if noise is not None else None,
                 noise=noise, quick=quick_reason(limit) or os.environ.get(QUICK_ENV, ""),
                 all_image_ids=frozenset(data.table.images.image_id.astype(str)))


def pixel_cache(table: pd.DataFrame, loader: ModelLoader, on_error: str = "stop",
                larger: pd.DataFrame | None = None) -> images.PixelCache:
    """The pixel cache of ``table``'s images. With ``larger`` (the whole split's images, for a
    limited run) and a cache already built for it, the rows are taken from that cache, and
    the embeddings cached for it serve them too (:meth:`images.PixelCache.subset`): a quick
    run decodes and embeds nothing a full run already did, with the same numbers."""
    if larger is not None:
        hit = images.pixels_from_larger(table.path, table.image_id, larger, loader.geometry, on_error)
        if hit is not None:
            return hit
    return images.build_pixel_cache(table.path, table.image_id, loader.deferred(1), on_error=on_error,
                                    geometry=loader.geometry)


def _model_inputs(spec: str, folder: Path, device: torch.device) -> dict:
    """What a ``local-dir:`` model's description depends on: every file of the folder (name,
    size, modification time), the device type, the code that loads it (:mod:`helpers.protocols.models`
    and :func:`images.geometric_transform`) and the versions of :data:`_MODEL_PACKAGES`."""
    import inspect
    from importlib import metadata


    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            files[p.relative_to(folder).as_posix()] = [st.st_size, st.st_mtime_ns]
    return {"version": MODEL_INFO_VERSION, "spec": spec, "folder": str(folder.resolve()),
            "files": files, "device": device.type,
            "code": {"models": sha256_file(models.__file__, 16),
                     "geometric_transform": sha256_bytes(inspect.getsource(images.geometric_transform).encode())},
            "packages": {p: metadata.version(p) for p in _MODEL_PACKAGES}}


def _info_record(info: Any, geometry: str, logit_scale: float) -> dict:
    from dataclasses import asdict

    return {"info": asdict(info), "geometry": geometry, "logit_scale": logit_scale}


def _info_from_record(rec: dict) -> tuple[Any, str, float]:

    d = rec["info"]
    info = ModelInfo(**{**d, "mean": tuple(d["mean"]), "std": tuple(d["std"])})
    return info, str(rec["geometry"]), float(rec["logit_scale"])


def model_loader(spec: str, device: torch.device) -> ModelLoader:
    """A :class:`ModelLoader` for ``spec`` on ``device``.

    For a model in a local folder (``tiny``, ``tiny-random``, ``local-dir:``) its description
    (``ModelInfo``, the preprocessing's geometry, the temperature) is cached in
    ``data_dir()/cache/model_info-<key>.json``, keyed by :func:`_model_inputs`; with it the model
    itself is loaded only when first used. Otherwise (a hub model, or the first time) the model is
    loaded now and its description written. ``tiny`` is verified against its recorded hashes
    either way (:func:`models.resolve_spec`)."""
    import json


    _, folder = resolve_spec(spec)
    inputs = _model_inputs(spec, folder, device) if folder is not None else None
    path = None
    if inputs is not None:
        key = sha256_bytes(json.dumps(inputs, sort_keys=True).encode(), 16)
        path = data_dir() / "cache" / f"model_info-{key}.json"
        rec = read_json_cache(path, lambda r: None if r.get("inputs") == inputs else "other inputs")
        if rec is not None:
            return ModelLoader(spec, device, *_info_from_record(rec), cache_file=path)

    m, pre, tok, info = _load_model(spec, device)
    geometry = repr(geometric_transform(pre))
    scale = float(m.logit_scale.detach().exp())
    rec = _info_record(info, geometry, scale)
    if path is not None and _info_from_record(json.loads(json.dumps(rec))) == (info, geometry, scale):
        atomic_write_json(path, {"inputs": inputs, **rec})
    return ModelLoader(spec, device, info, geometry, scale, loaded=(m, pre, tok), cache_file=path)


@dataclass
class LocPairs:
    """(image, label) pairs with a ground-truth region: ``table`` (row, image_id, report_id, label,
    split) and ``masks`` bool (n, S, S) at the model's input geometry. ``reader_masks``: where the
    annotation file names readers, each reader's own region (n, S, S) (empty where that reader
    drew nothing); ``masks`` is then the union of the readers' regions."""

    table: pd.DataFrame
    masks: np.ndarray
    reader_masks: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.table)

    def subset(self, idx: Sequence[int] | np.ndarray) -> "LocPairs":
        """The pairs at positions ``idx`` (in that order)."""
        idx = np.asarray(idx, dtype=int)
        rm = None if self.reader_masks is None else {k: v[idx] for k, v in self.reader_masks.items()}
        return LocPairs(self.table.iloc[idx].reset_index(drop=True), self.masks[idx], rm)


def localization_pairs(study: Study, split: str | Sequence[str], max_pairs: int | None = None,
                       annotations: str | None = None, seed: int = 0) -> LocPairs:
    """Every (image of ``split``, positive label) pair whose region is known, at most ``max_pairs``.

    ``split``: one split name or several (e.g. every split, for zero-shot on every annotated image).
    ``demo``: regions are the phantoms' exact masks (all labels but No Finding). ``full``: regions
    come from an annotation CSV (:mod:`helpers.data.annotations`; default: the shipped example), every
    annotated (image, label) in the split whatever the label table says. Annotation rows whose
    image id names no IU-Xray image at all (a typo, a ``.png`` suffix, another data set) are
    reported in an :class:`annotations.AnnotationWarning` naming the file, lines and ids (it
    reaches the page and the runner's console), never silently dropped. Pairs whose region is
    empty at the model's input size are dropped. ``max_pairs`` draws a seeded random subset
    (kept in table order).
    """

    S = study.info.image_size
    splits = [split] if isinstance(split, str) else list(split)
    rows = np.sort(np.concatenate([study.rows(s) for s in splits])) if splits else np.zeros(0, int)
    t = study.table
    ann = None
    if "mask_path" in t:
        cand = [(r, c) for r in rows for c in study.labels if c != "No Finding" and t.at[r, c] == 1]
    else:
        ann = A.load_annotations(annotations or A.EXAMPLE)
        A.report_unknown_images(ann, study.all_image_ids or set(t.image_id.astype(str)))
        have = set(zip(ann.image_id, ann.label))
        cand = [(r, c) for r in rows for c in study.labels if (t.at[r, "image_id"], c) in have]
    if max_pairs and len(cand) > max_pairs:
        pick = np.sort(np.random.default_rng(seed).choice(len(cand), max_pairs, replace=False))
        cand = [cand[i] for i in pick]
    frame = pd.DataFrame({"row": [r for r, _ in cand], "image_id": [t.at[r, "image_id"] for r, _ in cand],
                          "report_id": [t.at[r, "report_id"] for r, _ in cand], "label": [c for _, c in cand],
                          "split": [t.at[r, "split"] for r, _ in cand]})
    readers = None
    if ann is None:
        masks = load_masks([t.at[r, "mask_path"] for r, _ in cand], frame.label.tolist(), S)
    else:
        masks = _annotation_masks(ann, cand, t, S)
        if A.READER in ann and ann[A.READER].nunique() > 1:
            readers = {str(who): _annotation_masks(ann, cand, t, S, str(who))
                       for who in sorted(ann[A.READER].unique())}
    keep = masks.reshape(len(masks), -1).any(1) if len(masks) else np.zeros(0, bool)
    rm = None if readers is None else {k: v[keep] for k, v in readers.items()}
    return LocPairs(frame[keep].reset_index(drop=True), masks[keep], rm)


def _annotation_masks(ann: pd.DataFrame, cand: list, t: pd.DataFrame, S: int,
                      reader: str | None = None) -> np.ndarray:

    if not cand:
        return np.zeros((0, S, S), bool)
    return np.stack([A.region_mask(ann, t.at[r, "image_id"], lab, t.at[r, "path"], S, reader)
                     for r, lab in cand])
