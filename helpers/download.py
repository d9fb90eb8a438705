"""Downloads for the ``full`` profile that survive faults: ``python -m helpers.download``.

Every source is listed once in :data:`SOURCES` (URL, pinned SHA-256 and size where they are
known, where it goes, what to extract); a URL can be overridden with ``--url NAME=URL`` or the
environment variable ``IUXRAY_URL_<NAME>`` (e.g. a mirror), a checksum pinned with
``--sha256 NAME=HEX``. A fetch

* resumes a partial file (``<dest>.part``) with an HTTP ``Range`` request, also after a
  connection reset mid-transfer (retries with exponential backoff). The URL and the server's
  ``ETag`` are stored beside it (``<dest>.part.json``); a partial file from another URL, of
  another version of the file (ETag changed, sent as ``If-Range``) or of unknown origin is
  discarded, never spliced;
* checks every ``206`` answer's ``Content-Range`` (it must start where the partial file ends)
  and every ``416`` answer's (the partial file is complete only when its size equals the
  remote size; a larger or unrelated partial file is discarded and fetched again);
* detects a truncated body (fewer bytes than the server announced) and retries, then fails;
* checks the size and SHA-256 when they are known (a mismatch deletes the partial file and
  fails; nothing is left that looks complete), and records the hash in ``downloads.json``;
* renames the finished file into place atomically, so a file at its final path is complete;
* is skipped when the final file is already there and matches its pinned or recorded hash.

Checksums: neither Open-I (``images``, ``reports``) nor the Hugging Face hub (``weights``,
``config``, served from the repository's moving ``main`` branch) publishes a fixed checksum, so
none is pinned here: the first complete download's SHA-256 and size are recorded in
``downloads.json`` (shown by ``--list``) and every later run checks the file against that record.
Pin a value you trust with ``--sha256 NAME=HEX``.

Archives are extracted into the data directory (``--data-dir``, default ``IUXRAY_DATA_DIR``)
with a manifest; members that would land outside the folder, links and device files are refused
by name. Images already on disk can be used instead: put them in ``data/openi/images/`` (or
set ``IUXRAY_DATA_DIR``), no download needed.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import os
import re
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException, IncompleteRead
from pathlib import Path
from typing import Sequence

from .config import data_dir
from .io import atomic_write_json, read_json_cache


@dataclass(frozen=True)
class Source:
    """One downloadable file. ``dest`` and ``extract_to`` are relative to the data directory;
    ``sha256`` and ``size`` (bytes) are pinned where published (``None``: see the module doc)."""

    name: str
    url: str
    dest: str
    sha256: str | None = None
    size: int | None = None
    extract_to: str | None = None
    note: str = ""


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("images", "https://openi.nlm.nih.gov/imgs/collections/NLMCXR_png.tgz", "openi/NLMCXR_png.tgz",
           extract_to="openi/images",
           note="IU-Xray (Open-I) chest X-ray PNGs, about 1.3 GB; checksum not published"),
    Source("reports", "https://openi.nlm.nih.gov/imgs/collections/NLMCXR_reports.tgz", "openi/NLMCXR_reports.tgz",
           extract_to="openi/reports",
           note="the 3,955 report XMLs (also shipped inside torchxrayvision); checksum not published"),
    Source("weights", "https://huggingface.co/microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224/resolve/main/"
           "open_clip_pytorch_model.bin", "models/biomedclip/open_clip_pytorch_model.bin",
           note="BiomedCLIP weights, for offline sites (with config below; load_model('biomedclip') "
                "fetches them itself where the hub is reachable); served from the hub's moving main branch, "
                "no fixed checksum"),
    Source("config", "https://huggingface.co/microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224/resolve/main/"
           "open_clip_config.json", "models/biomedclip/open_clip_config.json",
           note="BiomedCLIP's open_clip config (hub main branch, no fixed checksum)"),
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


def _open(url: str, start: int, timeout: float, etag: str | None = None):
    headers = {}
    if start:
        headers["Range"] = f"bytes={start}-"
        if etag:
            headers["If-Range"] = etag  # a changed file comes back whole (200), never spliced
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


_RANGE_RE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


def parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """``Content-Range`` -> (first byte, last byte, total size); ``None`` for what is absent or
    ``*``. ``bytes 100-199/1000`` -> (100, 199, 1000); ``bytes */1000`` -> (None, None, 1000)."""
    m = _RANGE_RE.fullmatch((value or "").strip())
    if not m:
        return None, None, None
    first, last, total = m.groups()
    return (int(first) if first else None, int(last) if last else None,
            int(total) if total and total != "*" else None)


class _Restart(Exception):
    """The partial file cannot be continued: discard it and fetch from byte 0."""


class _Part:
    """A partial download ``<dest>.part`` and its origin record ``<dest>.part.json``
    (url, etag): a partial file is only resumed from the URL (and ETag) that produced it."""

    def __init__(self, dest: Path, url: str):
        self.path = dest.with_name(dest.name + ".part")
        self.meta = dest.with_name(dest.name + ".part.json")
        self.url = url
        self.etag: str | None = None
        if self.path.exists():
            rec = read_json_cache(self.meta) or {}
            if rec.get("url") != url:
                why = "from another URL" if rec.get("url") else "of unknown origin"
                print(f"note: discarding {self.path} ({why}; now fetching {url})", file=sys.stderr)
                self.discard()
            else:
                self.etag = rec.get("etag")

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)
        self.etag = None

    def begin(self, etag: str | None) -> None:
        self.etag = etag
        atomic_write_json(self.meta, {"url": self.url, "etag": etag})


def _check_answer(resp, start: int, part: _Part, size: int | None, url: str) -> tuple[int, int | None]:
    """Where the body of ``resp`` starts in the file and the file's total size (or None).

    Raises :class:`_Restart` when a 206 does not continue the partial file or its ETag changed,
    :class:`DownloadError` when the remote size differs from the pinned one."""
    etag = resp.headers.get("ETag")
    length = resp.headers.get("Content-Length")
    if start and resp.status == 206:
        first, _, total = parse_content_range(resp.headers.get("Content-Range"))
        if first != start:
            raise _Restart(f"the server answered bytes from {first} to a request from {start}")
        if part.etag and etag and etag != part.etag:
            raise _Restart(f"the remote file changed (ETag {part.etag} -> {etag})")
        offset = start
        total = total if total is not None else (start + int(length) if length is not None else None)
    else:  # 200: the whole file (no range asked, ranges unsupported, or If-Range says it changed)
        offset, total = 0, int(length) if length is not None else None
    if size is not None and total is not None and total != size:
        raise DownloadError(f"{url} is {total} bytes, expected {size}: not the pinned file; check the URL "
                            f"(--url NAME=URL or IUXRAY_URL_<NAME>)")
    if offset == 0:
        part.begin(etag)
    return offset, total


def _body(resp, part: _Part, offset: int, total: int | None, url: str, chunk: int, bar_kw: dict) -> int:
    """Write the response body after ``offset`` bytes of the partial file; returns bytes on disk."""
    from tqdm.auto import tqdm

    got = offset
    try:
        with part.path.open("ab" if offset else "wb") as f, tqdm(total=total, initial=offset, **bar_kw) as bar:
            while b := resp.read(chunk):
                f.write(b)
                got += len(b)
                bar.update(len(b))
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DownloadError(f"disk full while writing {part.path} (from {url}); free space and run "
                                f"`python -m helpers.download` again: it resumes from {got} bytes") from None
        raise
    return got


def fetch(url: str, dest: str | os.PathLike, sha256: str | None = None, retries: int = 5, backoff: float = 0.5,
          timeout: float = 30.0, chunk: int = 1 << 16, progress: bool = True, size: int | None = None) -> Path:
    """Download ``url`` to ``dest`` with resume, retries, range, truncation, size and checksum checks.

    Returns the final path. Raises :class:`DownloadError` naming the URL (HTTP errors, too many
    failures, wrong size or checksum, disk full).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _Part(dest, url)
    bar_kw = dict(unit="B", unit_scale=True, desc=dest.name, disable=not progress)
    last_err: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        start = part.size
        try:
            with _open(url, start, timeout, part.etag) as resp:
                offset, total = _check_answer(resp, start, part, size, url)
                got = _body(resp, part, offset, total, url, chunk, bar_kw)
            if total is not None and got < total:
                last_err = DownloadError(f"truncated body: {got} of {total} bytes")
                continue
            break
        except urllib.error.HTTPError as e:
            if e.code == 416 and start:
                _, _, remote = parse_content_range(e.headers.get("Content-Range"))
                if remote == start and (size is None or size == remote):
                    break  # the partial file already holds the whole remote file
                last_err = _Restart(f"HTTP 416: the partial file has {start} bytes, the remote file "
                                    f"{remote if remote is not None else 'an unknown number of'}")
                part.discard()
                continue
            if 400 <= e.code < 500:
                raise DownloadError(f"HTTP {e.code} ({e.reason}) for {url}: check the URL (override it with "
                                    f"--url NAME=URL or IUXRAY_URL_<NAME>)") from None
            last_err = e
        except _Restart as e:
            print(f"note: discarding {part.path}: {e}; fetching it again from the start", file=sys.stderr)
            part.discard()
            last_err = e
        except (urllib.error.URLError, ConnectionError, TimeoutError, IncompleteRead, HTTPException) as e:
            last_err = e
        except OSError as e:
            if isinstance(e, DownloadError):
                raise
            last_err = e
    else:
        raise DownloadError(f"could not download {url} after {retries + 1} attempts ({last_err}); the partial "
                            f"file {part.path} is kept: run `python -m helpers.download` again to resume")
    _verify(part, url, sha256, size)
    os.replace(part.path, dest)
    part.meta.unlink(missing_ok=True)
    return dest


