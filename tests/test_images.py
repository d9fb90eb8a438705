"""Image modes become the right grey levels (16-bit scaled by its range, never clipped to
white); the pixel cache rejects an array changed behind a valid header and removes the
temporary file of an interrupted build."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms as T

from helpers.data import images as I
from helpers import storage as hio

S = 16
PREPROCESS = T.Compose([T.Resize(S), T.CenterCrop(S)])  # stands in for open_clip's transform


def _grey(im: Image.Image) -> np.ndarray:
    out = I.to_grey(im)
    assert out.mode == "L"
    return np.asarray(out)


def test_16_bit_is_scaled_by_its_range_not_clipped():
    ramp = np.linspace(0, 4095, S * S).reshape(S, S).astype(np.uint16)  # a 12-bit radiograph in a 16-bit PNG
    im = Image.fromarray(ramp)
    assert im.mode == "I;16"
    g = _grey(im)
    assert np.abs(g.astype(int) - np.round(ramp / 4095 * 255)).max() <= 1
    assert g.min() == 0 and g.max() == 255 and (np.diff(g.ravel().astype(int)) >= 0).all()
    offset = Image.fromarray((ramp + 1000).astype(np.uint16))  # range 1000..5095 maps to 0..255 as well
    assert np.abs(_grey(offset).astype(int) - g).max() <= 1


def test_16_bit_png_roundtrip_through_the_cache(tmp_path):
    ramp = np.linspace(300, 60000, S * S).reshape(S, S).astype(np.uint16)
    p = tmp_path / "x16.png"
    Image.fromarray(ramp).save(p)
    with Image.open(p) as im:
        assert im.mode in I.HIGH_DEPTH_MODES
    pc = I.build_pixel_cache([p], ["x"], PREPROCESS, workers=1, cache_dir=tmp_path / "c", progress=False)
    px = np.asarray(pc.pixels[0]).astype(int)
    assert pc.ok.all() and px.max() == 255 and px.min() <= 2 and len(np.unique(px)) > 100  # not all 255


def test_constant_16_bit_image_is_black():
    assert (_grey(Image.fromarray(np.full((S, S), 900, np.uint16))) == 0).all()


def test_L_is_unchanged():
    a = np.random.default_rng(0).integers(0, 256, (S, S), dtype=np.uint8)
    assert np.array_equal(_grey(Image.fromarray(a)), a)


def test_RGB_grey_is_exact_and_colour_uses_luma():
    a = np.random.default_rng(1).integers(0, 256, (S, S), dtype=np.uint8)
    rgb = Image.fromarray(np.stack([a, a, a], -1))
    assert rgb.mode == "RGB" and np.array_equal(_grey(rgb), a)
    red = Image.new("RGB", (2, 2), (255, 0, 0))
    assert (_grey(red) == 76).all()  # ITU-R 601: 0.299 * 255


def test_RGBA_is_composited_over_black():
    a = np.full((S, S, 4), 200, np.uint8)
    a[..., 3] = 255
    a[:, : S // 2, 3] = 0  # left half transparent
    g = _grey(Image.fromarray(a, "RGBA"))
    assert (g[:, S // 2:] == 200).all() and (g[:, : S // 2] == 0).all()


def test_palette_is_read_through_its_palette():
    im = Image.new("P", (S, S))
    im.putpalette([0, 0, 0, 255, 255, 255, 90, 90, 90] + [0] * (256 * 3 - 9))
    idx = np.zeros((S, S), np.uint8)
    idx[:4], idx[4:8] = 1, 2
    im.putdata(idx.ravel().tolist())
    g = _grey(im)
    assert (g[:4] == 255).all() and (g[4:8] == 90).all() and (g[8:] == 0).all()


def test_non_finite_float_image_is_refused_by_name(tmp_path):
    a = np.ones((S, S), np.float32)
    a[0, 0] = np.nan
    p = tmp_path / "nan.tif"
    Image.fromarray(a, "F").save(p)
    with pytest.raises(I.ImageError, match=r"nan\.tif.*NaN"):
        I.build_pixel_cache([p], ["n"], PREPROCESS, workers=1, cache_dir=tmp_path / "c", progress=False)


def _pngs(tmp_path, n=3):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(rng.integers(1, 255, (20, 24), dtype=np.uint8)).save(p)
        out.append(p)
    return out


def test_cache_zeroed_behind_a_valid_header_is_rebuilt(tmp_path):
    paths, ids = _pngs(tmp_path), ["a", "b", "c"]
    pc = I.build_pixel_cache(paths, ids, PREPROCESS, workers=1, cache_dir=tmp_path / "c", progress=False)
    ref = np.array(pc.pixels)
    raw = bytearray(pc.path.read_bytes())
    raw[len(raw) - ref.nbytes:] = bytes(ref.nbytes)
    pc.path.write_bytes(bytes(raw))
    assert np.load(pc.path).shape == ref.shape and not np.load(pc.path).any()  # a valid, zeroed array
    with pytest.warns(hio.CacheMissWarning, match="pixels-"):
        again = I.build_pixel_cache(paths, ids, PREPROCESS, workers=1, cache_dir=tmp_path / "c", progress=False)
    assert np.array_equal(np.array(again.pixels), ref)


def test_temporary_array_of_an_interrupted_build_is_removed(tmp_path):
    cache = tmp_path / "c"
    cache.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [cache / f".pixels-0123.npy@{hio._host()}@{dead.pid}@ab12cd34.tmp",  # current naming
             cache / f".pixels-0123.{dead.pid}.npy.tmp"]                            # before this change
    live = cache / f".pixels-4567.npy@{hio._host()}@{os.getpid()}@ab12cd34.tmp"
    for f in (*stale, live):
        f.write_bytes(b"\0" * 1000)
    I.build_pixel_cache(_pngs(tmp_path, 1), ["a"], PREPROCESS, workers=1, cache_dir=cache, progress=False)
    assert not any(f.exists() for f in stale) and live.exists()
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp") and p != live]


def test_missing_image_folder_hint_names_what_exists(tmp_path):
    import pandas as pd

    with pytest.raises(FileNotFoundError) as e:
        I.openi_images(pd.DataFrame({"image_id": ["x"]}), tmp_path / "nope")
    msg = str(e.value)
    assert "python -m helpers.data.download images" in msg and "IUXRAY_DATA_DIR" in msg and "image_dir=" not in msg
