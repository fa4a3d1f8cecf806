"""`make test-system`: the agent under a real systemd, installed and run as a user does.

Boots a Debian 12 container with systemd as PID 1 (systemd-nspawn; the root file system is built
with debootstrap once and cached, see rootfs.py), installs this checkout in it the way README.md
and docs/operations.md say, makes the certificates with the project's own `edison-agent pki`, runs
mosquitto beside it, and checks the service against the real systemd and journald, one line per
check. Exit 0 when every check passed, 1 otherwise; a machine that cannot run the container (not
root, no systemd-nspawn or debootstrap, no Debian mirror in its apt sources) gets a SKIP line and 0.

The container has no network but its loopback: pip installs from a wheelhouse the host downloads
(PIP_NO_INDEX, PIP_FIND_LINKS), so the install command itself is the one the docs give.

Every check can fail: `EDISON_SYSTEM_BREAK=type-simple,kill-reload,... make test-system` breaks the
installed service on purpose after the install (checks.BREAKS lists the faults and the check each
must fail). EDISON_AGENT_SYSTEM_CACHE moves the cache (default /var/cache/edison-agent).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import checks  # noqa: E402
import rootfs  # noqa: E402
from container import Container, ContainerError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WHEELS = rootfs.CACHE / "wheels"
# What pip needs besides Debian's packages: the agent's dependency Debian has too old (paho-mqtt
# 1.6 in bookworm), the build backend for `pip install DIR`, and for the workstation's venv (no
# system site packages) PyYAML and the `pki` extra's cryptography.
WHEEL_REQUIREMENTS = ("paho-mqtt>=2,<3", "PyYAML>=5.1", "cryptography>=3.4", "setuptools>=61", "wheel")


def why_not() -> Optional[str]:
    """Why this machine cannot run the container, or None."""
    if sys.platform != "linux":
        return "not Linux"
    if os.geteuid() != 0:
        return "not root (systemd-nspawn and debootstrap need root; CI runs as root)"
    for tool in ("systemd-nspawn", "debootstrap", "nsenter", "dpkg"):
        if shutil.which(tool) is None:
            return "%s is not installed (apt-get install systemd-container debootstrap util-linux)" % tool
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlay file system (systemd-nspawn --volatile=overlay needs it)"
    return None


def main() -> int:
    reason = why_not()
    if reason is None:
        try:
            rootfs.mirror()
        except rootfs.Unavailable as exc:
            reason = str(exc)
    if reason is not None:
        print("SKIP test-system: %s" % reason)
        return 0
    # A CI job cancelled (SIGTERM) still shuts the container down, in the finally below.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    work = Path(tempfile.mkdtemp(prefix="edison-system-", dir="/var/tmp"))
    started = time.monotonic()
    try:
        tree, built_in = rootfs.root(work / "debootstrap.log")
        print("root file system %s (%s)" % (tree, "built in %.0f s" % built_in if built_in else "cached"), flush=True)
        _wheelhouse()
        source = work / "edison-agent"
        _copy_checkout(source)
        box = Container(tree, "edison-system-%d" % os.getpid(),
                        [(source, "/root/edison-agent", False), (WHEELS, "/wheels", True)], work / "console.log")
        try:
            box.boot()
            failed = checks.run_all(box, work)
        finally:
            box.shutdown()
    except (ContainerError, subprocess.CalledProcessError, OSError) as exc:
        print("FAIL setup: %s (files in %s)" % (exc, work))
        return 1
    print("test-system: %s in %.0f s (files in %s)" % ("%d failed" % failed if failed else "all passed",
                                                       time.monotonic() - started, work))
    if not failed:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


def _wheelhouse() -> None:
    WHEELS.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                             "--only-binary=:all:", "--dest", str(WHEELS), *WHEEL_REQUIREMENTS],
                            capture_output=True, text=True)
    # Offline with a wheelhouse from an earlier run is fine; the install inside says if it is not.
    if result.returncode != 0 and not any(WHEELS.glob("paho_mqtt-*.whl")):
        raise OSError("pip download %s failed: %s" % (" ".join(WHEEL_REQUIREMENTS), result.stderr.strip()[-500:]))


def _copy_checkout(target: Path) -> None:
    """The checkout's files as git sees them (tracked, and new ones not ignored): no .venv, no caches."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


if __name__ == "__main__":
    sys.exit(main())
