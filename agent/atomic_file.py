"""The one writer of whole files: a reader, or a power cut, sees the old file or the new one, never half.

Used by the daemon (health file, command overlay, reload answer, discovery state), by `install`
(units) and by the certificate tools (keys, certificates, CRLs, provisioning bundles).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Never follow a link planted at the name, and never leak the descriptor into a child.
_EXCLUSIVE = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def replace_file(path: Path, data: bytes, mode: int = 0o644, durable: bool = False) -> None:
    """Write `data` to a new temporary file beside `path`, then rename it over `path`.

    The temporary file has a name no one can guess and is created with O_EXCL|O_NOFOLLOW
    (tempfile.mkstemp): in a directory others can write to (/run, /tmp), a symlink planted where
    it will be is never followed, so no other file is written or chmod'ed. The rename replaces
    a symlink at `path` itself, not what it points to. `mode` holds whatever the umask (the
    hardened unit's is 0077), and a private key is 0600 from its first byte: mkstemp makes the
    file 0600 and it is widened only before the rename. `durable` fsyncs before the rename, for
    files on flash that must survive a power cut (not for tmpfs). Raises OSError."""
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=str(path.parent))
    try:
        _fill(fd, data, mode, durable)
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


def create_file(path: Path, data: bytes, mode: int = 0o644, durable: bool = False) -> None:
    """Write `data` to `path`, which must not exist yet, not even as a dangling symlink.

    For a file that must never replace another (a key or a certificate without --force): O_EXCL
    refuses an existing name, a planted link included. `mode` holds whatever the umask, as in
    replace_file; a write that fails removes what it began. Raises FileExistsError when `path`
    exists, OSError otherwise."""
    fd = os.open(str(path), _EXCLUSIVE, mode)
    try:
        _fill(fd, data, mode, durable)
    except BaseException:
        os.close(fd)
        os.unlink(str(path))
        raise
    os.close(fd)


def _fill(fd: int, data: bytes, mode: int, durable: bool) -> None:
    # Exactly `mode` whatever the umask: a certificate readable so mosquitto can read it, a key
    # 0600 (an umask like 0277 would otherwise leave it 0400, one like 0 cannot widen it).
    os.fchmod(fd, mode)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    if durable:
        os.fsync(fd)
