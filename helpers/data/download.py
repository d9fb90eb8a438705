"""Downloads for the ``full`` profile that survive faults: ``python -m helpers.data.download``.

Every source is listed once in :data:`SOURCES` (URL, pinned SHA-256 and size where they are
known, where it goes, what to extract); a URL can be overridden with ``--url NAME=URL`` or the
environment variable ``IUXRAY_URL_<NAME>`` (e.g. a mirror), a checksum pinned with
``--sha256 NAME=HEX``. A fetch

* resumes a partial file (``<dest>.part``) with an HTTP ``Range`` request, also after a
  connection reset mid-transfer (retries with exponential backoff), but only when the file
  version that started it can be recognised: the URL and a *validator* are stored beside it
  (``<dest>.part.json``): the server's ``ETag``, or its ``Last-Modified`` date together with the
  file's total size. The validator is sent as ``If-Range`` and checked against the answer; a
  partial file from another URL, of another version of the file (validator changed), with no
  validator (a server that sends neither, or a record with ``etag: null``) or of unknown origin
  is discarded and fetched from byte 0, never spliced;
* checks every ``206`` answer's ``Content-Range`` (it must start where the partial file ends)
  and every ``416`` answer's (the partial file is complete only when its size equals the
  remote size; a larger or unrelated partial file is discarded and fetched again);
* detects a truncated body (fewer bytes than the server announced) and retries, then fails;
* stops at an overall deadline (``deadline`` seconds for the whole fetch, retries included;
  ``--deadline``), so a server that trickles bytes cannot keep it alive forever (the partial
  file is kept for the next run);
* checks the size and SHA-256 when they are known (a mismatch deletes the partial file and
  fails; nothing is left that looks complete), and records the hash in ``downloads.json``;
* renames the finished file into place atomically, so a file at its final path is complete;
* is skipped when the final file is already there and matches its pinned or recorded hash.

Checksums: neither Open-I (``images``, ``reports``) nor the Hugging Face hub (``weights``,
``config``, served from the repository's moving ``main`` branch) publishes a fixed checksum, so
none is pinned here: the first complete download's SHA-256 and size are recorded in
``downloads.json`` (shown by ``--list``) and **enforced** on every later run: a file that no
longer matches is fetched again and must match the record, and a remote file that changed is
refused, naming the record. ``--refresh NAME`` accepts the current remote file and records it
anew; ``--sha256 NAME=HEX`` pins a value you trust.

Archives are extracted into the data directory (``--data-dir``, default ``IUXRAY_DATA_DIR``)
with a manifest (``manifest.json``: the archive's hash and the files extraction wrote).
Extraction adds files to the folder and never removes or overwrites a file it did not write (a
reader's own PNGs in ``data/openi/images`` stay); a file of an earlier extraction that the new
archive no longer holds is removed. Absolute members, members that would land outside the
folder (``..``), links and device files are refused by name. Images already on disk can be
used instead: put them in ``data/openi/images/`` (or set ``IUXRAY_DATA_DIR``), no download
needed.
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

from helpers.config import data_dir
from helpers.storage import atomic_write_json, read_json_cache


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


DEFAULT_DEADLINE = 12 * 3600.0
"""Overall time limit of one fetch in seconds, retries included (``--deadline``): 12 hours, enough
for the 1.3 GB image archive at 30 KB/s; a partial file is kept and resumed by the next run."""


def _open(url: str, start: int, timeout: float, validator: str | None = None):
    headers = {}
    if start:
        headers["Range"] = f"bytes={start}-"
        if validator:
            headers["If-Range"] = validator  # a changed file comes back whole (200), never spliced
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
    (url, etag, last_modified, total): a partial file is only resumed from the URL that produced
    it and only with a validator, its ETag or its Last-Modified date plus total size."""

    def __init__(self, dest: Path, url: str):
        self.path = dest.with_name(dest.name + ".part")
        self.meta = dest.with_name(dest.name + ".part.json")
        self.url = url
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.total: int | None = None
        if self.path.exists():
            rec = read_json_cache(self.meta) or {}
            if rec.get("url") != url:
                why = "from another URL" if rec.get("url") else "of unknown origin"
                print(f"note: discarding {self.path} ({why}; now fetching {url})", file=sys.stderr)
                self.discard()
            else:
                self.etag, self.last_modified = rec.get("etag"), rec.get("last_modified")
                self.total = rec.get("total") if isinstance(rec.get("total"), int) else None
                if not self.validator:
                    print(f"note: discarding {self.path} (no ETag, nor Last-Modified with a total size, "
                          f"recorded: its file version cannot be checked; fetching {url} from the start)",
                          file=sys.stderr)
                    self.discard()

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    @property
    def validator(self) -> str | None:
        """What ``If-Range`` carries: the ETag, else the Last-Modified date when the total size is
        known too; ``None`` when the file version cannot be recognised (no resume then)."""
        if self.etag:
            return self.etag
        if self.last_modified and self.total is not None:
            return self.last_modified
        return None

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)
        self.etag = self.last_modified = self.total = None

    def begin(self, etag: str | None, last_modified: str | None, total: int | None) -> None:
        self.etag, self.last_modified, self.total = etag, last_modified, total
        atomic_write_json(self.meta, {"url": self.url, "etag": etag, "last_modified": last_modified,
                                      "total": total})

    def same_version(self, headers) -> str | None:
        """Why an answer's headers show another file version than the partial file's, or None."""
        etag, modified = headers.get("ETag"), headers.get("Last-Modified")
        if self.etag:
            if etag != self.etag:
                return f"the remote file changed (ETag {self.etag} -> {etag})"
        elif modified != self.last_modified:
            return f"the remote file changed (Last-Modified {self.last_modified} -> {modified})"
        return None