def _verify(part: _Part, url: str, sha256: str | None, size: int | None) -> None:
    """Check the finished partial file's size and SHA-256 against the pinned values."""
    if size is not None and part.size != size:
        got = part.size
        part.discard()
        raise DownloadError(f"size mismatch for {url}: expected {size} bytes, got {got}; the download was "
                            f"deleted. Re-run to fetch it again, or check the mirror")
    if sha256:
        actual = sha256_of(part.path)
        if actual != sha256.lower():
            part.discard()
            raise DownloadError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual}; the "
                                f"download was deleted. Re-run to fetch it again, or check the mirror")


def _members(t: tarfile.TarFile, archive: Path) -> tuple[list[tarfile.TarInfo], list[str]]:
    """Regular files to extract, and the names of members not extracted (links, devices, ...)."""
    files, skipped = [], []
    for m in t.getmembers():
        if m.isfile():
            files.append(m)
        elif not m.isdir():
            kind = "symlink" if m.issym() else "hard link" if m.islnk() else "special file"
            skipped.append(f"{m.name} ({kind})")
    return files, skipped


def extract(archive: Path, out_dir: Path, progress: bool = True) -> Path:
    """Extract a tar archive into ``out_dir`` atomically (temp folder + rename) with a manifest
    ``out_dir/manifest.json`` (archive hash, file list). Skipped when the manifest matches.

    Only regular files are extracted (links and special files are listed as refused in the
    manifest and on stderr). A member whose path would leave ``out_dir`` (absolute, ``..``) stops
    the extraction with a :class:`DownloadError` naming it."""
    from tqdm.auto import tqdm

    manifest = out_dir / "manifest.json"
    digest = sha256_of(archive)
    rec = read_json_cache(manifest)
    if rec is not None and rec.get("archive_sha256") == digest:
        return out_dir
    tmp = out_dir.with_name(out_dir.name + ".extracting")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(archive) as t:
            members, refused = _members(t, archive)
            for m in tqdm(members, desc=f"extract {archive.name}", disable=not progress):
                try:
                    t.extract(m, tmp, filter="data")
                except tarfile.FilterError as e:
                    raise DownloadError(f"{archive}: refused to extract member {m.name!r} ({e}); the archive "
                                        f"is not what was expected, check its source") from None
    except (tarfile.TarError, EOFError, OSError) as e:
        if isinstance(e, DownloadError):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise DownloadError(f"{archive} is not a complete archive ({type(e).__name__}: {e}); delete it and run "
                            f"`python -m helpers.download` again") from None
    except DownloadError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if refused:
        print(f"note: {archive}: {len(refused)} member(s) not extracted (only regular files are): "
              f"{', '.join(refused[:5])}{' ...' if len(refused) > 5 else ''}", file=sys.stderr)
    files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    atomic_write_json(manifest, {"archive": archive.name, "archive_sha256": digest, "n_files": len(files),
                                 "files": files, "refused": refused})
    return out_dir


