"""The study's caches give what a fresh build gives, and rebuild when an input changes.

* Study data (label table, views, frontal selection, split; :func:`data.load_study_data`): one
  file keyed by every input; cached and freshly built frames are equal, values and dtypes; another
  uncertainty policy, split seed, labeler or report archive (the same path with other bytes
  included) builds anew; a damaged file is a miss with a warning; warnings of the build come back
  on every cached load.
* The frame codec (:mod:`helpers.data.frames`) carries every column kind exactly and never unpickles.
* The model (:func:`study.model_loader`): its cached description equals what loading gives; a
  changed folder loads again; a model loaded on first use leaves torch's random state alone.
"""

import io
import os
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.data import iuxray as D
from helpers.data import frames as F
from helpers import storage as hio
from helpers.data import labels as L

from conftest import REPORT_XML, write_tgz


def _equal(a: D.StudyData, b: D.StudyData) -> None:
    for x, y in ((a.table.images, b.table.images), (a.table.reports, b.table.reports), (a.split, b.split)):
        pd.testing.assert_frame_equal(x, y, check_exact=True)
        assert list(x.dtypes.astype(str)) == list(y.dtypes.astype(str))
    assert a.split_hash == b.split_hash and a.table.hash == b.table.hash
    assert a.table.load_report == b.table.load_report
    assert a.table.uncertain_policy == b.table.uncertain_policy
    np.testing.assert_array_equal(a.split.split.to_numpy(), b.split.split.to_numpy())
    np.testing.assert_array_equal(a.split[list(L.CHEXPERT_LABELS)].to_numpy(),
                                  b.split[list(L.CHEXPERT_LABELS)].to_numpy())


