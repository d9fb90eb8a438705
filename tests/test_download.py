"""Downloads against a loopback HTTP server that injects faults. Nothing outside 127.0.0.1."""

import errno
import hashlib
import http.server
import io
import json
import tarfile
import threading
import time

import numpy as np
import pytest

from helpers.data import download as D

PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    state: dict = {}

    def log_message(self, *a):
        pass

    def do_GET(self):
        st = self.state
        st["requests"].append(self.headers.get("Range"))
        if self.path == "/missing":
            self.send_error(404, "Not Found")
            return
        if st.get("change_after") is not None and len(st["requests"]) > st["change_after"]:
            st.update(st.pop("changed"), change_after=None)  # the remote file is replaced mid-download
        body = st.get("body", PAYLOAD)
        etag, modified = st.get("etag"), st.get("last_modified")
        start = 0
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        stale = if_range is not None and if_range not in (etag, modified) and not st.get("ignore_if_range")
        if rng and st.get("ranges", True) and not stale:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            first = 0 if st.get("wrong_range") else start
            self.send_header("Content-Range", f"bytes {first}-{len(body) - 1}/{len(body)}")
            start = first
        else:
            self.send_response(200)
        if etag:
            self.send_header("ETag", etag)
        if modified:
            self.send_header("Last-Modified", modified)
        rest = body[start:]
        self.send_header("Content-Length", str(len(rest)))
        self.end_headers()
        mode = st.get("mode")
        if mode in ("reset", "truncate") and st.get("faults", 0) > 0:
            st["faults"] -= 1
            self.wfile.write(rest[: len(rest) // 3])
            self.wfile.flush()
            self.connection.close()  # connection dropped mid-body: the client sees fewer bytes
            return
        if st.get("trickle"):  # one byte per interval, for ever (until the client gives up)
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
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", Handler.state
    srv.shutdown()
    srv.server_close()


def test_plain_download_with_checksum(server, tmp_path):
    url, st = server
    p = D.fetch(f"{url}/f", tmp_path / "f.bin", SHA, progress=False, backoff=0.01)
    assert p.read_bytes() == PAYLOAD and not (tmp_path / "f.bin.part").exists()


def test_reset_mid_transfer_resumes_with_range(server, tmp_path):
    url, st = server
    st.update(mode="reset", faults=2, etag='"v1"')
    p = D.fetch(f"{url}/f", tmp_path / "f.bin", SHA, progress=False, backoff=0.01)
    assert p.read_bytes() == PAYLOAD
    assert st["requests"][0] is None and any(r and r.startswith("bytes=") for r in st["requests"][1:])


def test_server_without_ranges_restarts_cleanly(server, tmp_path):
    url, st = server
    st.update(mode="reset", faults=1, ranges=False)
    assert D.fetch(f"{url}/f", tmp_path / "f.bin", SHA, progress=False, backoff=0.01).read_bytes() == PAYLOAD


def test_persistent_truncation_is_detected(server, tmp_path):
    url, st = server
    st.update(mode="truncate", faults=100)
    with pytest.raises(D.DownloadError, match="after 3 attempts"):
        D.fetch(f"{url}/f", tmp_path / "f.bin", SHA, retries=2, progress=False, backoff=0.01)
    assert not (tmp_path / "f.bin").exists()  # never at its final path unless complete
    assert (tmp_path / "f.bin.part").stat().st_size < len(PAYLOAD)  # kept for resuming


def test_wrong_checksum_is_rejected_and_not_left_behind(server, tmp_path):
    url, st = server
    with pytest.raises(D.DownloadError, match="checksum mismatch"):
        D.fetch(f"{url}/f", tmp_path / "f.bin", "0" * 64, progress=False, backoff=0.01)
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()


def test_404_names_the_url(server, tmp_path):
    url, st = server
    with pytest.raises(D.DownloadError, match=r"HTTP 404.*127\.0\.0\.1.*/missing"):
        D.fetch(f"{url}/missing", tmp_path / "m.bin", progress=False)
    assert len(st["requests"]) == 1  # client errors are not retried


def test_disk_full_is_reported_and_partial_kept(server, tmp_path, monkeypatch):
    url, st = server
    real_open = D.Path.open

    class Full(io.RawIOBase):
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            if self.n > 100_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.n += len(b)
            return self.f.write(b)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr(D.Path, "open", lambda self, mode="r", *a, **k:
                        Full(real_open(self, mode, *a, **k)) if self.name.endswith(".part") else
                        real_open(self, mode, *a, **k))
    with pytest.raises(D.DownloadError, match="disk full.*f.bin.part"):
        D.fetch(f"{url}/f", tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin.part").exists() and not (tmp_path / "f.bin").exists()


def _tgz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for n, b in files.items():
            info = tarfile.TarInfo(n)
            info.size = len(b)
            t.addfile(info, io.BytesIO(b))
    return buf.getvalue()


def test_download_extracts_with_manifest_and_skips_when_complete(server, tmp_path):
    url, st = server
    st["body"] = _tgz({"CXR1_1_IM-0001-4001.png": b"png1", "sub/CXR2_IM-0652-1001.png": b"png2"})
    out = D.download(["images"], tmp_path, {"images": f"{url}/NLMCXR_png.tgz"}, progress=False)
    folder = tmp_path / "openi" / "images"
    assert out["images"] == str(folder) and (folder / "CXR1_1_IM-0001-4001.png").read_bytes() == b"png1"
    assert (folder / "manifest.json").is_file()
    n = len(st["requests"])
    D.download(["images"], tmp_path, {"images": f"{url}/NLMCXR_png.tgz"}, progress=False)
    assert len(st["requests"]) == n  # already complete: nothing fetched


def test_truncated_archive_is_named(tmp_path):
    bad = tmp_path / "a.tgz"
    bad.write_bytes(_tgz({"x.png": b"1" * 5000})[:60])
    with pytest.raises(D.DownloadError, match="a.tgz is not a complete archive"):
        D.extract(bad, tmp_path / "out", progress=False)


def test_unknown_source_is_named():
    with pytest.raises(ValueError, match="unknown source"):
        D.download(["imgs"])


# --- bullet 2: ranges, origins, pinned sizes, refused members -------------------------------


def _partial(tmp_path, data: bytes, url: str | None, etag: str | None = None):
    """A partial download as an earlier run would have left it (origin record beside it)."""
    (tmp_path / "f.bin.part").write_bytes(data)
    if url is not None:
        (tmp_path / "f.bin.part.json").write_text(json.dumps({"url": url, "etag": etag}))


def test_partial_larger_than_remote_is_discarded_not_taken_as_complete(server, tmp_path):
    url, st = server
    st["etag"] = '"v1"'
    _partial(tmp_path, PAYLOAD + b"junk" * 1000, f"{url}/f", etag='"v1"')  # 416: the range starts past the end
    p = D.fetch(f"{url}/f", tmp_path / "f.bin", progress=False, backoff=0.01)
    assert p.read_bytes() == PAYLOAD
    assert st["requests"][0] == f"bytes={len(PAYLOAD) + 4000}-" and st["requests"][1] is None


def test_partial_equal_to_remote_is_complete_after_416(server, tmp_path):
    url, st = server
    st["etag"] = '"v1"'
    _partial(tmp_path, PAYLOAD, f"{url}/f", etag='"v1"')
    assert D.fetch(f"{url}/f", tmp_path / "f.bin", SHA, progress=False).read_bytes() == PAYLOAD
    assert st["requests"] == [f"bytes={len(PAYLOAD)}-"]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f.bin"]


@pytest.mark.parametrize("origin", ["http://elsewhere.invalid/f", None])
def test_partial_from_another_url_or_unknown_origin_is_not_spliced(server, tmp_path, origin):
    url, st = server
    _partial(tmp_path, b"X" * 5000, origin)
    assert D.fetch(f"{url}/f", tmp_path / "f.bin", progress=False).read_bytes() == PAYLOAD
    assert st["requests"] == [None]  # started from byte 0


@pytest.mark.parametrize("ignore_if_range", [False, True])
def test_changed_remote_file_restarts(server, tmp_path, ignore_if_range):
    url, st = server
    st.update(etag='"v2"', ignore_if_range=ignore_if_range)
    _partial(tmp_path, b"Y" * 5000, f"{url}/f", etag='"v1"')
    assert D.fetch(f"{url}/f", tmp_path / "f.bin", progress=False, backoff=0.01).read_bytes() == PAYLOAD


def test_206_not_continuing_the_partial_file_restarts(server, tmp_path):
    url, st = server
    st.update(mode="reset", faults=1, wrong_range=True, etag='"v1"')
    assert D.fetch(f"{url}/f", tmp_path / "f.bin", SHA, progress=False, backoff=0.01).read_bytes() == PAYLOAD
    assert st["requests"][1].startswith("bytes=") and st["requests"][2] is None


def test_resume_sends_the_etag_as_if_range(server, tmp_path):
    url, st = server
    st.update(etag='"v1"', mode="reset", faults=1)
    assert D.fetch(f"{url}/f", tmp_path / "f.bin", SHA, progress=False, backoff=0.01).read_bytes() == PAYLOAD
    assert st["requests"][1].startswith("bytes=")


def test_pinned_size_mismatch_is_refused(server, tmp_path):
    url, st = server
    with pytest.raises(D.DownloadError, match=f"{len(PAYLOAD)} bytes, expected {len(PAYLOAD) + 1}"):
        D.fetch(f"{url}/f", tmp_path / "f.bin", progress=False, size=len(PAYLOAD) + 1)
    assert not (tmp_path / "f.bin").exists()


def test_every_source_documents_its_checksum():
    for s in D.SOURCES.values():
        assert s.sha256 or "checksum" in s.note, s.name


def test_tar_member_leaving_the_folder_is_refused_by_name(tmp_path):
    bad = tmp_path / "a.tgz"
    bad.write_bytes(_tgz({"ok.png": b"1", "../evil.png": b"2"}))
    with pytest.raises(D.DownloadError, match=r"refused to extract member '\.\./evil\.png'.*outside"):
        D.extract(bad, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.png").exists()
    assert not (tmp_path / "out.extracting").exists()


def test_absolute_member_is_refused_by_name(tmp_path):
    """As the docstring says: an absolute member stops the extraction, nothing is written."""
    (tmp_path / "a.tgz").write_bytes(_tgz({"ok.png": b"1", "/abs/x.png": b"2"}))
    with pytest.raises(D.DownloadError, match=r"refused to extract member '/abs/x\.png' \(an absolute path\)"):
        D.extract(tmp_path / "a.tgz", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.extracting").exists()


def test_links_are_not_extracted_and_listed(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        info = tarfile.TarInfo("a.png")
        info.size = 1
        t.addfile(info, io.BytesIO(b"1"))
        link = tarfile.TarInfo("l.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(link)
    (tmp_path / "a.tgz").write_bytes(buf.getvalue())
    out = D.extract(tmp_path / "a.tgz", tmp_path / "out", progress=False)
    man = json.loads((out / "manifest.json").read_text())
    assert man["files"] == ["a.png"] and man["refused"] == ["l.png (symlink)"]


def test_garbage_record_is_ignored_with_a_warning(server, tmp_path):
    from helpers.storage import CacheMissWarning

    url, st = server
    st["body"] = _tgz({"CXR1_1_IM-0001-4001.png": b"png1"})
    (tmp_path / "downloads.json").write_bytes(b"\x00garbage")
    with pytest.warns(CacheMissWarning, match="downloads.json"):
        D.download(["images"], tmp_path, {"images": f"{url}/x.tgz"}, progress=False)
    assert json.loads((tmp_path / "downloads.json").read_text())["images"]["bytes"] == len(st["body"])


def test_cli_errors_are_one_line(capsys):
    assert D.main(["imgs"]) == 1
    assert D.main(["--url", "no-equals-sign"]) == 1
    assert D.main(["--sha256", "images=abc"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "imgs" in err[0] and "NAME=VALUE" in err[1] and "64 hex" in err[2]
