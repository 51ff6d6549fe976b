"""Private, atomic file writes: the one place that decides modes for state that may hold secrets.

Cache databases hold private API responses, build and registry state hold tokens and keys, logs may
echo either. All of it is created 0600 in 0700 directories, and files left by older versions with
wider modes are tightened when we open them again.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

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


def write_private(
    path: str | Path, data: bytes | str, *, durable: bool = True, mode: int = FILE_MODE
) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, rename), 0600.

    Readers see the old or the new content, never a torn file, even across a crash or ``kill -9``.
    ``durable=False`` skips the fsync (still atomic across a crash of the process, not a power loss):
    for files rebuilt from other state on start-up and written on a hot path, where an fsync under
    I/O load costs milliseconds each time.

    ``mode`` other than 0600 is for a file meant for others (a report another step or user reads): it
    gets exactly that mode, and its directory is created if missing but never tightened.
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
