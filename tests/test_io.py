"""Atomic writes (permissions, strict JSON, stale temporaries, atomic folders) and the one
reading path for caches: every parse or integrity failure is a miss that is rebuilt, or an
error naming the file."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from helpers import storage as hio
from conftest import REPORT_XML, write_tgz


def test_atomic_write_leaves_no_temp_file(tmp_path):
    p = hio.atomic_write_json(tmp_path / "a" / "m.json", {"b": 1, "a": 2})
    assert json.loads(p.read_text()) == {"a": 2, "b": 1}
    assert [x.name for x in p.parent.iterdir()] == ["m.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "m.json"
    hio.atomic_write_json(p, {"ok": 1})
    with pytest.raises(TypeError):
        hio.atomic_write_json(p, {"bad": object()})
    assert json.loads(p.read_text()) == {"ok": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["m.json"]


def test_frame_hash_is_content_based():
    a = pd.DataFrame({"x": [1, 2]})
    assert hio.frame_hash(a) == hio.frame_hash(a.copy())
    assert hio.frame_hash(a) != hio.frame_hash(pd.DataFrame({"x": [2, 1]}))


# --- bullet 8: strict JSON, umask permissions ---------------------------------------------


def test_json_is_strict_nan_and_inf_become_null(tmp_path):
    p = hio.atomic_write_json(tmp_path / "m.json", {"auroc": float("nan"), "ci95": [np.float32("inf"), -np.inf],
                                                    "n": np.int64(3), "arr": np.array([1.5, np.nan])})

    def refuse(c):
        raise AssertionError(f"non-standard JSON constant {c}")

    assert json.loads(p.read_text(), parse_constant=refuse) == {"auroc": None, "ci95": [None, None], "n": 3,
                                                               "arr": [1.5, None]}


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        p = hio.atomic_write_bytes(tmp_path / "f.bin", b"x")
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == mode


def test_make_serve_binds_the_loopback_address_unless_told():
    import shutil

    from helpers.config import REPO_ROOT

    if not shutil.which("make"):
        pytest.skip("make is not installed")
    run = lambda *a: subprocess.run(["make", "-n", "serve", *a], cwd=REPO_ROOT, capture_output=True,  # noqa: E731
                                    text=True).stdout
    assert "--bind 127.0.0.1" in run() and "8000" in run()
    assert "--bind 0.0.0.0" in run("HOST=0.0.0.0")


# --- bullet 6: stale temporaries, atomic folders ------------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temps_of_dead_processes_are_removed(tmp_path):
    host = hio._host()
    dead = tmp_path / f".pixels-abc.npy@{host}@{_dead_pid()}@1a2b.tmp"
    live = tmp_path / f".pixels-abc.npy@{host}@{os.getpid()}@1a2b.tmp"
    other_host = tmp_path / f".pixels-abc.npy@elsewhere@{_dead_pid()}@1a2b.tmp"
    folder = tmp_path / f".tiny@{host}@{_dead_pid()}@ff.building"
    for f in (dead, live, other_host):
        f.write_bytes(b"0" * 100)
    folder.mkdir()
    (folder / "w").write_bytes(b"1")
    keep = tmp_path / "pixels-abc.npy"
    keep.write_bytes(b"done")
    removed = hio.remove_stale_temps(tmp_path)
    assert sorted(removed) == sorted([dead, folder])
    assert live.exists() and other_host.exists() and keep.exists()


def test_building_dir_replaces_only_when_finished(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "w.bin").write_bytes(b"committed")
    with pytest.raises(KeyboardInterrupt):
        with hio.building_dir(final) as b:
            (b / "w.bin").write_bytes(b"half-trained")
            raise KeyboardInterrupt
    assert (final / "w.bin").read_bytes() == b"committed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with hio.building_dir(final) as b:
        (b / "w.bin").write_bytes(b"new")
    assert (final / "w.bin").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_building_dir_restores_a_folder_renamed_aside_by_a_killed_run(tmp_path):
    final = tmp_path / "model"
    aside = tmp_path / f".model@{hio._host()}@{_dead_pid()}@00.old"
    aside.mkdir()
    (aside / "w.bin").write_bytes(b"committed")
    with pytest.raises(RuntimeError):
        with hio.building_dir(final):
            raise RuntimeError("fails before finishing")
    assert (final / "w.bin").read_bytes() == b"committed"


# --- bullet 6: the one cache-reading path --------------------------------------------------


def test_cache_bytes_verified_against_their_hash(tmp_path):
    p = tmp_path / "c.bin"
    hio.write_cache_bytes(p, b"abcdef")
    assert hio.read_cache_bytes(p) == b"abcdef"
    p.write_bytes(b"abcdeX")
    with pytest.warns(hio.CacheMissWarning, match=r"c\.bin.*content hash"):
        assert hio.read_cache_bytes(p) is None
    (tmp_path / "c.bin.sha256").unlink()
    with pytest.warns(hio.CacheMissWarning, match="no content hash"):
        assert hio.read_cache_bytes(p) is None
    assert hio.read_cache_bytes(tmp_path / "absent.bin") is None


def test_npy_cache_zeroed_behind_a_valid_header_is_a_miss(tmp_path):
    p = tmp_path / "emb.npy"
    a = np.arange(12, dtype=np.float32).reshape(4, 3) + 1
    hio.write_npy_cache(p, a)
    assert np.array_equal(hio.read_npy_cache(p, (4, None), np.float32), a)
    raw = bytearray(p.read_bytes())
    header = len(raw) - a.nbytes
    raw[header:] = bytes(a.nbytes)  # valid .npy header, zeroed data
    p.write_bytes(bytes(raw))
    assert np.load(p).shape == (4, 3)  # np.load alone would accept it
    with pytest.warns(hio.CacheMissWarning, match="emb.npy"):
        assert hio.read_npy_cache(p, (4, None), np.float32) is None


def test_npy_cache_shape_dtype_and_values_checked(tmp_path):
    p = tmp_path / "e.npy"
    hio.write_npy_cache(p, np.array([[1.0, np.nan]], np.float32))
    with pytest.warns(hio.CacheMissWarning, match="NaN"):
        assert hio.read_npy_cache(p, (1, 2), np.float32, finite=True) is None
    with pytest.warns(hio.CacheMissWarning, match="shape"):
        assert hio.read_npy_cache(p, (3, None)) is None
    with pytest.warns(hio.CacheMissWarning, match="dtype"):
        assert hio.read_npy_cache(p, (1, 2), np.float64) is None


@pytest.mark.parametrize("content", [b"", b"\x00\xff garbage {", b"[1, 2]"])
def test_garbage_json_record_is_a_miss_naming_the_file(tmp_path, content):
    p = tmp_path / "run_times.json"
    p.write_bytes(content)
    with pytest.warns(hio.CacheMissWarning, match="run_times.json"):
        assert hio.read_json_cache(p) is None


def test_garbage_run_times_is_replaced(tmp_path):
    from helpers.book import runner as R

    p = tmp_path / "run_times.json"
    p.write_text("{not json")
    with pytest.warns(hio.CacheMissWarning):
        R.record_time(p, "01_data", 1.5, {"profile": "demo"})
    assert json.loads(p.read_text())["01_data"]["seconds"] == 1.5


# --- label table cache (helpers.data.iuxray) -------------------------------------------------------


def _twenty_reports(tmp_path):
    members = {f"ecgen-radiology/{n}.xml": REPORT_XML.format(
        n=n, findings="Cardiomegaly." if n % 3 == 0 else "Heart size normal. No effusion.",
        impression="No acute disease." if n % 2 else "Possible pneumonia.", mesh="normal").encode()
        for n in range(1, 21)}
    return write_tgz(tmp_path / "reports20.tgz", members)


def test_label_table_cache_edited_garbage_or_empty_is_rebuilt(tmp_path):
    from helpers.data import iuxray as D

    archive, cache = _twenty_reports(tmp_path), tmp_path / "cache"
    first = D.build_label_table(archive, cache_dir=cache)
    csv = next(cache.glob("report_labels-*.csv"))
    assert (cache / (csv.name + ".sha256")).is_file()
    truth = first.reports["Cardiomegaly"].sum()
    edited = pd.read_csv(csv, dtype={"report_id": str})
    edited["text:Cardiomegaly"] = 1.0  # the reported attack: values edited in place
    csv.write_bytes(hio.csv_bytes(edited))
    for bad in (None, b"", b"garbage,\x00\n1"):
        if bad is not None:
            csv.write_bytes(bad)
        with pytest.warns(hio.CacheMissWarning, match="report_labels"):
            again = D.build_label_table(archive, cache_dir=cache)
        assert again.reports["Cardiomegaly"].sum() == truth == 6  # reports 3, 6, ..., 18
        assert hio.read_csv_cache(csv) is not None  # rebuilt with a valid hash


def test_archive_with_no_well_formed_xml_is_named(tmp_path):
    from helpers.data import iuxray as D

    bad = write_tgz(tmp_path / "junk.tgz", {f"r/{n}.xml": b"<eCitation><uId" for n in range(20)})
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"junk\.tgz.*no well-formed report XML"):
        D.load_reports(bad)


def test_truncated_gzip_is_one_message_naming_the_file(tmp_path):
    from helpers.data import iuxray as D

    whole = _twenty_reports(tmp_path).read_bytes()
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"cut\.tgz.*truncated or corrupt"):
        D.load_reports(cut)


# --- phantoms (helpers.phantoms.rendering.generate) ---------------------------------------------------


@pytest.fixture
def phantom_table():
    from helpers.data.labels import CHEXPERT_LABELS

    t = pd.DataFrame({"image_id": [f"p{i}" for i in range(3)]})
    for c in CHEXPERT_LABELS:
        t[c] = 0
    t["Cardiomegaly"] = [1, 0, 1]
    return t


def test_truncated_phantom_is_rendered_again(tmp_path, phantom_table):
    from helpers.phantoms import rendering as P

    man = P.generate(phantom_table, tmp_path, size=64, workers=1, progress=False)
    img = tmp_path / man.path[1]
    good = img.read_bytes()
    img.write_bytes(good[: len(good) // 2])
    man2 = P.generate(phantom_table, tmp_path, size=64, workers=1, progress=False)
    assert img.read_bytes() == good and list(man2.sha256) == list(man.sha256)


def test_garbage_phantom_manifest_is_a_miss(tmp_path, phantom_table):
    from helpers.phantoms import rendering as P

    man = P.generate(phantom_table, tmp_path, size=64, workers=1, progress=False)
    (tmp_path / "manifest.csv").write_bytes(b"\x00\x01not,a\nmanifest")
    with pytest.warns(hio.CacheMissWarning, match="manifest.csv"):
        man2 = P.generate(phantom_table, tmp_path, size=64, workers=1, progress=False)
    assert list(man2.sha256) == list(man.sha256)