def download(names: Sequence[str], root: Path | None = None, overrides: dict[str, str] | None = None,
             progress: bool = True, sha256: dict[str, str] | None = None, **fetch_kw) -> dict[str, str]:
    """Fetch (and extract) the named sources into ``root``; returns name -> final path.

    ``sha256`` pins checksums by name (over :data:`SOURCES`). Hashes and sizes of completed files
    are recorded in ``root/downloads.json`` (an unreadable record is ignored, with a warning);
    a file already present whose hash matches the pinned or recorded hash is not fetched again.
    """
    root = Path(root) if root else data_dir()
    overrides, pins = overrides or {}, {k: v.lower() for k, v in (sha256 or {}).items()}
    unknown = [n for n in [*names, *overrides, *pins] if n not in SOURCES]
    if unknown:
        raise ValueError(f"unknown source(s) {unknown}; valid: {', '.join(SOURCES)}")
    bad = [n for n, h in pins.items() if not re.fullmatch(r"[0-9a-f]{64}", h)]
    if bad:
        raise ValueError(f"--sha256 for {', '.join(bad)}: expected 64 hex digits")
    record_path = root / "downloads.json"
    record = read_json_cache(record_path) or {}
    out = {}
    for n in names:
        src = SOURCES[n]
        dest = root / src.dest
        pinned = pins.get(n) or src.sha256
        want = pinned or (record.get(n) or {}).get("sha256")
        if not (dest.is_file() and want and sha256_of(dest) == want):
            fetch(_url(src, overrides), dest, pinned, progress=progress, size=src.size, **fetch_kw)
            record[n] = {"url": _url(src, overrides), "sha256": sha256_of(dest), "bytes": dest.stat().st_size}
            atomic_write_json(record_path, record)
        out[n] = str(dest)
        if src.extract_to:
            out[n] = str(extract(dest, root / src.extract_to, progress))
    return out


