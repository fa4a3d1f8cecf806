"""Replacing a file so that a reader, or a power cut, sees the old one or the new one, never half."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def replace_file(path: Path, data: bytes, mode: int = 0o644, durable: bool = False) -> None:
    """Write `data` to a new temporary file beside `path`, then rename it over `path`.

    The temporary file has a name no one can guess and is created with O_EXCL|O_NOFOLLOW
    (tempfile.mkstemp): in a directory others can write to (/run, /tmp), a symlink planted where
    it will be is never followed, so no other file is written or chmod'ed. The rename replaces
    a symlink at `path` itself, not what it points to. `mode` holds whatever the umask (the
    hardened unit's is 0077). `durable` fsyncs before the rename, for files on flash that must
    survive a power cut (not for tmpfs). Raises OSError."""
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=str(path.parent))
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, str(path))
    except BaseException:
        os.unlink(tmp)
        raise
