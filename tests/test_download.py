"""Downloads against a loopback HTTP server that injects faults. Nothing outside 127.0.0.1."""

import errno
import hashlib
import http.server
import io
import tarfile
import threading

import numpy as np
import pytest

from helpers import download as D

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
        body = st.get("body", PAYLOAD)
        start = 0
        rng = self.headers.get("Range")
        if rng and st.get("ranges", True):
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
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
        self.wfile.write(rest)


@pytest.fixture
def server():
    Handler.state = {"requests": []}
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
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
    st.update(mode="reset", faults=2)
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
