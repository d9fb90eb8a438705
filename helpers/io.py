"""Atomic file output and content hashes.

Every cache and output of the book is written to a temporary file in the destination
folder and renamed into place, so an interrupted run never leaves a half-written file
that a later run would take as complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON atomically (stable bytes for equal content)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(x: Any) -> Any:
    import numpy as np

    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def csv_bytes(df: pd.DataFrame) -> bytes:
    """The canonical CSV encoding of a frame (no index, ``\\n`` line ends)."""
    return df.to_csv(index=False, lineterminator="\n").encode("utf-8")


def atomic_write_csv(path: str | os.PathLike, df: pd.DataFrame) -> str:
    """Write ``df`` as CSV atomically; return the SHA-256 (first 12 hex digits) of its bytes."""
    data = csv_bytes(df)
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def sha256_bytes(data: bytes, n: int = 12) -> str:
    """First ``n`` hex digits of the SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()[:n]


def sha256_file(path: str | os.PathLike, n: int = 64, chunk: int = 1 << 20) -> str:
    """First ``n`` hex digits of the SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:n]


def frame_hash(df: pd.DataFrame) -> str:
    """Content hash (12 hex digits) of a frame's canonical CSV encoding."""
    return sha256_bytes(csv_bytes(df))
