"""Private, atomic file writes: the one place that decides modes for state that may hold secrets.

Cache databases hold private API responses, build and registry state hold tokens and keys, logs may
echo either. All of it is created 0600 in 0700 directories, and files left by older versions with
wider modes are tightened when we open them again.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from fleetci.errors import FleetciError

FILE_MODE = 0o600
DIR_MODE = 0o700


def ensure_private_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) 0700; tighten it if we own it and it is group/world accessible.

    A shared sticky directory (``/tmp``) is never touched: it is not ours to tighten.
    """
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    with contextlib.suppress(OSError):
        st = p.stat()
        if st.st_uid == os.geteuid() and not st.st_mode & stat.S_ISVTX and st.st_mode & 0o077:
            p.chmod(DIR_MODE)
    return p


def tighten(*paths: str | Path) -> None:
    """Make existing files 0600 (state an older version created with the default umask)."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError, PermissionError):
            p = Path(path)
            st = p.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
                p.chmod(FILE_MODE)


def touch_private(path: str | Path) -> Path:
    """Create ``path`` empty with mode 0600 if missing (before SQLite opens it: its -wal/-shm files
    inherit the database file's mode), and tighten it if it exists."""
    p = Path(path)
    ensure_private_dir(p.parent)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    os.close(fd)
    tighten(p)
    return p


def write_atomic(path: str | Path, data: bytes | str, *, mode: int = 0o644, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, rename).

    Readers see the old or the new content, never a torn file, even across a crash or ``kill -9``.
    ``durable=False`` skips the fsync (still atomic across a crash of the process, not a power loss):
    for files rebuilt from other state on start-up and written on a hot path, where an fsync under
    I/O load costs milliseconds each time.

    This is for a file meant for others (a report another step reads, a peer record): it gets exactly
    ``mode`` and its directory is created if missing but never tightened. Private data goes through
    :func:`write_private`.
    """
    p = Path(path)
    if mode == FILE_MODE:
        ensure_private_dir(p.parent)
    else:
        p.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)  # mkstemp: 0600
    try:
        if mode != FILE_MODE:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return p


def write_private(path: str | Path, data: bytes | str, *, durable: bool = True) -> Path:
    """:func:`write_atomic` for private data: 0600 in a 0700 directory (tokens, keys, state, caches)."""
    return write_atomic(path, data, mode=FILE_MODE, durable=durable)


def write_json(path: str | Path, data: Any, *, private: bool = True, durable: bool = True) -> Path:
    """Atomic JSON state (sorted keys, one trailing newline); private unless told otherwise."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    return write_atomic(path, text, mode=FILE_MODE if private else 0o644, durable=durable)


def read_json(path: str | Path, what: str) -> Any:
    """Parse a JSON state file (tightening one an older version left readable); one-line errors."""
    p = Path(path)
    tighten(p)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FleetciError(f"{what} {p} does not exist") from None
    except (OSError, ValueError) as exc:
        raise FleetciError(f"{what} {p} is corrupt: {' '.join(str(exc).split())}") from exc


def move_into_place(src: str | Path, dst: str | Path) -> Path:
    """Publish a file or directory that was built under a temporary name: one rename, atomic on one
    filesystem, so readers see nothing or the finished thing (a streamed upload, an unpacked rootfs).

    Content held in memory goes through :func:`write_atomic` instead; this is for what is too large or
    too slow to hold (written piece by piece, or produced by another program)."""
    os.replace(src, dst)
    return Path(dst)


@contextlib.contextmanager
def partial(dest: str | Path) -> Iterator[Path]:
    """Build ``dest`` as ``<dest>.partial`` (a download, an extracted or decompressed file) and publish it
    with one rename when the block ends; on an error the partial file is removed, so nothing
    half-written ever carries the final name."""
    final = Path(dest)
    tmp = final.with_name(final.name + ".partial")
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    move_into_place(tmp, final)


def move_aside(path: str | Path, reason: str = "corrupt") -> Path | None:
    """Rename a damaged file or directory to ``<name>.<reason>-<UTC time>`` so nothing is lost.

    The caller then starts afresh and names the kept copy in its message. ``None`` when ``path`` is
    already gone (another process moved it first).
    """
    p = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = p.with_name(f"{p.name}.{reason}-{stamp}")
    n = 1
    while target.exists():  # two in one second: keep both
        n += 1
        target = p.with_name(f"{p.name}.{reason}-{stamp}-{n}")
    try:
        p.rename(target)
    except FileNotFoundError:
        return None
    return target


@contextlib.contextmanager
def open_private(path: str | Path, mode: str = "a") -> Iterator[IO[Any]]:
    """Open a log or pid file for writing with mode 0600 (created so, tightened if it exists)."""
    p = touch_private(path)
    with open(p, mode) as fh:
        yield fh


def private_fd(path: str | Path, append: bool = True) -> int:
    """A raw 0600 file descriptor (for a daemon's stdout/stderr redirection)."""
    p = touch_private(path)
    flags = os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC)
    return os.open(p, flags)
