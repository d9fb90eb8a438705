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

from .config import data_dir, get_profile
from .labels import CHEXPERT_LABELS


@dataclass
class Study:
    """The inputs of one profile. ``table`` rows align with ``pixels`` rows."""

    profile: str
    table: pd.DataFrame
    pixels: Any
    model: torch.nn.Module
    preprocess: Any
    tokenizer: Any
    info: Any
    split_hash: str
    image_source: str
    device: torch.device
    labels: list[str] = field(default_factory=lambda: list(CHEXPERT_LABELS))

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

    def image_embeddings(self, batch_size: int = 64) -> np.ndarray:
        """Cached image embeddings of every row (unnormalised): (N, embed_dim)."""
        from .embeddings import image_embeddings

        return image_embeddings(self.model, self.info.weights_sha256, self.pixels, self.info.mean,
                                self.info.std, batch_size=batch_size, device=self.device)

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """Cached text embeddings (unnormalised): (len(texts), embed_dim)."""
        from .embeddings import text_embeddings

        return text_embeddings(self.model, self.tokenizer, self.info.weights_sha256, texts, device=self.device)

    @property
    def logit_scale(self) -> float:
        """The model's temperature ``exp(logit_scale)``."""
        return float(self.model.logit_scale.exp())

    def stamp(self, **extra: Any) -> dict:
        """The provenance stamp for this study's pages and metrics JSON."""
        from .stamp import make_stamp

        n_bad = int((~self.pixels.ok).sum())
        return make_stamp(self.profile, self.info.id, self.split_hash, images=self.image_source,
                          n_images=len(self.table), unreadable_images_skipped=n_bad, **extra)


def subsample(split: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    """At most ``limit`` images per split (first by image id): for quick smoke runs."""
    if not limit:
        return split
    return split.groupby("split", observed=True, group_keys=False).head(limit).reset_index(drop=True)


def load_study(profile: str = "demo", model: str | None = None, image_dir: str | None = None,
               style: str = "target", uncertain_policy: str = "positive", split_seed: int = 0,
               limit: int | None = None, on_error: str = "stop", device: str = "auto") -> Study:
    """Everything a chapter needs for ``profile``.

    Parameters
    ----------
    model : model spec (default: the profile's, ``tiny`` or ``biomedclip``).
    image_dir : ``full`` profile: folder of Open-I PNGs (default ``data_dir()/openi/images``).
    style : ``demo`` profile: phantom style of the IU-Xray images (default ``target``).
    limit : at most this many images per split (smoke runs); ``None`` for all.
    on_error : unreadable image policy, ``stop`` or ``skip`` (skipped ones are counted).
    """
    from . import images as I
    from .data import load_study_data
    from .models import load_model

    prof = get_profile(profile)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    data = load_study_data(uncertain_policy, split_seed)
    split = subsample(data.split, limit)
    if prof.images == "phantoms":
        table = I.phantom_images(split, style=style)
        source = f"phantoms ({style} style)"
    else:
        folder = Path(image_dir) if image_dir else data_dir() / "openi" / "images"
        table = I.openi_images(split, folder)
        source = f"Open-I PNGs in {folder}"
    m, preprocess, tokenizer, info = load_model(model or prof.model, device=dev)
    pixels = I.build_pixel_cache(table.path, table.image_id, preprocess, on_error=on_error)
    return Study(profile, table.reset_index(drop=True), pixels, m, preprocess, tokenizer, info,
                 data.split_hash, source, dev)