def _check_answer(resp, start: int, part: _Part, size: int | None, url: str,
                  what: str = "pinned") -> tuple[int, int | None]:
    """Where the body of ``resp`` starts in the file and the file's total size (or None).

    Raises :class:`_Restart` when a 206 does not continue the partial file or its validator
    changed, :class:`DownloadError` when the remote size differs from the pinned or recorded one."""
    length = resp.headers.get("Content-Length")
    if start and resp.status == 206:
        first, _, total = parse_content_range(resp.headers.get("Content-Range"))
        if first != start:
            raise _Restart(f"the server answered bytes from {first} to a request from {start}")
        changed = part.same_version(resp.headers)
        if changed:
            raise _Restart(changed)
        total = total if total is not None else (start + int(length) if length is not None else None)
        if part.total is not None and total != part.total:
            raise _Restart(f"the remote file's size changed ({part.total} -> {total} bytes)")
        offset = start
    else:  # 200: the whole file (no range asked, ranges unsupported, or If-Range says it changed)
        offset, total = 0, int(length) if length is not None else None
    if size is not None and total is not None and total != size:
        raise DownloadError(f"{url} is {total} bytes, expected {size} ({what}): not the same file; check the "
                            f"URL (--url NAME=URL or IUXRAY_URL_<NAME>)"
                            + ("" if what == "pinned" else ", or accept the changed file with --refresh NAME"))
    if offset == 0:
        part.begin(resp.headers.get("ETag"), resp.headers.get("Last-Modified"), total)
    return offset, total


class _Deadline(Exception):
    """The fetch ran past its overall deadline."""


def _body(resp, part: _Part, offset: int, total: int | None, url: str, chunk: int, bar_kw: dict,
          t_end: float) -> int:
    """Write the response body after ``offset`` bytes of the partial file; returns bytes on disk.

    Reads what has arrived (``read1``), so the deadline ``t_end`` (``time.monotonic()``) is
    checked after every read, however slowly the server sends."""
    from tqdm.auto import tqdm

    got = offset
    read = getattr(resp, "read1", resp.read)
    try:
        with part.path.open("ab" if offset else "wb") as f, tqdm(total=total, initial=offset, **bar_kw) as bar:
            while b := read(chunk):
                f.write(b)
                got += len(b)
                bar.update(len(b))
                if time.monotonic() > t_end:
                    raise _Deadline(got)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DownloadError(f"disk full while writing {part.path} (from {url}); free space and run "
                                f"`python -m helpers.data.download` again: it resumes from {got} bytes") from None
        raise
    return got


