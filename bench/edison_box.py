"""The emulated Edison of `make bench-edison` (bench/edison_cap.py): the i386 root of
`make test-i386` with the agent installed as docs/operations.md says, and a cgroup v1 cpu cap
that the agent's processes join.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
CPU_CG = Path("/sys/fs/cgroup/cpu")
CPUSET_CG = Path("/sys/fs/cgroup/cpuset")
PERIOD_US = 100000
AGENT = "/opt/edison-agent/bin/edison-agent"
AGENT_PY = "/opt/edison-agent/bin/python"


class Cap:
    """A cgroup v1 cpu cap (and, for one core, a cpuset of one CPU) that processes join."""

    def __init__(self, cores: int, quota_us: int) -> None:
        name = "edison-bench-%d-%d" % (os.getpid(), cores)
        self.cpu = CPU_CG / name
        self.cpu.mkdir()
        (self.cpu / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        # The quota is per period for the whole group: two cores get twice the quota.
        (self.cpu / "cpu.cfs_quota_us").write_text(str(quota_us * cores))
        self.cpuset: Optional[Path] = None
        if CPUSET_CG.is_dir():
            self.cpuset = CPUSET_CG / name
            self.cpuset.mkdir()
            (self.cpuset / "cpuset.cpus").write_text("0" if cores == 1 else "0-%d" % (cores - 1))
            (self.cpuset / "cpuset.mems").write_text((CPUSET_CG / "cpuset.mems").read_text().strip())

    def join(self) -> None:
        """In the child, before exec: this process and all it starts are capped."""
        for group in (self.cpu, self.cpuset):
            if group is not None:
                (group / "cgroup.procs").write_text(str(os.getpid()))

    def close(self) -> None:
        for group in (self.cpu, self.cpuset):
            if group is not None:
                try:
                    group.rmdir()
                except OSError:
                    pass


def prepare_root(work: Path) -> Path:
    """The cached i386 root under an overlay, with /proc, /dev, /sys, this checkout at /src and
    the agent installed as docs/operations.md says. Called inside a private mount namespace."""
    root = subprocess.run([str(ROOT / "tests/i386/root.sh")], check=True, capture_output=True,
                          text=True).stdout.strip()
    merged = work / "merged"
    for d in ("upper", "ovl-work", "merged"):
        (work / d).mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", "lowerdir=%s,upperdir=%s,workdir=%s"
                    % (root, work / "upper", work / "ovl-work"), str(merged)], check=True)
    subprocess.run(["mount", "--rbind", "/dev", str(merged / "dev")], check=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(merged / "proc")], check=True)
    subprocess.run(["mount", "--rbind", "/sys", str(merged / "sys")], check=True)
    for name in ("resolv.conf", "hosts"):
        shutil.copy("/etc/" + name, merged / "etc" / name)
    # The bench's files (certificates, configs, the notify socket) at the same path inside and out.
    (merged / str(work).lstrip("/")).mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(work), str(merged / str(work).lstrip("/"))], check=True)
    shutil.copytree(ROOT, merged / "src", ignore=shutil.ignore_patterns(
        ".git", ".venv", ".peers-venv", "__pycache__", "*.egg-info", "build", ".*_cache"))
    chroot = ["setarch", "i686", "chroot", str(merged), "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
              "HOME=/root", "LANG=C.UTF-8"]
    subprocess.run(chroot + ["python3", "-m", "venv", "--system-site-packages", "/opt/edison-agent"], check=True)
    subprocess.run(chroot + ["/opt/edison-agent/bin/pip", "install", "-q", "--disable-pip-version-check",
                             "--cert", "/etc/ssl/certs/ca-certificates.crt", "/src"], check=True)
    out = subprocess.run(chroot + [AGENT_PY, "-c", "import struct, platform; print(struct.calcsize('P') * 8, "
                                   "platform.machine())"], check=True, capture_output=True, text=True).stdout
    print("bench-edison: agent installed in the i386 root (%s)" % out.strip(), flush=True)
    return merged


def cleanup(work: Path) -> None:
    """Unmount the root (its /dev is the host's own: never delete through a mount), then remove."""
    subprocess.run(["umount", "-R", "-l", str(work / "merged")], check=False, stderr=subprocess.DEVNULL)
    with open("/proc/self/mounts") as f:
        if any(line.split()[1].startswith(str(work)) for line in f):
            print("bench-edison: %s still has mounts; left in place" % work, file=sys.stderr)
            return
    shutil.rmtree(work, ignore_errors=True)
