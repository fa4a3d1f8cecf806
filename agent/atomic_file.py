"""Replacing a file so that a reader, or a power cut, sees the old one or the new one, never half."""

from __future__ import annotations

import os
from pathlib import Path


def replace_file(path: Path, data: bytes, mode: int = 0o644, durable: bool = False) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`.

    `mode` holds whatever the umask (the hardened unit's is 0077). `durable` fsyncs before the
    rename, for files on flash that must survive a power cut (not for tmpfs). Raises OSError."""
    tmp = path.with_name("." + path.name + ".tmp")
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(str(tmp), str(path))
