"""Atomic file output, content hashes and the one reading path for caches.

Writing. Every cache and output of the book is written to a temporary file in the destination
folder and renamed into place, so an interrupted run never leaves a half-written file that a
later run would take as complete. Files get the permissions of an ordinary ``open()`` (``0o666``
less the process umask), so a web server or a teammate can read them where the umask allows.
Temporary names carry the host and process id (``.<name>@<host>@<pid>@<random>.tmp``): the
temporary files of a process that died (killed, power loss) are recognised and removed by
:func:`remove_stale_temps` on the next run.

JSON is strict (RFC 8259): ``NaN``, ``inf`` and ``-inf`` are written as ``null``
(:func:`strict_json`), so any JSON reader accepts the metrics files; readers treat ``null``
as "not defined" (e.g. an AUROC of a label with no positive in the test split).

Reading caches. :func:`read_cache` is the single path by which caches are read: a file that is
missing, cannot be parsed or fails an integrity check (its content hash, shape, dtype or value
range) is a *miss*; a :class:`CacheMissWarning` names the file and the reason, and the caller
rebuilds it. Cached bytes carry a SHA-256 sidecar (``<file>.sha256``, written after the file):
:func:`write_cache_bytes` / :func:`read_cache_bytes`, with ``.npy``, CSV and JSON forms below.

Locks. :func:`folder_lock` holds one lock per output folder (``<folder>/.lock``, an advisory
``flock`` that the kernel releases when its holder dies, however it dies), so two runs never
write one folder at once; the second is refused with a :class:`FolderLockedError` naming the
holder. :func:`check_writable` finds a read-only folder before any work.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import shutil
import socket
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import pandas as pd

T = TypeVar("T")


# --------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------


def _umask() -> int:
    """The process umask (read without changing it for longer than two calls)."""
    u = os.umask(0o022)
    os.umask(u)
    return u


def file_mode() -> int:
    """Permissions of a new file: ``0o666`` less the umask (what ``open()`` would give)."""
    return 0o666 & ~_umask()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"


def temp_path(final: str | os.PathLike, kind: str = "tmp") -> Path:
    """A fresh temporary name beside ``final`` that :func:`remove_stale_temps` recognises:
    ``.<name>@<host>@<pid>@<random>.<kind>`` (the caller creates the file or folder)."""
    final = Path(final)
    token = os.urandom(4).hex()
    return final.with_name(f".{final.name}@{_host()}@{os.getpid()}@{token}.{kind}")


_TEMP_RE = re.compile(r"^\..+@(?P<host>[^@/]*)@(?P<pid>\d+)@[0-9a-z_]*\.(tmp|building|old)$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale_temp(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a temporary file or folder (see :func:`temp_path`) left by a process of
    this host that no longer runs. Temporary files of other hosts (shared disks) are never stale."""
    m = _TEMP_RE.match(Path(path).name)
    return bool(m) and m["host"] == _host() and not _pid_alive(int(m["pid"]))


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files and folders that interrupted runs left directly in ``folder``;
    returns what was removed. Live processes' temporaries are left alone."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.glob(".*@*@*@*"):
        if not is_stale_temp(p):
            continue
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + ``os.replace``).

    The file's mode is ``0o666`` less the umask, as with ``open()`` (``mkstemp`` alone gives
    ``0o600``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}@{_host()}@{os.getpid()}@", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


