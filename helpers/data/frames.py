"""Data frames to bytes and back, exactly, without pickle.

The study's cached label table and split (:func:`data.load_study_data`) are stored with this
codec: one ``.npz`` archive (read with ``allow_pickle=False``, so a cache file can never run
code) holding a JSON header and one member per column:

* numeric and boolean columns: the numpy array itself;
* text columns (pandas ``str`` or object columns of ``str``): a JSON list, missing values as
  ``null`` (an object column may only hold ``str``; anything else is refused when encoding);
* categorical columns: the integer codes, with the categories (``str``) and ``ordered`` in the
  header.

Frames must have a default ``RangeIndex`` and string column names. :func:`encode` decodes
what it wrote and compares it with the input (values, dtypes, order), so a frame the codec
cannot carry exactly raises :class:`FrameCodecError` instead of being cached altered.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pandas as pd

FORMAT = "frames-1"


class FrameCodecError(ValueError):
    """A frame that this codec cannot store exactly (the message names frame and column)."""


def _json_member(obj: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(obj, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)


def _encode_column(where: str, s: pd.Series) -> tuple[dict, np.ndarray]:
    dtype = s.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        cats = dtype.categories
        if not all(isinstance(c, str) for c in cats):
            raise FrameCodecError(f"{where}: categories must be strings")
        return ({"kind": "category", "categories": list(cats), "ordered": bool(dtype.ordered)},
                np.asarray(s.cat.codes.to_numpy()))
    if isinstance(dtype, np.dtype) and dtype.kind in "biuf":
        return {"kind": "array"}, s.to_numpy()
    if isinstance(dtype, pd.StringDtype) or dtype == object:
        values = s.tolist()
        if not all(v is None or isinstance(v, str) or (isinstance(v, float) and v != v)
                   for v in values):
            raise FrameCodecError(f"{where}: an object column may only hold strings")
        text = [v if isinstance(v, str) else None for v in values]
        return {"kind": "text", "dtype": "object" if dtype == object else str(dtype)}, _json_member(text)
    raise FrameCodecError(f"{where}: dtype {dtype} is not supported")


def _decode_column(spec: dict, arr: np.ndarray) -> pd.Series:
    kind = spec["kind"]
    if kind == "array":
        return pd.Series(arr)
    if kind == "category":
        return pd.Series(pd.Categorical.from_codes(arr, categories=spec["categories"],
                                                   ordered=spec["ordered"]))
    values = json.loads(arr.tobytes().decode("utf-8"))
    if spec["dtype"] == "object":  # explicit: pandas would infer its str dtype for strings
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return pd.Series(out, dtype=object)
    return pd.Series(pd.array(values, dtype=spec["dtype"]))


def encode(frames: dict[str, pd.DataFrame], meta: dict | None = None) -> bytes:
    """``frames`` (name -> frame) and a JSON-able ``meta`` as ``.npz`` bytes; raises
    :class:`FrameCodecError` for a frame it cannot carry exactly."""
    header: dict[str, Any] = {"format": FORMAT, "meta": meta or {}, "frames": {}}
    members: dict[str, np.ndarray] = {}
    for name, df in frames.items():
        if not isinstance(df.index, pd.RangeIndex) or df.index.start != 0 or df.index.step != 1:
            raise FrameCodecError(f"frame {name!r}: expected a default RangeIndex")
        cols = []
        for i, (col, s) in enumerate(df.items()):
            if not isinstance(col, str):
                raise FrameCodecError(f"frame {name!r}: column name {col!r} is not a string")
            spec, arr = _encode_column(f"frame {name!r}, column {col!r}", s)
            cols.append({"name": col, **spec})
            members[f"{name}/{i}"] = arr
        header["frames"][name] = {"columns": cols, "rows": len(df)}
    members["header"] = _json_member(header)
    buf = io.BytesIO()
    np.savez(buf, **members)
    data = buf.getvalue()
    back, _ = decode(data)
    for name, df in frames.items():
        try:
            pd.testing.assert_frame_equal(back[name], df, check_exact=True)
        except AssertionError as e:
            raise FrameCodecError(f"frame {name!r} does not survive the codec: {e}") from None
    return data


def decode(data: bytes) -> tuple[dict[str, pd.DataFrame], dict]:
    """``(frames, meta)`` from :func:`encode`'s bytes. Raises ``ValueError`` (or numpy's and
    JSON's own errors) on bytes that are not such an archive."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        header = json.loads(z["header"].tobytes().decode("utf-8"))
        if header.get("format") != FORMAT:
            raise ValueError(f"not a frames archive (format {header.get('format')!r}, expected {FORMAT!r})")
        frames = {}
        for name, f in header["frames"].items():
            cols = {c["name"]: _decode_column(c, z[f"{name}/{i}"]) for i, c in enumerate(f["columns"])}
            df = pd.DataFrame(cols, index=pd.RangeIndex(f["rows"]))
            frames[name] = df
    return frames, header["meta"]