def _no_build(monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("built although the cache should have served it")
    monkeypatch.setattr(D, "_build_study_data", forbidden)


def _counting_build(monkeypatch) -> list:
    calls, real = [], D._build_study_data
    monkeypatch.setattr(D, "_build_study_data", lambda *a: calls.append(a) or real(*a))
    return calls


@pytest.fixture(scope="module")
def built_cache(data_env, tmp_path_factory):
    """A cache folder holding the default study data, built once for the module (what such a
    build writes is checked against a fresh build by the next test)."""
    cache = tmp_path_factory.mktemp("built") / "cache"
    D.load_study_data(cache_dir=cache)
    return cache


def _cache_with_default(built_cache, tmp_path):
    """A private copy of ``built_cache``: the default inputs are already cached in it."""
    return shutil.copytree(built_cache, tmp_path / "cache")


def test_cached_study_data_equals_a_fresh_build(data_env, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = D.load_study_data(cache_dir=cache)  # built and written
    files = list(cache.glob("study_data-*.npz"))
    assert len(files) == 1 and (cache / (files[0].name + ".sha256")).is_file()
    fresh = D._build_study_data("positive", 0, (0.7, 0.1, 0.2), "frontal", None)
    _equal(first, fresh)
    with monkeypatch.context() as m:
        _no_build(m)
        cached = D.load_study_data(cache_dir=cache)
    _equal(cached, fresh)
    assert cached.split_path.is_file() and cached.split_path.name == f"split-{fresh.split_hash}.csv"
    # and what chapters see equals what make_split gives on the cached table
    pd.testing.assert_frame_equal(cached.split, D.make_split(cached.table.images, seed=0))


@pytest.mark.parametrize("change", [{"uncertain_policy": "negative"}, {"seed": 1},
                                    {"fractions": (0.6, 0.2, 0.2)}, {"views": "all"}])
def test_another_parameter_builds_anew_with_its_own_result(built_cache, tmp_path, monkeypatch, change):
    cache = _cache_with_default(built_cache, tmp_path)
    base = D.load_study_data(cache_dir=cache)
    calls = _counting_build(monkeypatch)
    other = D.load_study_data(cache_dir=cache, **change)
    assert len(calls) == 1 and len(list(cache.glob("study_data-*.npz"))) == 2
    policy = change.get("uncertain_policy", "positive")
    table = base.table if policy == "positive" else D.build_label_table(uncertain_policy=policy)
    expect = D.make_split(table.images,
                          fractions=change.get("fractions", (0.7, 0.1, 0.2)), seed=change.get("seed", 0),
                          views=change.get("views", "frontal"))
    pd.testing.assert_frame_equal(other.split, expect)
    assert other.split_hash != base.split_hash
    D.load_study_data(cache_dir=cache, **change)  # now cached: no second build
    assert len(calls) == 1


class _Built(Exception):
    """Raised by a stand-in build: the test only asks whether a build was started."""


def test_a_changed_labeler_or_layout_version_builds_anew(built_cache, tmp_path, monkeypatch):
    cache = _cache_with_default(built_cache, tmp_path)

    def build(*a):
        raise _Built

    monkeypatch.setattr(D, "_build_study_data", build)
    D.load_study_data(cache_dir=cache)  # unchanged: served from the cache
    for change in ((L.ReportLabeler, "fingerprint", staticmethod(lambda: "other-rules")),
                   (D, "LABEL_TABLE_VERSION", "test-bump"), (D, "STUDY_DATA_CACHE_VERSION", "x")):
        with monkeypatch.context() as m, pytest.raises(_Built):
            m.setattr(*change)
            D.load_study_data(cache_dir=cache)


def _archive(path, cardiomegaly_in: set[int]):
    members = {f"ecgen-radiology/{n}.xml": REPORT_XML.format(
        n=n, findings="Cardiomegaly." if n in cardiomegaly_in else "Heart size normal. No effusion.",
        impression="No acute disease.", mesh="normal").encode() for n in range(1, 31)}
    return write_tgz(path, members)


def test_another_report_archive_at_the_same_path_builds_anew(data_env, tmp_path, monkeypatch):
    cache, archive = tmp_path / "cache", tmp_path / "reports.tgz"
    _archive(archive, {3, 6, 9})
    a = D.load_study_data(views="all", reports_path=archive, cache_dir=cache)
    assert a.table.reports.Cardiomegaly.sum() == 3
    _archive(archive, {3, 6, 9, 12})  # same file name, other bytes
    calls = _counting_build(monkeypatch)
    b = D.load_study_data(views="all", reports_path=archive, cache_dir=cache)
    assert len(calls) == 1 and b.table.reports.Cardiomegaly.sum() == 4
    assert b.table.load_report.archive_sha256 != a.table.load_report.archive_sha256


def test_damaged_or_foreign_cache_file_is_a_miss_and_rebuilt(built_cache, tmp_path, monkeypatch):
    cache = _cache_with_default(built_cache, tmp_path)
    good = D.load_study_data(cache_dir=cache)
    other = D.load_study_data(seed=3, cache_dir=cache)
    f = next(p for p in cache.glob("study_data-*.npz") if p == D.study_data_cache_path(D.study_data_inputs(), cache))
    g = D.study_data_cache_path(D.study_data_inputs(seed=3), cache)
    whole = f.read_bytes()
    calls = []
    monkeypatch.setattr(D, "_build_study_data", lambda *a: calls.append(a) or good)  # what a build gives
    for bad in (whole[: len(whole) // 2], b"", b"PK\x03\x04garbage"):
        f.write_bytes(bad)
        with pytest.warns(hio.CacheMissWarning, match="study_data-"):
            again = D.load_study_data(cache_dir=cache)
        _equal(again, good)
        assert f.read_bytes() == whole  # written again, the same bytes
    # a valid file of other inputs under this key (its hash sidecar rewritten to match)
    hio.write_cache_bytes(f, g.read_bytes())
    with pytest.warns(hio.CacheMissWarning, match="other inputs"):
        D.load_study_data(cache_dir=cache)
    assert other.split_hash != good.split_hash and len(calls) == 4
    calls.clear()
    _equal(D.load_study_data(cache_dir=cache), good)
    assert calls == []


def test_warnings_of_the_build_come_back_on_every_cached_load(built_cache, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    built = D.load_study_data(cache_dir=built_cache)  # what a build gives (its frames are not checked here)

    def build_with_a_skipped_report(*a):
        warnings.warn("skipped ecgen-radiology/9.xml: malformed report XML (test)")
        return built

    monkeypatch.setattr(D, "_build_study_data", build_with_a_skipped_report)
    with pytest.warns(UserWarning, match="9.xml: malformed"):
        D.load_study_data(seed=5, cache_dir=cache)
    _no_build(monkeypatch)
    with pytest.warns(UserWarning, match="9.xml: malformed"):
        D.load_study_data(seed=5, cache_dir=cache)


def test_cache_key_inputs_are_cheap_to_read_and_name_every_input(data_env):
    x = D.study_data_inputs("negative", 2, (0.6, 0.2, 0.2), ["PA", "AP"], None)
    assert x["params"] == {"uncertain_policy": "negative", "split_seed": 2,
                           "split_fractions": [0.6, 0.2, 0.2], "views": ["PA", "AP"], "reports_path": None}
    assert set(x["files"]) == {"reports", "dicom_metadata", "pixel_views"}
    assert all(len(v["sha256"]) == 64 for v in x["files"].values())
    assert x["labeler"] == L.ReportLabeler.fingerprint() and x["label_table_version"] == D.LABEL_TABLE_VERSION
    assert {"numpy", "pandas", "iterative-stratification", "scikit-learn"} <= set(x["packages"])


# --- the frame codec ----------------------------------------------------------------------------


def _every_kind() -> pd.DataFrame:
    return pd.DataFrame({
        "i8": np.array([1, -1, 0], dtype=np.int8), "i64": [1, 2, 3], "f": [0.5, np.nan, -0.0],
        "b": [True, False, True], "s": pd.array(["a", None, "ü ✓"], dtype="str"),
        "o": pd.Series(["x", "y", "z"], dtype=object),
        "c": pd.Categorical(["val", "train", "val"], categories=["train", "val", "test"], ordered=True)})


def test_frame_codec_round_trip_is_exact():
    df = _every_kind()
    back, meta = F.decode(F.encode({"t": df, "empty": df.iloc[:0].reset_index(drop=True)}, {"k": [1, "a"]}))
    pd.testing.assert_frame_equal(back["t"], df, check_exact=True)
    assert list(back["t"].dtypes.astype(str)) == list(df.dtypes.astype(str)) and meta == {"k": [1, "a"]}
    assert len(back["empty"]) == 0 and list(back["empty"].columns) == list(df.columns)


@pytest.mark.parametrize("bad", [pd.DataFrame({"l": pd.Series([[1], [2]], dtype=object)}),
                                 pd.DataFrame({"t": pd.to_datetime(["2024-01-01", "2024-01-02"])}),
                                 pd.DataFrame({"a": [1, 2]}, index=[5, 6])])
def test_frame_codec_refuses_what_it_cannot_carry(bad):
    with pytest.raises(F.FrameCodecError):
        F.encode({"t": bad})


def test_frame_codec_never_unpickles():
    buf = io.BytesIO()
    np.savez(buf, header=np.frombuffer(b'{"format": "frames-1", "meta": {}, "frames": {"t": '
                                       b'{"columns": [{"name": "x", "kind": "array"}], "rows": 1}}}',
                                       dtype=np.uint8), **{"t/0": np.array([object()], dtype=object)})
    with pytest.raises(ValueError, match="pickle"):
        F.decode(buf.getvalue())


# --- the model: described from a cache, loaded on first use ----------------------------------------


@pytest.fixture
def model_copy(data_env, tmp_path):
    from helpers.protocols.models import TINY_PRETRAINED_DIR

    d = tmp_path / "model"
    shutil.copytree(TINY_PRETRAINED_DIR, d)
    return d


def test_cached_model_description_equals_loading(model_copy):
    from helpers.book import study as S

    spec, cpu = f"local-dir:{model_copy}", torch.device("cpu")
    eager = S.model_loader(spec, cpu)
    assert eager.loaded and eager.cache_file.is_file()
    lazy = S.model_loader(spec, cpu)
    assert not lazy.loaded and lazy.cache_file == eager.cache_file
    assert (lazy.info, lazy.geometry, lazy.logit_scale) == (eager.info, eager.geometry, eager.logit_scale)
    state = torch.random.get_rng_state()
    model, pre, tok = lazy.get()
    assert torch.equal(state, torch.random.get_rng_state())  # loading on first use draws nothing
    from helpers.data.images import geometric_transform

    assert repr(geometric_transform(pre)) == lazy.geometry
    assert float(model.logit_scale.detach().exp()) == lazy.logit_scale
    x = torch.zeros(1, 3, lazy.info.image_size, lazy.info.image_size)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x), eager.get()[0].encode_image(x), rtol=0, atol=0)


def test_a_changed_model_folder_loads_again(model_copy):
    from helpers.book import study as S

    spec, cpu = f"local-dir:{model_copy}", torch.device("cpu")
    first = S.model_loader(spec, cpu)
    cfg = model_copy / "open_clip_config.json"
    st = cfg.stat()
    os.utime(cfg, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = S.model_loader(spec, cpu)
    assert again.loaded and again.cache_file != first.cache_file


def test_a_cached_description_that_differs_from_the_model_is_refused_and_removed(model_copy):
    import json

    from helpers.book import study as S

    spec, cpu = f"local-dir:{model_copy}", torch.device("cpu")
    path = S.model_loader(spec, cpu).cache_file
    rec = json.loads(path.read_text())
    rec["info"]["weights_sha256"] = "0" * 64
    path.write_text(json.dumps(rec))
    lazy = S.model_loader(spec, cpu)
    assert not lazy.loaded
    with pytest.raises(S.ModelInfoMismatch, match="cached in"):
        lazy.get()
    assert not path.exists()


def test_pixel_cache_geometry_is_checked_on_a_miss(tmp_path):
    from PIL import Image

    from helpers.data import images as I
    from helpers.protocols.models import load_model

    _, pre, _, _ = load_model("tiny")
    p = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(p)
    with pytest.raises(ValueError, match="not the geometric transform"):
        I.build_pixel_cache([p], ["a"], pre, workers=1, cache_dir=tmp_path / "c", progress=False,
                            geometry="Compose(something else)")
    built = I.build_pixel_cache([p], ["a"], pre, workers=1, cache_dir=tmp_path / "c", progress=False)
    hit = I.build_pixel_cache([p], ["a"], None, workers=1, cache_dir=tmp_path / "c", progress=False,
                              geometry=repr(I.geometric_transform(pre)))
    assert hit.key == built.key and np.array_equal(np.asarray(hit.pixels), np.asarray(built.pixels))


def test_a_study_served_from_caches_equals_the_first(data_env):
    from helpers.book.study import load_study

    first = load_study("demo", limit=3)
    emb = first.image_embeddings()
    again = load_study("demo", limit=3)
    assert not again.loader.loaded  # the model is described, not loaded
    pd.testing.assert_frame_equal(again.table, first.table, check_exact=True)
    assert again.pixels.key == first.pixels.key and again.info == first.info
    assert again.split_hash == first.split_hash and again.logit_scale == first.logit_scale
    np.testing.assert_array_equal(again.image_embeddings(), emb)  # from the cache
    assert not again.loader.loaded
    assert again.model is not None and again.loader.loaded  # loaded when used