def fetch(url: str, dest: str | os.PathLike, sha256: str | None = None, retries: int = 5, backoff: float = 0.5,
          timeout: float = 30.0, chunk: int = 1 << 16, progress: bool = True, size: int | None = None,
          deadline: float | None = DEFAULT_DEADLINE, what: str = "pinned") -> Path:
    """Download ``url`` to ``dest`` with resume, retries, range, truncation, size and checksum checks.

    ``timeout``: seconds one network read may wait; ``deadline``: seconds the whole fetch may take,
    retries and backoff included (``None``: no limit). ``what`` names where ``sha256`` and ``size``
    come from in messages (``pinned`` or ``recorded``).

    Returns the final path. Raises :class:`DownloadError` naming the URL (HTTP errors, too many
    failures, the deadline, wrong size or checksum, disk full).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _Part(dest, url)
    bar_kw = dict(unit="B", unit_scale=True, desc=dest.name, disable=not progress)
    t_end = time.monotonic() + (deadline if deadline is not None else float("inf"))

    def too_late(got: int) -> DownloadError:
        return DownloadError(f"the download of {url} ran past its deadline of {deadline:g} s ({got} bytes "
                             f"so far, kept in {part.path}): the server is too slow or stalled; run "
                             f"`python -m helpers.data.download` again to resume, or allow more time with "
                             f"--deadline SECONDS")

    last_err: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            pause = backoff * 2 ** (attempt - 1)
            if time.monotonic() + pause > t_end:
                raise too_late(part.size)
            time.sleep(pause)
        if part.size and not part.validator:  # nothing to recognise the file version by: no splice
            part.discard()
        start = part.size
        remaining = t_end - time.monotonic()
        if remaining <= 0:
            raise too_late(start)
        try:
            with _open(url, start, min(timeout, remaining), part.validator) as resp:
                offset, total = _check_answer(resp, start, part, size, url, what)
                got = _body(resp, part, offset, total, url, chunk, bar_kw, t_end)
            if total is not None and got < total:
                last_err = DownloadError(f"truncated body: {got} of {total} bytes")
                continue
            break
        except _Deadline as e:
            raise too_late(e.args[0]) from None
        except urllib.error.HTTPError as e:
            if e.code == 416 and start:
                last_err = _after_416(e, start, part, size)
                if last_err is None:
                    break  # the partial file already holds the whole remote file
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
        if time.monotonic() > t_end:
            raise too_late(part.size)
    else:
        raise DownloadError(f"could not download {url} after {retries + 1} attempts ({last_err}); the partial "
                            f"file {part.path} is kept: run `python -m helpers.data.download` again to resume")
    _verify(part, url, sha256, size, what)
    os.replace(part.path, dest)
    part.meta.unlink(missing_ok=True)
    return dest


def _after_416(e: urllib.error.HTTPError, start: int, part: _Part, size: int | None) -> _Restart | None:
    """``None`` when a 416 answer to a resume from ``start`` shows that the partial file is the whole
    remote file (same size, same version, the expected size); else why it must be fetched again."""
    _, _, remote = parse_content_range(e.headers.get("Content-Range"))
    changed = part.same_version(e.headers) if (e.headers.get("ETag") or e.headers.get("Last-Modified")) else None
    if remote == start and not changed and part.total in (None, remote) and size in (None, remote):
        return None
    return _Restart(f"HTTP 416: the partial file has {start} bytes, the remote file "
                    f"{remote if remote is not None else 'an unknown number of'}")


def _verify(part: _Part, url: str, sha256: str | None, size: int | None, what: str = "pinned") -> None:
    """Check the finished partial file's size and SHA-256 against the pinned (or recorded) values."""
    hint = ("Re-run to fetch it again, or check the mirror" if what == "pinned" else
            "if the source changed on purpose, accept the new file with --refresh NAME; otherwise check "
            "the URL or mirror")
    if size is not None and part.size != size:
        got = part.size
        part.discard()
        raise DownloadError(f"size mismatch for {url}: expected {size} bytes ({what}), got {got}; the "
                            f"download was deleted. {hint}")
    if sha256:
        actual = sha256_of(part.path)
        if actual != sha256.lower():
            part.discard()
            raise DownloadError(f"checksum mismatch for {url}: expected sha256 {sha256} ({what}), got {actual}; "
                                f"the download was deleted. {hint}")


