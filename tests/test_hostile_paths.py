"""The paths a hostile new user finds (issue 23), each reproduced and kept fixed.

Start here to probe the book again: every row is one probe, what it does and what must hold.
Probes marked *(other file)* live beside the module's own tests; everything else is below.

===  =====================================  ==================================================  ==========================================================
#    item                                   probe (what the test does)                          what it checks
===  =====================================  ==================================================  ==========================================================
1    data lost: extraction                  a reader's own PNGs in ``data/openi/images``, then  they survive (and one named like a member is not
                                            ``download images`` from a loopback server; then    overwritten); the manifest lists only what extraction
                                            a second, different archive                         wrote; the first archive's stale files are removed
2    image_dir ignored on demo              ``run 02_zero_shot -p image_dir /tmp`` (demo)       refused before anything runs, naming the parameter
3    annotations rows dropped silently      annotation CSV with a row whose image id is a typo  an ``AnnotationWarning`` names the file, line and id
4    annotations ignored on demo            ``-p annotations x.csv`` (demo); ``-p style`` full  refused before anything runs, naming the profile
5    duplicate report ids                   report archive, two XMLs with ``<uId id="CXR1">``   ``ValueError`` naming the archive, both files and the id
6    warnings hidden                        load the reports/metadata/lung masks in a fresh     torchxrayvision is not imported, no blanket "ignore"
                                            process, then warn; a chapter that loads data and   filter, the warning reaches stderr; the chapter's page
                                            warns, run by the runner                            holds it and the runner's console repeats it
7    no lock                                two real runner processes, one output folder        the second exits 2 naming the holder's pid; the first
                                            (``--out``); a (profile, model) folder held by      finishes; the held (profile, model) folder refuses a run
                                            another process                                     that would write it
8    quick run overwrites full results      a full run's ``zero_shot.json``, then the real      the full file is byte-identical; the quick run's files are
                                            ``02_zero_shot -p limit 12 -p n_boot 5``            in ``quick/`` with ``quick_run`` in the stamp;
                                                                                                ``all_pairs`` lists the full folder only; n_boot alone
                                                                                                makes a run quick
9    splice: no ETag                        server with no validator; the file changes while    the result is the new file whole (no Range sent after the
                                            the first transfer is cut                           cut: no validator, no resume)
10   splice: Last-Modified only             as 9 with Last-Modified (server honouring and       the new file whole; an unchanged file resumes with Range
                                            ignoring ``If-Range``)                              (Last-Modified + size is a validator)
11   garbage .part with ``etag: null``      a ``.part`` of junk recorded with no validator      discarded: the fetch starts at byte 0
12   decompression bomb                     200-byte PNG whose header says 60000 x 60000        ``stop``: ``ImageError`` naming the file; ``skip``: that
                                                                                                row ``ok=False``, the others decoded; ``region_mask``
                                                                                                names it too
13   report id without digits               an XML with ``<uId id="CXRabc">``                   skipped with a warning naming the file and the id
14   broken ``local-dir:`` model            garbage safetensors; garbage ``.bin``; empty config; ``ModelFolderError`` naming the folder and the file
                                            config without ``model_cfg``                        and what was expected
15   pool workers outlive the kernel        a process makes a ``workers.pool`` (main thread     every worker exits within seconds of the parent's SIGKILL;
                                            and another thread), then is SIGKILLed; a chapter   after ``killpg(runner, SIGKILL)`` the kernel and both
                                            makes a pool and the runner's group is SIGKILLed    workers are gone within 20 s
16   full disk: SIGBUS                      pixel cache on a 1 MiB tmpfs (where mount works)    ``CacheSpaceError`` (ENOSPC) naming the folder; no
                                            and with simulated free space / ENOSPC from         temporary file left
                                            ``posix_fallocate``
17   trickling server                       one byte every 0.5 s, deadline 1.5 s                ``DownloadError`` naming the deadline within seconds;
                                                                                                the partial file kept
18   recorded hash not enforced             download, corrupt the local file, change the        refused (checksum mismatch naming the record),
                                            remote file, download again; then ``--refresh``     ``downloads.json`` unchanged; ``--refresh`` accepts and
                                                                                                re-records
19   archive member read whole              report archive with a 20 MB member                  refused by name; Python memory peak stays under 4 MB
L1   no upper bounds                        ``n_boot 1e9``, ``epochs``, ``batch_size``, ...     refused naming the range
L2   ``temperature 1e-320``                 as it says                                          refused naming the range
L3   repeated ``-p``                        ``-p limit 5 -p limit 7``                           refused: given twice
L4   absolute tar member                    member ``/abs/x.png``                               ``DownloadError`` naming it, nothing extracted (also
                                                                                                ``test_download.py``)
L5   each limit re-renders phantoms         render 6 ids, then 10                               only the 4 new are rendered; a changed label re-renders
                                                                                                that image alone
L6   read-only output folder found late     ``IUXRAY_OUTPUT_DIR`` read-only (chmod, a read-only the runner exits 2 naming it before any chapter runs
                                            tmpfs as root, or a simulated EROFS)
===  =====================================  ==================================================  ==========================================================

Item 15 is probed twice: the pool's parent SIGKILLed directly, and the issue's own probe, SIGKILL
of the runner's process group while a chapter's pool works (the kernel, then its workers, exit).
"""

