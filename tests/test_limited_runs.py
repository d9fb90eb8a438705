"""A limited run (``limit``) takes its pixels and embeddings from the whole split's caches.

When the caches of the whole image list exist, a run on a subset of it decodes and embeds
nothing: its pixel cache is the larger cache's rows (:meth:`images.PixelCache.subset`, with the
key a fresh build of those files would have) and its embeddings are the larger cache's rows
(:func:`embeddings.image_embeddings`). Everything here compares with computing the subset
afresh: the same pixels, flags, key and embeddings.
"""

import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers.book import study as S
from helpers.data import images as I
from helpers.protocols import embeddings as E
from helpers.protocols import models as M

from conftest import REPORT_XML, write_tgz


@pytest.fixture(scope="module")
def tiny():
    return M.load_model("tiny")


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """A private data folder for the module (phantoms, lung templates, caches made once)."""
    d = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("IUXRAY_DATA_DIR", str(d))
        yield d


@pytest.fixture
def pngs(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(8):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (200 + 10 * i, 180), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def _larger(paths):
    return pd.DataFrame({"image_id": [f"id{i}" for i in range(len(paths))], "path": paths})


def test_subset_equals_a_fresh_build_and_embeds_nothing(tiny, pngs, tmp_path):
    model, preprocess, _, info = tiny
    geometry = repr(I.geometric_transform(preprocess))
    full_dir, fresh_dir = tmp_path / "full", tmp_path / "fresh"
    larger = _larger(pngs)
    full = I.build_pixel_cache(larger.path, larger.image_id, preprocess, workers=1, cache_dir=full_dir,
                               progress=False)
    E.image_embeddings(model, info.weights_sha256, full, info.mean, info.std, cache_dir=full_dir,
                       progress=False)
    rows = [6, 1, 3]  # not in the larger list's order
    paths, ids = [pngs[r] for r in rows], [f"id{r}" for r in rows]
    sub = I.pixels_from_larger(paths, ids, larger, geometry, cache_dir=full_dir)
    fresh = I.build_pixel_cache(paths, ids, preprocess, workers=1, cache_dir=fresh_dir, progress=False)
    assert sub is not None and sub.parent[0] == full.key
    assert sub.key == fresh.key and sub.ids == fresh.ids
    assert np.array_equal(sub.pixels, np.asarray(fresh.pixels)) and np.array_equal(sub.ok, fresh.ok)

    E.STATS.clear()
    got = E.image_embeddings(model, info.weights_sha256, sub, info.mean, info.std, cache_dir=full_dir,
                             progress=False)
    assert E.STATS["image"] == 0  # served from the larger list's embeddings
    again = E.image_embeddings(model, info.weights_sha256, fresh, info.mean, info.std,
                               cache_dir=fresh_dir, progress=False)
    assert E.STATS["image"] > 0
    np.testing.assert_allclose(got, again, rtol=1e-6, atol=1e-6)


def test_no_larger_cache_or_a_changed_file_is_a_miss(tiny, pngs, tmp_path):
    _, preprocess, _, _ = tiny
    geometry = repr(I.geometric_transform(preprocess))
    larger = _larger(pngs)
    assert I.pixels_from_larger(pngs[:2], ["id0", "id1"], larger, geometry, cache_dir=tmp_path) is None
    I.build_pixel_cache(larger.path, larger.image_id, preprocess, workers=1, cache_dir=tmp_path,
                        progress=False)
    assert I.pixels_from_larger(pngs[:2], ["id0", "id1"], larger, geometry, cache_dir=tmp_path) is not None
    # an image the larger list lacks, or names at another path
    assert I.pixels_from_larger(pngs[:1], ["other"], larger, geometry, cache_dir=tmp_path) is None
    assert I.pixels_from_larger(pngs[1:2], ["id0"], larger, geometry, cache_dir=tmp_path) is None
    # a file of the larger list changed since its cache was built: its key no longer matches
    st = os.stat(pngs[5])
    os.utime(pngs[5], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert I.pixels_from_larger(pngs[:2], ["id0", "id1"], larger, geometry, cache_dir=tmp_path) is None


def test_an_unreadable_image_of_the_subset_stops_and_one_outside_it_does_not(tiny, pngs, tmp_path):
    _, preprocess, _, _ = tiny
    geometry = repr(I.geometric_transform(preprocess))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    larger = _larger([*pngs[:3], str(bad)])
    I.build_pixel_cache(larger.path, larger.image_id, preprocess, on_error="skip", workers=1,
                        cache_dir=tmp_path, progress=False)
    ok = I.pixels_from_larger(pngs[:2], ["id0", "id1"], larger, geometry, cache_dir=tmp_path)
    assert ok is not None and ok.ok.all() and not ok.failures
    with pytest.raises(I.ImageError, match="bad.png.*cannot decode"):
        I.pixels_from_larger([pngs[0], str(bad)], ["id0", "id3"], larger, geometry, cache_dir=tmp_path)
    skipped = I.pixels_from_larger([pngs[0], str(bad)], ["id0", "id3"], larger, geometry, "skip",
                                   cache_dir=tmp_path)
    assert skipped.ok.tolist() == [True, False] and list(skipped.failures) == [str(bad)]


def test_rendered_phantoms_names_what_is_rendered_and_nothing_more(demo_data):
    labels = list(S.CHEXPERT_LABELS)
    split = pd.DataFrame({"image_id": [f"P{i}" for i in range(4)], "split": "test",
                          **{c: [int(c == "No Finding")] * 4 for c in labels}})
    assert I.rendered_phantoms(split) is None  # nothing rendered yet
    made = I.phantom_images(split.iloc[:3], workers=1, progress=False)
    pd.testing.assert_frame_equal(I.rendered_phantoms(split.iloc[:3]), made)
    assert I.rendered_phantoms(split) is None  # P3 has no phantom: nothing is rendered for it
    assert not (demo_data / "phantoms" / "target-224" / "images" / "P3.png").exists()


def _archive(path, n=24):
    members = {f"ecgen-radiology/{k}.xml": REPORT_XML.format(
        n=k, findings="Cardiomegaly." if k % 3 == 0 else "Heart size normal. No effusion.",
        impression="No acute disease.", mesh="normal").encode() for k in range(1, n + 1)}
    return write_tgz(path, members)


def test_a_limited_study_reuses_the_full_caches_with_the_same_numbers(demo_data, tmp_path):
    """End to end through :func:`study.load_study` on a small report archive."""
    archive = _archive(tmp_path / "reports.tgz")
    kw = dict(views="all", reports_path=str(archive), device="cpu")
    full = S.load_study("demo", **kw)
    full_emb = full.image_embeddings()
    E.STATS.clear()
    quick = S.load_study("demo", limit=2, **kw)
    assert quick.pixels.parent is not None and quick.quick
    emb = quick.image_embeddings()
    assert E.STATS["image"] == 0
    rows = [full.table.image_id.tolist().index(i) for i in quick.table.image_id]
    assert np.array_equal(emb, full_emb[rows])
    # what computing the quick run afresh gives
    fresh = I.build_pixel_cache(quick.table.path, quick.table.image_id, quick.preprocess, workers=1,
                                cache_dir=tmp_path / "fresh", progress=False)
    assert fresh.key == quick.pixels.key
    assert np.array_equal(np.asarray(fresh.pixels), quick.pixels.pixels)
    again = E.compute_image_embeddings(quick.model, fresh, quick.info.mean, quick.info.std,
                                       progress=False)
    np.testing.assert_allclose(emb, again, rtol=1e-6, atol=1e-6)
