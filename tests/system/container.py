"""A Debian container booted with systemd as PID 1 (systemd-nspawn), and a shell into it.

The cached root is never written: `--volatile=overlay` puts a tmpfs over it, so every run boots
the same clean machine and leaves nothing behind. `--private-network` gives the container its own
loopback only, so its mosquitto on 8883 meets nothing on the host. `--register=no --keep-unit`:
without them nspawn stops at "Failed to open system bus" where the host's systemd is not PID 1
(FIELD-NOTES). Commands run inside through nsenter into the container's init: with
`--register=no` there is no machined to ask (`machinectl shell`, `systemd-run -M` need it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ContainerError(Exception):
    pass


class Container:
    def __init__(self, root: Path, name: str, binds: Sequence[Tuple[Path, str, bool]], log: Path) -> None:
        """`binds`: (host directory, where inside, read-only)."""
        self.root, self.name, self.binds, self.log_path = root, name, binds, log
        self._nspawn: Optional[subprocess.Popen[bytes]] = None
        self.leader = 0

    def boot(self, timeout: float = 120.0) -> None:
        argv = ["systemd-nspawn", "--boot", "--directory", str(self.root), "--machine", self.name,
                "--register=no", "--keep-unit", "--volatile=overlay", "--private-network", "--console=read-only"]
        argv += ["--bind%s=%s:%s" % ("-ro" if ro else "", host, inside) for host, inside, ro in self.binds]
        with open(self.log_path, "ab") as log:
            self._nspawn = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.leader:
            self.leader = _init_of(self._nspawn.pid)
            if self._nspawn.poll() is not None:
                raise ContainerError("systemd-nspawn exited with %s (see %s)" % (self._nspawn.returncode,
                                                                               self.log_path))
            if time.monotonic() > deadline:
                raise ContainerError("no init in the container after %g s (see %s)" % (timeout, self.log_path))
            time.sleep(0.1)
        # "running" or "degraded" (a unit that does not fit a container, which is no concern here).
        # Just after init starts, systemctl cannot reach it yet and answers nothing: ask again.
        state = ""
        while not state and time.monotonic() < deadline:
            state = self.sh("systemctl is-system-running --wait", check=False, timeout=timeout).stdout.strip()
            time.sleep(0 if state else 0.2)
        if state not in ("running", "degraded"):
            raise ContainerError("the container's systemd says %r after boot (see %s)" % (state, self.log_path))

    def sh(self, script: str, check: bool = True, timeout: float = 120.0, env: Optional[Dict[str, str]] = None,
           input: Optional[str] = None) -> subprocess.CompletedProcess[str]:
        """`sh -c script` inside, as root, with a clean environment; stdout and stderr captured."""
        variables = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}
        variables.update(env or {})
        argv: List[str] = ["nsenter", "--target", str(self.leader), "--all", "--root", "--wd", "/usr/bin/env", "-i"]
        argv += ["%s=%s" % kv for kv in variables.items()] + ["/bin/sh", "-c", script]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise ContainerError("inside the container, exit %d: %s\n%s%s" % (
                result.returncode, script, result.stdout[-2000:], result.stderr[-2000:]))
        return result

    def spawn(self, script: str, output: Path) -> subprocess.Popen[bytes]:
        """`sh -c script` inside, in the background, its output going to a file on the host."""
        argv = ["nsenter", "--target", str(self.leader), "--all", "--root", "--wd", "/usr/bin/env", "-i",
                "PATH=%s" % PATH, "HOME=/root", "/bin/sh", "-c", script]
        with open(output, "wb") as out:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def shutdown(self, timeout: float = 60.0) -> None:
        if self._nspawn is None or self._nspawn.poll() is not None:
            return
        # SIGTERM to nspawn asks the container's systemd to power off in order.
        self._nspawn.send_signal(signal.SIGTERM)
        try:
            self._nspawn.wait(timeout)
        except subprocess.TimeoutExpired:
            self._nspawn.kill()
            self._nspawn.wait()


def _init_of(nspawn_pid: int) -> int:
    """The container's PID 1, seen from the host: nspawn's child that is PID 1 in its namespace."""
    for child in _children(nspawn_pid):
        try:
            status = Path("/proc/%d/status" % child).read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("NSpid:") and line.split()[-1] == "1" and len(line.split()) > 2:
                return child
    return 0


def _children(pid: int) -> Sequence[int]:
    try:
        text = Path("/proc/%d/task/%d/children" % (pid, pid)).read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """End a background command started by Container.spawn (its own session: nsenter and its child)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
