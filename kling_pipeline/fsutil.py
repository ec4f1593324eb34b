"""Files written atomically (a reader sees the old file or the new one, never half of one),
and read back: a file's size, a file's sha256."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write via a temp file in the same folder, fsync, then os.replace (and fsync the folder).

    `durable=False` skips both fsyncs, for a file made again from others (a thumbnail): still
    old or new bytes to a reader, but a power cut may leave it empty, and the fsyncs cost a
    millisecond or more each (the journal commit they force also stalls the next create)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; a lock file is shared via git
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(path.parent)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes (read in blocks, not whole)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def size_or_none(path: str | os.PathLike[str]) -> int | None:
    """The file's size, or None when it is not there (or cannot be read)."""
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
