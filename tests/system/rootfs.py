"""The Debian root file system the system test boots: built once with debootstrap, then cached.

CI runs in a fresh clone on the same machine, so the cache lives outside the checkout, keyed by
what goes into the tree (suite, architecture, packages, this machine's extra CA certificates): a
changed package list builds a new tree beside the old one. The mirror is the one this machine's
apt is configured with, read from its sources when the tree is built, never a host named here.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

CACHE = Path(os.environ.get("EDISON_AGENT_SYSTEM_CACHE", "/var/cache/edison-agent"))
SUITE = "bookworm"
# What a Debian 12 board needs for the agent as docs/operations.md installs it, plus the broker and
# its clients for the test: systemd as PID 1, python3 with venv and pip, Debian's python3-systemd
# and python3-yaml (seen through --system-site-packages), mosquitto. (Not python3-cryptography:
# debootstrap fails configuring it; `pki` gets cryptography from pip, as on a workstation.)
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "python3-pip", "python3-systemd",
            "python3-yaml", "mosquitto", "mosquitto-clients", "openssl", "ca-certificates", "procps")
EXTRA_CA = Path("/usr/local/share/ca-certificates")


class Unavailable(Exception):
    """The machine cannot build the tree (no mirror in its apt sources): a skip, not a failure."""


def architecture() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True,
                          text=True).stdout.strip()


def cache_key(arch: str) -> str:
    digest = hashlib.sha256()
    for part in (SUITE, arch, "minbase", *PACKAGES):
        digest.update(part.encode() + b"\0")
    for cert in sorted(EXTRA_CA.glob("*.crt")) if EXTRA_CA.is_dir() else []:
        digest.update(cert.read_bytes())
    return digest.hexdigest()[:12]


def _one_line_entries(text: str) -> Iterator[Tuple[str, List[str], List[str]]]:
    for line in text.splitlines():
        # "deb [signed-by=...] URI SUITE COMPONENT..."; options and comments aside.
        words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb":
            yield words[1], [words[2]], words[3:]


def _deb822_entries(text: str) -> Iterator[Tuple[str, List[str], List[str]]]:
    for stanza in re.split(r"\n\s*\n", text):
        fields = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.split()
        if "deb" not in fields.get("types", []) or fields.get("enabled", ["yes"]) == ["no"]:
            continue
        for uri in fields.get("uris", []):
            yield uri, fields.get("suites", []), fields.get("components", [])


def mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The first enabled `deb` source of this machine's apt that serves bookworm's main component."""
    sources = [(apt_dir / "sources.list", _one_line_entries)]
    sources += [(p, _one_line_entries) for p in sorted((apt_dir / "sources.list.d").glob("*.list"))]
    sources += [(p, _deb822_entries) for p in sorted((apt_dir / "sources.list.d").glob("*.sources"))]
    for path, parse in sources:
        if not path.is_file():
            continue
        for uri, suites, components in parse(path.read_text(errors="replace")):
            if SUITE in suites and "main" in components:
                return uri
    raise Unavailable("no apt source for %s main in %s (debootstrap needs a Debian mirror)" % (SUITE, apt_dir))


def root(log: Optional[Path] = None) -> Tuple[Path, Optional[float]]:
    """The cached tree, built first if missing: (path, seconds the build took or None if cached)."""
    arch = architecture()
    target = CACHE / ("rootfs-%s-%s-%s" % (SUITE, arch, cache_key(arch)))
    CACHE.mkdir(parents=True, exist_ok=True)
    # Two runs at once (two CI jobs, a developer and CI) build it once: the second waits.
    with open(CACHE / (".%s.lock" % target.name), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_dir():
            return target, None
        started = time.monotonic()
        _build(target, arch, mirror(), log)
        return target, time.monotonic() - started


def _build(target: Path, arch: str, uri: str, log: Optional[Path]) -> None:
    work = Path(tempfile.mkdtemp(prefix=".build-%s-" % target.name, dir=str(CACHE)))
    try:
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
        try:
            subprocess.run(["debootstrap", "--arch=%s" % arch, "--variant=minbase",
                            "--include=%s" % ",".join(PACKAGES), SUITE, str(work), uri],
                           check=True, stdout=out, stderr=subprocess.STDOUT)
            # pip inside trusts what this machine trusts (a proxy's CA, a company CA).
            if EXTRA_CA.is_dir():
                shutil.copytree(EXTRA_CA, work / "usr/local/share/ca-certificates", dirs_exist_ok=True)
                subprocess.run(["chroot", str(work), "update-ca-certificates"], check=True, stdout=out,
                               stderr=subprocess.STDOUT)
        finally:
            if log:
                out.close()  # type: ignore[union-attr]
        _configure(work)
        work.chmod(0o755)
        work.rename(target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _configure(tree: Path) -> None:
    (tree / "etc/hostname").write_text("edison-system-test\n")
    # A fresh machine-id at every boot (the tree is shared by every run, read-only under an overlay).
    (tree / "etc/machine-id").write_text("")
    # Nothing to wait for in a container with no network but loopback.
    for unit in ("systemd-networkd-wait-online.service", "apt-daily.timer", "apt-daily-upgrade.timer"):
        link = tree / "etc/systemd/system" / unit
        if not link.exists():
            link.symlink_to("/dev/null")
    # The broker is started by the test with its own config, not at boot with Debian's.
    wanted = tree / "etc/systemd/system/multi-user.target.wants/mosquitto.service"
    if wanted.is_symlink():
        wanted.unlink()