@contextlib.contextmanager
def building_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Build a folder atomically: yields an empty temporary folder beside ``final``; when the
    block finishes, it replaces ``final`` (the old folder is renamed aside, the new one renamed in,
    the old one deleted). On any exception or interruption ``final`` is untouched and the
    temporary folder is deleted; a process killed outright leaves a temporary folder that the next
    :func:`building_dir` of the same parent removes, and restores ``final`` if it was killed
    between the two renames."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _restore_swapped(final)
    remove_stale_temps(final.parent)
    tmp = temp_path(final, "building")
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            old = temp_path(final, "old")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _restore_swapped(final: Path) -> None:
    """Put back a folder that a killed :func:`building_dir` had renamed aside but not replaced."""
    if final.exists():
        return
    olds = sorted(final.parent.glob(f".{final.name}@*.old"), key=lambda p: p.stat().st_mtime)
    if olds and is_stale_temp(olds[-1]):
        os.replace(olds[-1], final)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def strict_json(x: Any) -> Any:
    """``x`` with every non-finite float (``nan``, ``inf``, ``-inf``) replaced by ``None`` and numpy
    scalars/arrays, tuples and paths turned into plain JSON types. Raises ``TypeError`` for
    anything else that JSON cannot hold."""
    import numpy as np

    if isinstance(x, dict):
        return {k: strict_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict_json(v) for v in x]
    if isinstance(x, np.ndarray):
        return strict_json(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if x is None or isinstance(x, str):
        return x
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def json_bytes(obj: Any) -> bytes:
    """Indented, key-sorted strict JSON (``NaN``/``inf`` -> ``null``) with a final newline."""
    return (json.dumps(strict_json(obj), indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted, strict JSON atomically (stable bytes for equal
    content; non-finite floats become ``null``, see :func:`strict_json`)."""
    return atomic_write_bytes(path, json_bytes(obj))


def csv_bytes(df: pd.DataFrame) -> bytes:
    """The canonical CSV encoding of a frame (no index, ``\\n`` line ends)."""
    return df.to_csv(index=False, lineterminator="\n").encode("utf-8")


def atomic_write_csv(path: str | os.PathLike, df: pd.DataFrame) -> str:
    """Write ``df`` as CSV atomically; return the SHA-256 (first 12 hex digits) of its bytes."""
    data = csv_bytes(df)
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


# --------------------------------------------------------------------------------------
# Hashes
# --------------------------------------------------------------------------------------


def sha256_bytes(data: bytes, n: int = 12) -> str:
    """First ``n`` hex digits of the SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()[:n]


def sha256_file(path: str | os.PathLike, n: int = 64, chunk: int = 1 << 20) -> str:
    """First ``n`` hex digits of the SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:n]


def frame_hash(df: pd.DataFrame) -> str:
    """Content hash (12 hex digits) of a frame's canonical CSV encoding."""
    return sha256_bytes(csv_bytes(df))


# --------------------------------------------------------------------------------------
# Reading caches: one path, every failure a miss
# --------------------------------------------------------------------------------------


class CacheMissWarning(UserWarning):
    """A cache file that was present but unusable (unparsable, or failing its integrity check);
    the message names the file and why. It is rebuilt."""


class CacheIntegrityError(ValueError):
    """Raised inside a cache loader when the content fails a check (hash, shape, range)."""


def read_cache(path: str | os.PathLike, load: Callable[[Path], T],
               check: Callable[[T], str | None] | None = None) -> T | None:
    """The one reading path for caches: ``load(path)``, then ``check(result)``.

    Returns ``None`` (a miss) when the file is absent, when ``load`` raises (any parse or
    integrity failure) or when ``check`` returns a problem description; a present but unusable
    file is named in a :class:`CacheMissWarning` with the reason. The caller rebuilds on a miss.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        obj = load(path)
    except Exception as e:  # noqa: BLE001 - any parse failure of a cache is a miss
        _miss(path, f"{type(e).__name__}: {e}")
        return None
    problem = check(obj) if check is not None else None
    if problem:
        _miss(path, problem)
        return None
    return obj


def _miss(path: Path, why: str) -> None:
    warnings.warn(f"cache {path} is not usable ({why}); it is rebuilt", CacheMissWarning, stacklevel=4)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_cache_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Write cache bytes atomically, then their full SHA-256 beside them (``<file>.sha256``);
    returns the hex digest."""
    path = Path(path)
    digest = hashlib.sha256(data).hexdigest()
    _sidecar(path).unlink(missing_ok=True)  # never a new file beside an old hash
    atomic_write_bytes(path, data)
    atomic_write_text(_sidecar(path), digest + "\n")
    return digest


def _verified_bytes(path: Path) -> bytes:
    side = _sidecar(path)
    if not side.is_file():
        raise CacheIntegrityError(f"no content hash beside it ({side.name})")
    want = side.read_text().strip()
    data = path.read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise CacheIntegrityError(f"content hash {got[:12]} differs from the recorded {want[:12]}: "
                                  f"the file was changed or truncated")
    return data


def read_cache_bytes(path: str | os.PathLike) -> bytes | None:
    """Bytes written by :func:`write_cache_bytes`, verified against their sidecar hash, or None."""
    return read_cache(path, _verified_bytes)


def write_npy_cache(path: str | os.PathLike, arr) -> str:
    """Save an array as ``.npy`` cache bytes with a hash sidecar; returns the digest."""
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return write_cache_bytes(path, buf.getvalue())


def read_npy_cache(path: str | os.PathLike, shape: tuple[int | None, ...] | None = None,
                   dtype=None, finite: bool = False):
    """A cached array (hash-verified) or ``None``: a miss if its shape differs from ``shape``
    (``None`` entries match any size), its dtype from ``dtype``, or, with ``finite``, if any
    value is NaN or infinite."""
    import numpy as np

    def load(p: Path):
        return np.load(io.BytesIO(_verified_bytes(p)), allow_pickle=False)

    def check(a) -> str | None:
        if shape is not None and (a.ndim != len(shape)
                                  or any(s is not None and s != n for s, n in zip(shape, a.shape))):
            return f"shape {a.shape}, expected {tuple('any' if s is None else s for s in shape)}"
        if dtype is not None and a.dtype != np.dtype(dtype):
            return f"dtype {a.dtype}, expected {np.dtype(dtype)}"
        if finite and a.dtype.kind == "f" and not np.isfinite(a).all():
            return "it holds NaN or infinite values"
        return None

    return read_cache(path, load, check)


def write_csv_cache(path: str | os.PathLike, df: pd.DataFrame) -> str:
    """Write a frame as canonical CSV with a hash sidecar; returns the first 12 hex digits."""
    return write_cache_bytes(path, csv_bytes(df))[:12]


def read_csv_cache(path: str | os.PathLike, check: Callable[[pd.DataFrame], str | None] | None = None,
                   **read_csv_kw) -> pd.DataFrame | None:
    """A cached CSV (hash-verified, parsed with ``pandas.read_csv(**read_csv_kw)``) or ``None``;
    ``check`` may reject the parsed frame (value ranges, columns) with a reason."""
    return read_cache(path, lambda p: pd.read_csv(io.BytesIO(_verified_bytes(p)), **read_csv_kw), check)


def read_json_cache(path: str | os.PathLike, check: Callable[[Any], str | None] | None = None,
                    kind: type = dict) -> Any:
    """A JSON file (record, manifest, metadata) or ``None`` when absent, unparsable, not of type
    ``kind`` or rejected by ``check``. No sidecar: these files are written by :func:`atomic_write_json`."""
    def full_check(obj):
        if not isinstance(obj, kind):
            return f"expected a JSON {kind.__name__}, found {type(obj).__name__}"
        return check(obj) if check is not None else None

    return read_cache(path, lambda p: json.loads(p.read_text(encoding="utf-8")), full_check)


# --------------------------------------------------------------------------------------
# One lock per output folder; writable folders checked up front
# --------------------------------------------------------------------------------------

LOCK_NAME = ".lock"


class FolderLockedError(RuntimeError):
    """An output folder that another run holds; the message names the folder and the holder."""


class FolderNotWritableError(PermissionError):
    """An output folder that cannot be written; the message names it and how to move it."""


def check_writable(folder: str | os.PathLike, what: str = "output folder", moved_by: str = "") -> Path:
    """Create ``folder`` if needed and write (then delete) a temporary file in it; raises
    :class:`FolderNotWritableError` naming the folder, the error and ``moved_by`` (how to move it)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".write-check@{_host()}@{os.getpid()}@", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise FolderNotWritableError(f"{what} {folder} is not writable ({e.strerror or e}); expected a folder this "
                                     f"user can write: change its permissions"
                                     + (f", or {moved_by}" if moved_by else "")) from None
    return folder


def _lock_holder(path: Path) -> str:
    try:
        rec = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        rec = {}
    if not isinstance(rec, dict) or not rec:
        return "a process that did not say who it is"
    return (f"pid {rec.get('pid')} on {rec.get('host')}, started {rec.get('started')}: "
            f"{rec.get('command', '?')}")


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, purpose: str = "") -> Iterator[Path]:
    """Hold the lock of ``folder`` for the duration of the block (created if needed).

    The lock is ``flock`` on ``<folder>/.lock`` (released by the kernel when the holder exits or
    is killed, so a lock is never stale); the file records the holder (pid, host, start time,
    command, ``purpose``). Raises :class:`FolderLockedError` naming the folder and the holder when
    another process holds it, :class:`FolderNotWritableError` when the folder cannot be written.
    Where ``fcntl`` does not exist (Windows) the block runs unlocked."""
    import datetime as dt
    import sys

    folder = check_writable(folder)
    path = folder / LOCK_NAME
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no advisory locks on this platform
        yield path
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
    except OSError as e:
        raise FolderNotWritableError(f"output folder {folder}: cannot open its lock file {path} "
                                     f"({e.strerror or e}); expected a writable folder") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderLockedError(f"output folder {folder} is in use by another run ({_lock_holder(path)}); "
                                    f"wait for it to finish or stop it, then run again (two runs writing one "
                                    f"folder would mix their results)") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv) or "python",
                "started": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
                "purpose": purpose}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)