from __future__ import annotations

import errno
import hashlib
import http.server
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers.data import download as D
from helpers.book import runner as R
from helpers.config import REPO_ROOT

# --------------------------------------------------------------------------------------
# A loopback server with the faults of items 9-11, 17, 18
# --------------------------------------------------------------------------------------

OLD = np.random.default_rng(1).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
NEW = np.random.default_rng(2).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
LM1, LM2 = "Mon, 01 Jan 2024 00:00:00 GMT", "Tue, 02 Jan 2024 00:00:00 GMT"


class Handler(http.server.BaseHTTPRequestHandler):
    state: dict = {}

    def log_message(self, *a):
        pass

    def do_GET(self):
        st = self.state
        st["requests"].append((self.headers.get("Range"), self.headers.get("If-Range")))
        body, etag, modified = st.get("body", OLD), st.get("etag"), st.get("last_modified")
        rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
        stale = if_range is not None and if_range not in (etag, modified) and not st.get("ignore_if_range")
        start = 0
        if rng and not stale:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        for k, v in (("ETag", etag), ("Last-Modified", modified)):
            if v:
                self.send_header(k, v)
        rest = body[start:]
        self.send_header("Content-Length", str(len(rest)))
        self.end_headers()
        if st.get("cut", 0) > 0:  # connection dropped a third of the way; then the file changes
            st["cut"] -= 1
            self.wfile.write(rest[: len(rest) // 3])
            self.wfile.flush()
            self.connection.close()
            st.update(st.pop("then", {}))
            return
        if st.get("trickle"):
            try:
                for i in range(len(rest)):
                    self.wfile.write(rest[i:i + 1])
                    self.wfile.flush()
                    time.sleep(st["trickle"])
            except OSError:
                pass
            return
        self.wfile.write(rest)


@pytest.fixture
def server():
    Handler.state = {"requests": []}
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", Handler.state
    srv.shutdown()
    srv.server_close()


def _tgz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for n, b in files.items():
            info = tarfile.TarInfo(n)
            info.size = len(b)
            t.addfile(info, io.BytesIO(b))
    return buf.getvalue()


# --- 1: extraction never removes what it did not write ------------------------------------


def test_01_extraction_keeps_a_readers_own_images(server, tmp_path):
    url, st = server
    folder = tmp_path / "openi" / "images"
    folder.mkdir(parents=True)
    (folder / "CXR9_IM-0001-1001.png").write_bytes(b"the reader's own")
    (folder / "CXR1_IM-0001-1001.png").write_bytes(b"the reader's copy of a member")
    st["body"] = _tgz({"CXR1_IM-0001-1001.png": b"archive 1", "CXR2_IM-0001-1001.png": b"archive 2",
                       "sub/CXR3_IM-0001-1001.png": b"archive 3"})
    D.download(["images"], tmp_path, {"images": f"{url}/png.tgz"}, progress=False)
    assert (folder / "CXR9_IM-0001-1001.png").read_bytes() == b"the reader's own"
    assert (folder / "CXR1_IM-0001-1001.png").read_bytes() == b"the reader's copy of a member"
    assert (folder / "CXR2_IM-0001-1001.png").read_bytes() == b"archive 2"
    man = json.loads((folder / "manifest.json").read_text())
    assert man["files"] == ["CXR2_IM-0001-1001.png", "sub/CXR3_IM-0001-1001.png"]
    assert man["kept"] == ["CXR1_IM-0001-1001.png"] and man["complete"]
    # a new archive: the previous extraction's stale file goes, the reader's files stay
    st["body"] = _tgz({"CXR2_IM-0001-1001.png": b"archive 2, new"})
    (tmp_path / "downloads.json").unlink()  # a new source file, not a changed one (item 18)
    D.download(["images"], tmp_path, {"images": f"{url}/png.tgz"}, progress=False)
    assert not (folder / "sub" / "CXR3_IM-0001-1001.png").exists()
    assert (folder / "CXR2_IM-0001-1001.png").read_bytes() == b"archive 2, new"
    assert (folder / "CXR9_IM-0001-1001.png").read_bytes() == b"the reader's own"
    assert (folder / "CXR1_IM-0001-1001.png").read_bytes() == b"the reader's copy of a member"


# --- 9, 10, 11: a partial file resumes only with a validator ------------------------------


def test_09_no_etag_file_changing_mid_download_is_not_spliced(server, tmp_path):
    url, st = server
    st.update(body=OLD, cut=1, then={"body": NEW})
    got = D.fetch(f"{url}/f", tmp_path / "f.bin", progress=False, backoff=0.01).read_bytes()
    assert got == NEW
    assert st["requests"][1] == (None, None)  # no validator: started again from byte 0


@pytest.mark.parametrize("ignore_if_range", [False, True])
def test_10_last_modified_only_file_changing_mid_download_is_not_spliced(server, tmp_path, ignore_if_range):
    url, st = server
    st.update(body=OLD, last_modified=LM1, cut=1, then={"body": NEW, "last_modified": LM2},
              ignore_if_range=ignore_if_range)
    got = D.fetch(f"{url}/f", tmp_path / "f.bin", progress=False, backoff=0.01).read_bytes()
    assert got == NEW
    assert st["requests"][1] == (f"bytes={len(OLD) // 3}-", LM1)  # resumed with Last-Modified as If-Range


def test_10_last_modified_with_size_resumes_an_unchanged_file(server, tmp_path):
    url, st = server
    st.update(body=OLD, last_modified=LM1, cut=1)
    assert D.fetch(f"{url}/f", tmp_path / "f.bin", progress=False, backoff=0.01).read_bytes() == OLD
    assert [r for r, _ in st["requests"]] == [None, f"bytes={len(OLD) // 3}-"]


@pytest.mark.parametrize("server_etag", [None, '"v1"'])
def test_11_garbage_part_recorded_with_etag_null_is_not_resumed(server, tmp_path, server_etag):
    url, st = server
    st.update(body=OLD, etag=server_etag)
    (tmp_path / "f.bin.part").write_bytes(b"garbage" * 1000)
    (tmp_path / "f.bin.part.json").write_text(json.dumps({"url": f"{url}/f", "etag": None}))
    assert D.fetch(f"{url}/f", tmp_path / "f.bin", progress=False).read_bytes() == OLD
    assert st["requests"] == [(None, None)]


# --- 17: an overall deadline ---------------------------------------------------------------


def test_17_trickling_server_hits_the_overall_deadline(server, tmp_path):
    url, st = server
    st.update(body=b"x" * 100, trickle=0.5)
    t0 = time.monotonic()
    with pytest.raises(D.DownloadError, match=r"ran past its deadline of 1\.5 s.*--deadline"):
        D.fetch(f"{url}/f", tmp_path / "f.bin", progress=False, timeout=5, deadline=1.5, backoff=0.01)
    assert time.monotonic() - t0 < 4
    assert not (tmp_path / "f.bin").exists()


# --- 18: recorded hash and size are enforced; --refresh accepts a changed file ---------------


def test_18_recorded_hash_is_enforced_unless_refreshed(server, tmp_path, capsys):
    url, st = server
    st["body"] = OLD
    urls = {"config": f"{url}/open_clip_config.json"}
    dest = Path(D.download(["config"], tmp_path, urls, progress=False)["config"])
    record = (tmp_path / "downloads.json").read_bytes()
    dest.write_bytes(b"corrupted locally")
    st["body"] = NEW  # same size, other bytes: the remote file changed
    with pytest.raises(D.DownloadError, match=r"checksum mismatch.*recorded in .*downloads\.json.*--refresh"):
        D.download(["config"], tmp_path, urls, progress=False, backoff=0.01)
    assert (tmp_path / "downloads.json").read_bytes() == record and dest.read_bytes() == b"corrupted locally"
    st["body"] = NEW + b"longer"  # another size: refused from the announced length, before the body
    with pytest.raises(D.DownloadError, match=r"expected 200000 \(recorded in .*downloads\.json\): not the same file.*--refresh"):
        D.download(["config"], tmp_path, urls, progress=False, backoff=0.01)
    st["body"] = NEW
    assert D.main(["config", "--data-dir", str(tmp_path), "--url", f"config={urls['config']}",
                   "--refresh", "config"]) == 0
    assert dest.read_bytes() == NEW
    rec = json.loads((tmp_path / "downloads.json").read_text())["config"]
    assert rec["sha256"] == hashlib.sha256(NEW).hexdigest() and rec["bytes"] == len(NEW)


# --- L4: an absolute tar member is refused ---------------------------------------------------


def test_L4_absolute_tar_member_is_refused(tmp_path):
    (tmp_path / "a.tgz").write_bytes(_tgz({"ok.png": b"1", "/abs/x.png": b"2"}))
    with pytest.raises(D.DownloadError, match=r"'/abs/x\.png' \(an absolute path\)"):
        D.extract(tmp_path / "a.tgz", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------
# Report archives: 5, 13, 19; warnings: 6
# --------------------------------------------------------------------------------------

XML = ('<?xml version="1.0"?><eCitation><uId id="{id}"/><Abstract><AbstractText Label="FINDINGS">'
       'Heart size normal.</AbstractText></Abstract><parentImage id="{id}_IM-0001-1001"/></eCitation>')


def _archive(path: Path, members: dict[str, bytes]) -> Path:
    path.write_bytes(_tgz(members))
    return path


def test_05_duplicate_report_ids_are_refused_naming_both_files(tmp_path):
    from helpers.data.iuxray import load_reports

    a = _archive(tmp_path / "r.tgz", {"ecgen/1.xml": XML.format(id="CXR1").encode(),
                                      "ecgen/2.xml": XML.format(id="CXR2").encode(),
                                      "ecgen/copy.xml": XML.format(id="CXR1").encode()})
    with pytest.raises(ValueError, match=r"r\.tgz: ecgen/1\.xml and ecgen/copy\.xml both have report id 'CXR1'"):
        load_reports(a)


def test_13_report_id_without_digits_is_named(tmp_path):
    from helpers.data.iuxray import load_reports

    a = _archive(tmp_path / "r.tgz", {"ecgen/1.xml": XML.format(id="CXR1").encode(),
                                      "ecgen/x.xml": XML.format(id="CXRabc").encode()})
    with pytest.warns(UserWarning, match=r"ecgen/x\.xml: report id 'CXRabc' has no number"):
        df, rep = load_reports(a)
    assert list(df.report_id) == ["CXR1"] and rep.malformed == ["ecgen/x.xml"]
    only = _archive(tmp_path / "bad.tgz", {"ecgen/x.xml": XML.format(id="CXRabc").encode()})
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="holds no well-formed report XML"):
        load_reports(only)


def test_19_oversized_archive_member_is_refused_unread(tmp_path):
    import tracemalloc

    from helpers.data.iuxray import MAX_REPORT_BYTES, load_reports

    big = 20 << 20
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        info = tarfile.TarInfo("ecgen/1.xml")
        info.size = len(XML.format(id="CXR1"))
        t.addfile(info, io.BytesIO(XML.format(id="CXR1").encode()))
        info = tarfile.TarInfo("ecgen/2.xml")
        info.size = big
        t.addfile(info, io.BytesIO(b" " * big))
    (tmp_path / "r.tgz").write_bytes(buf.getvalue())
    del buf
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=rf"ecgen/2\.xml is {big:,} bytes, more than any report XML "
                                             rf"\({MAX_REPORT_BYTES:,} bytes at most\); refused unread"):
            load_reports(tmp_path / "r.tgz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"{peak:,} bytes allocated"


def test_06_loading_the_data_keeps_warnings_visible():
    """Importing torchxrayvision ran warnings.filterwarnings('ignore') for the whole process; the
    data files are found without importing it, so a later warning still reaches stderr."""
    code = textwrap.dedent("""
        import sys, warnings
        from helpers.data.iuxray import load_metadata, load_reports, package_file
        from helpers.phantoms.drawers import lung_templates
        load_reports(); load_metadata(); lung_templates()
        assert "torchxrayvision" not in sys.modules, "torchxrayvision was imported"
        blanket = [f for f in warnings.filters if f[0] == "ignore" and f[1] is None and f[2] is Warning]
        assert not blanket, blanket
        warnings.warn("probe: this warning must be visible", UserWarning)
    """)
    env = {**os.environ, "PYTHONWARNINGS": ""}
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "UserWarning: probe: this warning must be visible" in p.stderr


CHAPTER_HEAD = ('# ---\n# jupyter:\n#   kernelspec:\n#     display_name: Python 3\n#     language: python\n'
                '#     name: python3\n# ---\n\n# %% tags=["parameters"]\nprofile = "demo"\n{params}\n# %%\n{code}\n')


def _chapter(folder: Path, name: str, code: str, params: str = "") -> Path:
    p = folder / f"{name}.py"
    p.write_text(CHAPTER_HEAD.format(params=params, code=code))
    return p


def test_06_a_chapters_warnings_reach_its_page_and_the_console(tmp_path, capsys, data_env):
    nb = _chapter(tmp_path, "99_warns", "from helpers.data.iuxray import load_metadata\nload_metadata()\n"
                  "import warnings\nwarnings.warn('cache x is not usable (probe); it is rebuilt', UserWarning)\n")
    assert R.main([str(nb), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "99_warns: warning: UserWarning: cache x is not usable (probe); it is rebuilt" in err
    page = json.loads((tmp_path / "out" / "99_warns.ipynb").read_text())
    assert "cache x is not usable (probe)" in json.dumps(page["cells"])


# --------------------------------------------------------------------------------------
# Runner: 2, 4, 7, 8, L1-L3, L6
# --------------------------------------------------------------------------------------


@pytest.fixture
def no_execution(monkeypatch):
    monkeypatch.setattr(R, "execute", lambda *a, **k: pytest.fail("a chapter ran"))


@pytest.mark.parametrize("argv,expect", [
    (["02_zero_shot", "-p", "image_dir", "/tmp"], r"'image_dir' is read only by the full profile.*demo profile "
                                                   r"uses phantoms and would silently ignore it"),
    (["06_grad_cam", "-p", "annotations", "annotations/iuxray_example.csv"], r"'annotations' is read only by "
                                                                            r"the full profile"),
    (["02_zero_shot", "--profile", "full", "-p", "style", "source"], r"'style' is read only by the demo profile"),
])
def test_02_04_parameters_a_profile_ignores_are_refused(capsys, no_execution, data_env, argv, expect):
    import re

    assert R.main(argv) == 2
    assert re.search(expect, capsys.readouterr().err)


@pytest.mark.parametrize("name,value", [("n_boot", "1000000000"), ("epochs", "1000000"),
                                        ("batch_size", "1000000"), ("limit", "10000000"),
                                        ("n_seeds", "100000"), ("temperature", "1e-320"),
                                        ("temperature", "1e6"), ("lr", "50")])
def test_L1_L2_sizes_have_upper_bounds_and_temperature_a_sane_range(capsys, no_execution, data_env, name, value):
    chapter = "04_fine_tune"
    assert R.main([chapter, "-p", name, value]) == 2
    err = capsys.readouterr().err
    assert f"parameter {name!r}: value" in err and "out of range; valid: in [" in err


def test_L3_a_parameter_given_twice_is_refused(capsys, no_execution, data_env):
    assert R.main(["02_zero_shot", "-p", "limit", "5", "-p", "limit", "7"]) == 2
    assert "parameter 'limit' is given 2 times ('5', '7'); give it once" in capsys.readouterr().err


@pytest.fixture
def readonly_dir(tmp_path, monkeypatch):
    """A folder this process cannot write: chmod where that binds (not root), a read-only tmpfs
    where mounting works (root), else a simulated EROFS for files created in it."""
    d = tmp_path / "ro"
    d.mkdir()
    mounted = False
    if os.geteuid() != 0:
        d.chmod(0o555)
    elif shutil.which("mount") and subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)],
                                                  capture_output=True).returncode == 0:
        mounted = True
    else:
        import helpers.storage as hio

        real = hio.tempfile.mkstemp

        def mkstemp(*a, dir=None, **k):
            if dir is not None and Path(dir).resolve().is_relative_to(d.resolve()):
                raise OSError(errno.EROFS, "Read-only file system", str(dir))
            return real(*a, dir=dir, **k)

        monkeypatch.setattr(hio.tempfile, "mkstemp", mkstemp)
    yield d
    if mounted:
        subprocess.run(["umount", str(d)], capture_output=True)
    d.chmod(0o755)


def test_L6_a_read_only_output_folder_is_found_before_any_work(capsys, no_execution, data_env, readonly_dir,
                                                               monkeypatch):
    monkeypatch.setenv("IUXRAY_OUTPUT_DIR", str(readonly_dir))
    t0 = time.monotonic()
    assert R.main(["02_zero_shot", "-p", "limit", "8"]) == 2
    err = capsys.readouterr().err
    assert f"output folder {readonly_dir}" in err and "is not writable" in err and "IUXRAY_OUTPUT_DIR" in err
    assert time.monotonic() - t0 < 20


def _runner(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "helpers.book.runner", *args], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.book  # two runner processes, each executing a chapter in its own kernel
def test_07_two_real_runs_of_one_output_folder_the_second_is_refused(tmp_path, data_env):
    nb = _chapter(tmp_path, "99_sleeps", "import time\ntime.sleep(seconds)\n", "seconds = 3.0\n")
    out = tmp_path / "out"
    env = {**os.environ, "IUXRAY_OUTPUT_DIR": str(tmp_path / "outputs")}
    first = _runner([str(nb), "--out", str(out)], env)
    try:
        deadline = time.monotonic() + 120
        while not ((out / ".lock").is_file() and (out / ".lock").read_text()):
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first run never took its lock"
            time.sleep(0.1)
        second = _runner([str(nb), "--out", str(out), "-p", "seconds", "0.1"], env)
        _, err2 = second.communicate(timeout=120)
        assert second.returncode == 2, err2
        assert f"output folder {out} is in use by another run (pid {first.pid} on" in err2
        assert "99_sleeps" in err2  # the holder's command
        _, err1 = first.communicate(timeout=300)
        assert first.returncode == 0, err1
    finally:
        first.kill()
    nbj = json.loads((out / "99_sleeps.ipynb").read_text())
    injected = "".join("".join(c["source"]) for c in nbj["cells"]
                       if "injected-parameters" in c["metadata"].get("tags", []))
    assert "seconds" not in injected  # the page holds the first run's parameters, not the second's


def test_07_a_held_model_folder_refuses_a_run_that_would_write_it(tmp_path, capsys, no_execution, private_outputs):
    from helpers.book.artefacts import Artefacts

    folder = Artefacts.of("demo", "tiny", quick=True).dir
    code = (f"from helpers.storage import folder_lock\nimport sys, time\n"
            f"with folder_lock({str(folder)!r}, 'probe'):\n    print('held', flush=True)\n    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert R.main(["02_zero_shot", "--out", str(tmp_path / "out"), "-p", "limit", "8"]) == 2
        err = capsys.readouterr().err
        assert f"output folder {folder} is in use by another run (pid {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()


def test_08_quick_parameters_choose_the_quick_folder():
    from helpers.book.artefacts import Artefacts

    chapters = ["02_zero_shot", "04_fine_tune"]
    for given, reason in (([("n_boot", "5")], "n_boot 5"), ([("limit", "12")], "limit 12 images per split"),
                          ([("n_boot", "500")], "")):
        params = R.resolve_parameters(chapters, given, "demo")
        plan = R.plan_outputs(chapters, params, "demo", Path("/tmp/x"))
        assert plan.quick == {c: reason for c in chapters}
        assert Artefacts.of("demo", "tiny", quick=bool(reason)).dir in plan.folders


@pytest.mark.book
def test_08_a_quick_run_never_overwrites_a_full_run(tmp_path, capsys, private_outputs):
    """The issue's probe: a full run's zero_shot.json, then ``-p limit 12 -p n_boot 5``."""
    from helpers.book.artefacts import Artefacts, all_pairs

    full = Artefacts.of("demo", "tiny")
    full.dir.mkdir(parents=True, exist_ok=True)
    before = json.dumps({"stamp": {"profile": "demo", "model_id": "tiny@full", "n_images": 3679},
                         "metrics": {"f1_macro": 0.5}}).encode()
    full.metrics("zs").write_bytes(before)
    rc = R.main(["02_zero_shot", "--out", str(tmp_path), "-p", "limit", "12", "-p", "n_boot", "5"])
    assert rc == 0, capsys.readouterr().err
    assert full.metrics("zs").read_bytes() == before
    quick = Artefacts.of("demo", "tiny", quick=True)
    stamp = json.loads(quick.metrics("zs").read_text())["stamp"]
    assert stamp["quick_run"] == "limit 12 images per split" and stamp["n_images"] == 36
    assert quick.dir == full.dir / "quick" and quick.scores("zs").is_file()
    assert [p[1] for p in all_pairs() if p[0] == "demo"] == ["tiny"]  # the quick run is not gathered
    full.metrics("zs").unlink()
    assert [p[1] for p in all_pairs() if p[0] == "demo"] == ["tiny/quick"]  # ... unless it is all there is


# --------------------------------------------------------------------------------------
# Images: 12, 16; phantoms: L5; annotations: 3
# --------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb(path: Path) -> Path:
    """A ~100-byte PNG whose header claims 60000 x 60000 grey pixels."""
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                     + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + _png_chunk(b"IEND", b""))
    return path


def _pngs(folder: Path, n: int, size: int = 40) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"img{i}.png"
        Image.fromarray(np.full((size, size), (20 * i) % 256, np.uint8)).save(p)
        out.append(p)
    return out


def _geo(size: int = 32):
    from torchvision import transforms as T

    return T.Compose([T.Resize(size), T.CenterCrop(size)])


def test_12_decompression_bomb_is_named_and_skippable(tmp_path):
    from helpers.data import images as I

    good = _pngs(tmp_path / "png", 3)
    bomb = _bomb(tmp_path / "png" / "bomb.png")
    assert bomb.stat().st_size < 200
    paths = [good[0], bomb, good[1], good[2]]
    ids = ["a", "bomb", "b", "c"]
    for first in (paths, [bomb, *good]):  # as the probe image (first) and in the middle
        with pytest.raises(I.ImageError, match=rf"{bomb}: cannot decode \(DecompressionBombError"):
            I.build_pixel_cache(first, ids, _geo(), cache_dir=tmp_path / "cache", workers=1, progress=False)
    c = I.build_pixel_cache(paths, ids, _geo(), on_error="skip", cache_dir=tmp_path / "cache", workers=1,
                            progress=False)
    assert c.ok.tolist() == [True, False, True, True] and "DecompressionBombError" in c.failures[str(bomb)]
    assert c.pixels.shape == (4, 32, 32) and c.pixels[2].mean() == 20
    from helpers.data.annotations import AnnotationError, region_mask

    ann = pd.DataFrame({"image_id": ["bomb"], "label": ["Cardiomegaly"], "shape": ["box"],
                        "points": [[(1, 1), (5, 5)]]})
    with pytest.raises(AnnotationError, match=rf"{bomb}: cannot read the size"):
        region_mask(ann, "bomb", "Cardiomegaly", bomb, 32)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs where this process may mount one (root); None elsewhere."""
    d = tmp_path / "tiny-disk"
    d.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount") or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], capture_output=True).returncode:
        yield None
        return
    yield d
    subprocess.run(["umount", str(d)], capture_output=True)


def test_16_full_disk_gives_a_message_naming_the_folder_not_sigbus(tmp_path, monkeypatch, small_tmpfs):
    import shutil as sh

    from helpers.data import images as I

    paths = _pngs(tmp_path / "png", 40)
    ids = [f"i{k}" for k in range(40)]
    geo = _geo(224)  # 40 x 224 x 224 bytes = 1.9 MiB

    def build(folder):
        return I.build_pixel_cache(paths, ids, geo, cache_dir=folder, workers=1, progress=False)

    if small_tmpfs is not None:  # a real full disk
        with pytest.raises(I.CacheSpaceError, match=rf"not enough free disk space in {small_tmpfs} for the pixel "
                                                    rf"cache \(2,007,040 bytes"):
            build(small_tmpfs)
        assert not [p for p in small_tmpfs.iterdir() if p.suffix in (".tmp", ".npy")]
        # free space that says enough, then the allocation itself fails on the real disk
        monkeypatch.setattr(sh, "disk_usage", lambda p: sh._ntuple_diskusage(1 << 40, 0, 1 << 40))
        with pytest.raises(I.CacheSpaceError, match=str(small_tmpfs)):
            build(small_tmpfs)
        assert not [p for p in small_tmpfs.iterdir() if p.suffix in (".tmp", ".npy")]
        monkeypatch.undo()
    # simulated: too little free space, or ENOSPC from the allocation
    real = sh.disk_usage
    monkeypatch.setattr(sh, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(I.CacheSpaceError, match=rf"in {tmp_path / 'c1'} .*1,000 bytes free.*IUXRAY_DATA_DIR"):
        build(tmp_path / "c1")
    monkeypatch.setattr(sh, "disk_usage", real)

    def enospc(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", enospc)
    with pytest.raises(I.CacheSpaceError) as e:
        build(tmp_path / "c2")
    assert e.value.errno == errno.ENOSPC and str(tmp_path / "c2") in str(e.value)
    assert not [p for p in (tmp_path / "c2").iterdir() if p.suffix in (".tmp", ".npy")]


def test_L5_a_limited_run_renders_a_subset_and_the_full_run_reuses_it(tmp_path, monkeypatch):
    from helpers.phantoms import rendering as P
    from helpers.data.labels import CHEXPERT_LABELS

    table = pd.DataFrame({"image_id": [f"CXR{i}_IM-0001-1001" for i in range(10)]})
    for c in CHEXPERT_LABELS:
        table[c] = 0
    table["Cardiomegaly"] = [i % 2 for i in range(10)]
    rendered: list[str] = []
    real = P._render_one
    monkeypatch.setattr(P, "_render_one", lambda job: rendered.append(job[0]) or real(job))
    small = P.generate(table.head(6), tmp_path, "target", size=64, workers=1, progress=False)
    assert len(rendered) == 6
    rendered.clear()
    full = P.generate(table, tmp_path, "target", size=64, workers=1, progress=False)
    assert rendered == list(table.image_id[6:])  # only the images the limited run did not render
    assert list(full.sha256[:6]) == list(small.sha256)
    rendered.clear()
    P.generate(table.head(3), tmp_path, "target", size=64, workers=1, progress=False)
    assert rendered == []  # another limit: nothing to render
    changed = table.copy()
    changed.loc[4, "Cardiomegaly"] = 1 - changed.loc[4, "Cardiomegaly"]
    P.generate(changed, tmp_path, "target", size=64, workers=1, progress=False)
    assert rendered == [table.image_id[4]]


def test_03_annotation_rows_naming_no_image_are_reported(tmp_path):
    from types import SimpleNamespace

    from helpers.data import annotations as A
    from helpers.data.labels import CHEXPERT_LABELS
    from helpers.book.study import localization_pairs

    (p,) = _pngs(tmp_path / "png", 1, size=64)
    table = pd.DataFrame({"image_id": ["CXR1_IM-0001-1001"], "report_id": ["CXR1"], "split": ["test"],
                          "path": [str(p)]})
    for c in CHEXPERT_LABELS:
        table[c] = 0
    csv = tmp_path / "ann.csv"
    csv.write_text('image_id,label,shape,points\nCXR1_IM-0001-1001,Cardiomegaly,box,"5,5;30,30"\n'
                   'CXR1_IM-0001-1001.png,Cardiomegaly,box,"5,5;30,30"\n')
    study = SimpleNamespace(info=SimpleNamespace(image_size=32), table=table, labels=list(CHEXPERT_LABELS),
                            rows=lambda s: np.array([0]) if s == "test" else np.zeros(0, int),
                            all_image_ids=frozenset({"CXR1_IM-0001-1001", "CXR2_IM-0001-1001"}))
    with pytest.warns(A.AnnotationWarning, match=r"ann\.csv: 1 annotation row\(s\) name no image of the study and "
                                                 r"are not used: line 3 \(CXR1_IM-0001-1001\.png\)"):
        pairs = localization_pairs(study, "test", annotations=str(csv))
    assert list(pairs.table.label) == ["Cardiomegaly"]


# --------------------------------------------------------------------------------------
# Models: 14; workers: 15
# --------------------------------------------------------------------------------------


@pytest.fixture
def model_copy(tmp_path):
    from helpers.protocols.models import TINY_PRETRAINED_DIR

    d = tmp_path / "my-model"
    shutil.copytree(TINY_PRETRAINED_DIR, d)
    return d


@pytest.mark.parametrize("case,expect", [
    ("garbage safetensors", r"the weights open_clip_model\.safetensors cannot be read \(SafetensorError"),
    ("garbage bin", r"cannot be loaded \(.*\); expected a folder with open_clip_config\.json"),
    ("empty config", r"open_clip_config\.json cannot be read \(JSONDecodeError"),
    ("config without model_cfg", r"open_clip_config\.json has no 'model_cfg' object"),
    ("model_cfg without towers", r"'model_cfg' in open_clip_config\.json lacks \['vision_cfg', 'text_cfg'\]"),
])
def test_14_broken_local_dir_model_names_the_folder(model_copy, case, expect):
    from helpers.protocols.models import ModelFolderError, load_model

    if case == "garbage safetensors":
        (model_copy / "open_clip_model.safetensors").write_bytes(b"\x01\x00\x00\x00garbage")
    elif case == "garbage bin":
        (model_copy / "open_clip_model.safetensors").unlink()
        (model_copy / "open_clip_pytorch_model.bin").write_bytes(b"not a checkpoint")
    elif case == "empty config":
        (model_copy / "open_clip_config.json").write_text("")
    elif case == "config without model_cfg":
        (model_copy / "open_clip_config.json").write_text("{}")
    else:
        (model_copy / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 96}}))
    with pytest.raises(ModelFolderError, match=rf"model folder {model_copy}.*{expect}"):
        load_model(f"local-dir:{model_copy}")


WORKER_PARENT = textwrap.dedent("""
    import sys, threading, time
    from helpers import workers

    def hold(_):
        time.sleep(120)

    def run():
        with workers.pool(2) as p:
            [p.apply_async(hold, (i,)) for i in range(2)]
            print(" ".join(str(w.pid) for w in p._pool), flush=True)
            time.sleep(120)

    if sys.argv[1] == "thread":  # the pool made by another thread: no PR_SET_PDEATHSIG, the watch alone
        threading.Thread(target=run, daemon=True).start()
        time.sleep(120)
    else:
        run()
""")


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # a zombie has exited
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


@pytest.mark.parametrize("made_by", ["main", "thread"])
def test_15_pool_workers_die_with_their_parent(made_by):
    parent = subprocess.Popen([sys.executable, "-c", WORKER_PARENT, made_by], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        pids = [int(x) for x in parent.stdout.readline().split()]
        assert len(pids) == 2 and not any(_gone(p) for p in pids)
        os.kill(parent.pid, signal.SIGKILL)  # as the kernel dies when its runner is killed
        parent.wait()
        deadline = time.monotonic() + 10
        while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(_gone(p) for p in pids), f"workers {pids} outlived their parent"
    finally:
        try:
            os.killpg(parent.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.book
def test_15_after_sigkill_of_the_runners_group_no_kernel_or_worker_lives_on(tmp_path, data_env):
    """The issue's probe: SIGKILL the runner's process group while a chapter's pool works."""
    pidfile = tmp_path / "pids.json"
    code = ("import json, os, time\nfrom helpers import workers\nwith workers.pool(2) as p:\n"
            "    [p.apply_async(time.sleep, (300,)) for _ in range(2)]\n"
            "    open(pidfile, 'w').write(json.dumps([os.getpid()] + [w.pid for w in p._pool]))\n"
            "    time.sleep(300)\n")
    nb = _chapter(tmp_path, "99_pool", code, 'pidfile = ""\n')
    env = {**os.environ, "IUXRAY_OUTPUT_DIR": str(tmp_path / "outputs")}
    runner = subprocess.Popen([sys.executable, "-m", "helpers.book.runner", str(nb), "--out", str(tmp_path / "out"),
                               "-p", "pidfile", str(pidfile)], cwd=REPO_ROOT, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not (pidfile.is_file() and pidfile.read_text()):
            assert runner.poll() is None and time.monotonic() < deadline, "the chapter never started its pool"
            time.sleep(0.2)
        pids = json.loads(pidfile.read_text())  # the kernel, then its two workers
        os.killpg(runner.pid, signal.SIGKILL)
        runner.wait()
        deadline = time.monotonic() + 20
        while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(_gone(p) for p in pids), f"still alive: {[p for p in pids if not _gone(p)]} of {pids}"
    finally:
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