def _members(t: tarfile.TarFile, archive: Path) -> tuple[list[tarfile.TarInfo], list[str]]:
    """Regular files to extract, and the names of members not extracted (links, devices, ...).

    Raises :class:`DownloadError` naming the first member whose path is absolute or leaves the
    folder (``..``), before anything is extracted."""
    files, skipped = [], []
    for m in t.getmembers():
        name = m.name.replace("\\", "/")
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in name.split("/"):
            why = "an absolute path" if not ".." in name.split("/") else "a path outside the folder ('..')"
            raise DownloadError(f"{archive}: refused to extract member {m.name!r} ({why}); the archive is not "
                                f"what was expected, check its source")
        if m.isfile():
            files.append(m)
        elif not m.isdir():
            kind = "symlink" if m.issym() else "hard link" if m.islnk() else "special file"
            skipped.append(f"{m.name} ({kind})")
    return files, skipped


def extract(archive: Path, out_dir: Path, progress: bool = True) -> Path:
    """Extract a tar archive into ``out_dir`` with a manifest ``out_dir/manifest.json`` (archive
    hash, the files this extraction wrote). Skipped when a complete manifest matches the archive.

    Each member is extracted into a temporary folder beside ``out_dir`` and renamed into place, so
    a file in ``out_dir`` is complete. Files already in ``out_dir`` that no extraction wrote (a
    reader's own images) are never removed or overwritten: they are listed as ``kept`` in the
    manifest, with a note when they differ from the archive's member. A file an earlier extraction
    wrote (listed in its manifest, complete or interrupted) that the new archive does not hold is
    removed.

    Only regular files are extracted (links and special files are listed as refused in the
    manifest and on stderr). A member whose path is absolute or would leave ``out_dir`` (``..``)
    stops the extraction with a :class:`DownloadError` naming it, before any file is written."""
    from tqdm.auto import tqdm

    manifest = out_dir / "manifest.json"
    digest = sha256_of(archive)
    rec = read_json_cache(manifest) or {}
    if rec.get("archive_sha256") == digest and rec.get("complete", True):
        return out_dir
    ours = {str(f) for f in rec.get("files", []) if isinstance(f, str)}
    tmp = out_dir.with_name(out_dir.name + ".extracting")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        try:
            with tarfile.open(archive) as t:
                members, refused = _members(t, archive)
                for m in tqdm(members, desc=f"extract {archive.name}", disable=not progress):
                    try:
                        t.extract(m, tmp, filter="data")
                    except tarfile.FilterError as e:
                        raise DownloadError(f"{archive}: refused to extract member {m.name!r} ({e}); the "
                                            f"archive is not what was expected, check its source") from None
        except (tarfile.TarError, EOFError, OSError) as e:
            if isinstance(e, DownloadError):
                raise
            raise DownloadError(f"{archive} is not a complete archive ({type(e).__name__}: {e}); delete it and "
                                f"run `python -m helpers.data.download` again") from None
        if refused:
            print(f"note: {archive}: {len(refused)} member(s) not extracted (only regular files are): "
                  f"{', '.join(refused[:5])}{' ...' if len(refused) > 5 else ''}", file=sys.stderr)
        new = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        if "manifest.json" in new:
            raise DownloadError(f"{archive}: refused to extract member 'manifest.json' (the name of this "
                                f"folder's extraction record); check the archive's source")
        kept = [f for f in new if (out_dir / f).exists() and f not in ours]
        written = [f for f in new if f not in set(kept)]
        out_dir.mkdir(parents=True, exist_ok=True)
        # the manifest names every file this extraction may write before any is written, so an
        # interrupted extraction's files are recognised as ours by the next one
        atomic_write_json(manifest, {"archive": archive.name, "archive_sha256": digest, "complete": False,
                                     "files": sorted(ours | set(written))})
        for f in written:
            (out_dir / f).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / f, out_dir / f)
        for f in sorted(ours - set(new)):  # an earlier extraction's file the new archive no longer holds
            (out_dir / f).unlink(missing_ok=True)
        differ = [f for f in kept if not _same_file(tmp / f, out_dir / f)]
        if differ:
            print(f"note: {out_dir}: {len(differ)} file(s) already there (not written by an extraction) differ "
                  f"from the archive's and were kept as they are: {', '.join(differ[:5])}"
                  f"{' ...' if len(differ) > 5 else ''}", file=sys.stderr)
        atomic_write_json(manifest, {"archive": archive.name, "archive_sha256": digest, "complete": True,
                                     "n_files": len(written), "files": written, "kept": kept,
                                     "refused": refused})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _same_file(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and sha256_of(a) == sha256_of(b)


def download(names: Sequence[str], root: Path | None = None, overrides: dict[str, str] | None = None,
             progress: bool = True, sha256: dict[str, str] | None = None, refresh: Sequence[str] = (),
             **fetch_kw) -> dict[str, str]:
    """Fetch (and extract) the named sources into ``root``; returns name -> final path.

    ``sha256`` pins checksums by name (over :data:`SOURCES`). Hashes and sizes of completed files
    are recorded in ``root/downloads.json`` (an unreadable record is ignored, with a warning) and
    enforced afterwards: a file already present whose hash matches the pinned or recorded hash is
    not fetched again; one that does not is fetched again and must match the record (a changed
    remote file is refused with a :class:`DownloadError` naming the record). Names in
    ``refresh`` ignore their record: the current remote file is fetched and recorded anew.
    """
    root = Path(root) if root else data_dir()
    overrides, pins = overrides or {}, {k: v.lower() for k, v in (sha256 or {}).items()}
    unknown = [n for n in [*names, *overrides, *pins, *refresh] if n not in SOURCES]
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
        rec = {} if n in refresh else (record.get(n) if isinstance(record.get(n), dict) else {})
        rec_sha = rec.get("sha256") if isinstance(rec.get("sha256"), str) else None
        rec_size = rec.get("bytes") if isinstance(rec.get("bytes"), int) else None
        pinned = pins.get(n) or src.sha256
        want, size = pinned or rec_sha, src.size if pinned else (src.size or rec_size)
        what = "pinned" if pinned else f"recorded in {record_path}" if rec_sha else "pinned"
        if not (dest.is_file() and want and sha256_of(dest) == want):
            if n in refresh and dest.is_file():
                print(f"note: --refresh {n}: fetching {_url(src, overrides)} again and recording it anew",
                      file=sys.stderr)
            fetch(_url(src, overrides), dest, want, progress=progress, size=size, what=what, **fetch_kw)
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
    """The command line of ``python -m helpers.data.download`` (every option states its default)."""
    ap = argparse.ArgumentParser(prog="python -m helpers.data.download", description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", default=["images"],
                    help=f"sources to fetch: {', '.join(SOURCES)} (default: images)")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="where to put them (default: IUXRAY_DATA_DIR, else data/ in the repository)")
    ap.add_argument("--url", action="append", default=[], metavar="NAME=URL",
                    help="fetch a source from another URL, e.g. a mirror; repeatable (default: the URLs "
                         "of --list, or IUXRAY_URL_<NAME>)")
    ap.add_argument("--sha256", action="append", default=[], metavar="NAME=HEX",
                    help="pin a source's SHA-256; repeatable (default: none pinned, the first download's "
                         "hash is recorded in downloads.json and enforced afterwards)")
    ap.add_argument("--refresh", action="append", default=[], metavar="NAME",
                    help="accept the current remote file of a source whose recorded hash or size it no "
                         "longer matches, and record it anew; repeatable (default: none, records enforced)")
    ap.add_argument("--retries", type=int, default=5, help="attempts after the first on a network fault (default: 5)")
    ap.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE,
                    help=f"seconds one file's download may take in all, retries included; the partial file "
                         f"is kept for the next run (default: {DEFAULT_DEADLINE:g})")
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
        if not (a.deadline > 0 and a.deadline < float("inf")):
            raise ValueError(f"--deadline {a.deadline}: expected a positive number of seconds")
        out = download(a.names, root, _pairs(a.url, "--url"), sha256=_pairs(a.sha256, "--sha256"),
                       refresh=a.refresh, retries=a.retries, deadline=a.deadline)
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
