"""Downloads for the ``full`` profile that survive faults: ``python -m helpers.download``.

Every source is listed once in :data:`SOURCES` (URL, optional SHA-256, where it goes, what to
extract); a URL can be overridden with ``--url NAME=URL`` or the environment variable
``IUXRAY_URL_<NAME>`` (e.g. a mirror). A fetch

* resumes a partial file (``<dest>.part``) with an HTTP ``Range`` request, also after a
  connection reset mid-transfer (retries with exponential backoff);
* detects a truncated body (fewer bytes than the server announced) and retries, then fails;
* verifies the SHA-256 when one is known (a mismatch deletes the partial file and fails; nothing
  is left that looks complete), and records the hash in ``downloads.json`` either way;
* renames the finished file into place atomically, so a file at its final path is complete;
* is skipped when the final file is already there (and matches its recorded hash).

Archives are extracted into the data directory (``--data-dir``, default ``IUXRAY_DATA_DIR``)
with a manifest; images already on disk can be used instead (point the ``full`` chapters at them
with ``-p image_dir ...``, no download needed).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import IncompleteRead
from pathlib import Path
from typing import Sequence

from .config import data_dir
from .io import atomic_write_json


@dataclass(frozen=True)
class Source:
    """One downloadable file. ``dest`` and ``extract_to`` are relative to the data directory."""

    name: str
    url: str
    dest: str
    sha256: str | None = None
    extract_to: str | None = None
    note: str = ""


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("images", "https://openi.nlm.nih.gov/imgs/collections/NLMCXR_png.tgz", "openi/NLMCXR_png.tgz",
           extract_to="openi/images", note="IU-Xray (Open-I) chest X-ray PNGs, about 1.3 GB"),
    Source("reports", "https://openi.nlm.nih.gov/imgs/collections/NLMCXR_reports.tgz", "openi/NLMCXR_reports.tgz",
           extract_to="openi/reports", note="the 3,955 report XMLs (also shipped inside torchxrayvision)"),
    Source("weights", "https://huggingface.co/microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224/resolve/main/"
           "open_clip_pytorch_model.bin", "models/biomedclip/open_clip_pytorch_model.bin",
           note="BiomedCLIP weights, for offline sites (with config below; load_model('biomedclip') "
                "fetches them itself where the hub is reachable)"),
    Source("config", "https://huggingface.co/microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224/resolve/main/"
           "open_clip_config.json", "models/biomedclip/open_clip_config.json", note="BiomedCLIP's open_clip config"),
)}


class DownloadError(RuntimeError):
    """A download that could not complete; the message names the URL or file and the fix."""


def _url(src: Source, overrides: dict[str, str]) -> str:
    return overrides.get(src.name) or os.environ.get(f"IUXRAY_URL_{src.name.upper()}") or src.url


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Full hex SHA-256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for b in iter(lambda: f.read(chunk), b""):
            h.update(b)
    return h.hexdigest()


def _open(url: str, start: int, timeout: float):
    req = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    return urllib.request.urlopen(req, timeout=timeout)


def fetch(url: str, dest: str | os.PathLike, sha256: str | None = None, retries: int = 5, backoff: float = 0.5,
          timeout: float = 30.0, chunk: int = 1 << 16, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` with resume, retries, truncation and checksum checks.

    Returns the final path. Raises :class:`DownloadError` naming the URL (HTTP errors, too many
    failures, wrong checksum, disk full).
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_err: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        start = part.stat().st_size if part.exists() else 0
        try:
            resp = _open(url, start, timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and start:  # range past the end: the partial file is already whole
                break
            if 400 <= e.code < 500:
                raise DownloadError(f"HTTP {e.code} ({e.reason}) for {url}: check the URL (override it with "
                                    f"--url NAME=URL or IUXRAY_URL_<NAME>)") from None
            last_err = e
            continue
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            last_err = e
            continue
        with resp:
            if start and resp.status != 206:  # server ignored the range: start again
                start = 0
            length = resp.headers.get("Content-Length")
            total = start + int(length) if length is not None else None
            mode = "ab" if start else "wb"
            got = start
            try:
                with part.open(mode) as f, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                                desc=dest.name, disable=not progress) as bar:
                    while True:
                        b = resp.read(chunk)
                        if not b:
                            break
                        f.write(b)
                        got += len(b)
                        bar.update(len(b))
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise DownloadError(f"disk full while writing {part} (from {url}); free space and run "
                                        f"`python -m helpers.download` again: it resumes from "
                                        f"{got} bytes") from None
                if not isinstance(e, (ConnectionError, TimeoutError)):
                    raise
                last_err = e
                continue
            except IncompleteRead as e:
                last_err = e
                continue
            if total is not None and got < total:
                last_err = DownloadError(f"truncated body: {got} of {total} bytes")
                continue
            break
    else:
        raise DownloadError(f"could not download {url} after {retries + 1} attempts ({last_err}); the partial "
                            f"file {part} is kept: run `python -m helpers.download` again to resume")
    if sha256:
        actual = sha256_of(part)
        if actual != sha256.lower():
            part.unlink(missing_ok=True)
            raise DownloadError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual}; the "
                                f"download was deleted. Re-run to fetch it again, or check the mirror")
    os.replace(part, dest)
    return dest


def extract(archive: Path, out_dir: Path, progress: bool = True) -> Path:
    """Extract a tar archive into ``out_dir`` atomically (temp folder + rename) with a manifest
    ``out_dir/manifest.json`` (archive hash, file list). Skipped when the manifest matches."""
    from tqdm.auto import tqdm

    manifest = out_dir / "manifest.json"
    digest = sha256_of(archive)
    if manifest.is_file() and json.loads(manifest.read_text()).get("archive_sha256") == digest:
        return out_dir
    tmp = out_dir.with_name(out_dir.name + ".extracting")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(archive) as t:
            members = [m for m in t.getmembers() if m.isfile()]
            for m in tqdm(members, desc=f"extract {archive.name}", disable=not progress):
                t.extract(m, tmp, filter="data")
    except (tarfile.TarError, EOFError) as e:
        raise DownloadError(f"{archive} is not a complete archive ({e}); delete it and run "
                            f"`python -m helpers.download` again") from None
    files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    atomic_write_json(manifest, {"archive": archive.name, "archive_sha256": digest, "n_files": len(files),
                                 "files": files})
    return out_dir


def download(names: Sequence[str], root: Path | None = None, overrides: dict[str, str] | None = None,
             progress: bool = True, **fetch_kw) -> dict[str, str]:
    """Fetch (and extract) the named sources into ``root``; returns name -> final path.

    Hashes of completed files are recorded in ``root/downloads.json``; a file already present
    whose hash matches the record (or the configured hash) is not fetched again.
    """
    root = Path(root) if root else data_dir()
    overrides = overrides or {}
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise ValueError(f"unknown source(s) {unknown}; valid: {', '.join(SOURCES)}")
    record_path = root / "downloads.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    out = {}
    for n in names:
        src = SOURCES[n]
        dest = root / src.dest
        want = src.sha256 or record.get(n, {}).get("sha256")
        if not (dest.is_file() and want and sha256_of(dest) == want):
            fetch(_url(src, overrides), dest, src.sha256, progress=progress, **fetch_kw)
            record[n] = {"url": _url(src, overrides), "sha256": sha256_of(dest), "bytes": dest.stat().st_size}
            atomic_write_json(record_path, record)
        out[n] = str(dest)
        if src.extract_to:
            out[n] = str(extract(dest, root / src.extract_to, progress))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.download", description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", default=["images"], help=f"sources: {', '.join(SOURCES)} (default images)")
    ap.add_argument("--data-dir", type=Path, default=None, help="where to put them (default IUXRAY_DATA_DIR)")
    ap.add_argument("--url", action="append", default=[], metavar="NAME=URL", help="override a source's URL")
    ap.add_argument("--list", action="store_true", help="list the sources and exit")
    a = ap.parse_args(argv)
    if a.list:
        for s in SOURCES.values():
            print(f"{s.name:8s} {s.url}\n         -> {s.dest}  {s.note}")
        return 0
    try:
        overrides = dict(u.split("=", 1) for u in a.url)
        for k, v in download(a.names, a.data_dir, overrides).items():
            print(f"{k}: {v}")
    except (DownloadError, ValueError) as e:
        print(f"error: {e}", file=__import__("sys").stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