def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for u in items:
        if "=" not in u:
            raise ValueError(f"{flag} {u!r}: expected NAME=VALUE, e.g. {flag} images=...")
        k, v = u.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m helpers.download`` (every option states its default)."""
    ap = argparse.ArgumentParser(prog="python -m helpers.download", description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", default=["images"],
                    help=f"sources to fetch: {', '.join(SOURCES)} (default: images)")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="where to put them (default: IUXRAY_DATA_DIR, else data/ in the repository)")
    ap.add_argument("--url", action="append", default=[], metavar="NAME=URL",
                    help="fetch a source from another URL, e.g. a mirror; repeatable (default: the URLs "
                         "of --list, or IUXRAY_URL_<NAME>)")
    ap.add_argument("--sha256", action="append", default=[], metavar="NAME=HEX",
                    help="pin a source's SHA-256; repeatable (default: none pinned, the first download's "
                         "hash is recorded in downloads.json and checked afterwards)")
    ap.add_argument("--retries", type=int, default=5, help="attempts after the first on a network fault (default: 5)")
    ap.add_argument("--list", action="store_true",
                    help="list the sources and what is recorded, then exit (default: off)")
    return ap


def _list(root: Path) -> None:
    record = read_json_cache(root / "downloads.json") or {}
    for s in SOURCES.values():
        pin = f"sha256 {s.sha256}" if s.sha256 else "sha256 not published (recorded on first download)"
        got = record.get(s.name) or {}
        seen = f"; recorded: {got.get('sha256')} ({got.get('bytes')} bytes)" if got else ""
        print(f"{s.name:8s} {_url(s, {})}\n         -> {s.dest}  {s.note}\n         {pin}{seen}")


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    root = a.data_dir or data_dir()
    try:
        if a.list:
            _list(root)
            return 0
        if a.retries < 0:
            raise ValueError(f"--retries {a.retries}: expected 0 or more")
        out = download(a.names, root, _pairs(a.url, "--url"), sha256=_pairs(a.sha256, "--sha256"),
                       retries=a.retries)
        for k, v in out.items():
            print(f"{k}: {v}")
    except (DownloadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e.filename or root}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
