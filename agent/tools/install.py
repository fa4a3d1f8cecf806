"""`edison-agent install` and `edison-agent uninstall`: the service's files and its systemd wiring.

install (as root) creates /etc/edison-agent/ (0750) with the example config.yaml (0640, only if
there is none: never overwritten) and certs/ (0700, keys tightened to 0600), the spool directory
/var/lib/edison-agent/ (0700), writes the unit to /etc/systemd/system/ with ExecStart= pointing at
this edison-agent command, adds the hardening drop-in where systemd is new enough for it, then
runs `systemctl daemon-reload` and `systemctl enable edison-agent`. It does not start the agent:
the config needs the broker's name and the certificates first.

uninstall disables and stops the service and removes the unit and the drop-in; the config, the
certificates and the spool stay.

--root DIR works on a directory tree instead of / (an image being built, or a test), where
systemctl is not run; --dry-run prints each action and changes nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Callable, List, Optional

from agent.atomic_file import replace_file
from agent.errors import AgentError

UNIT_NAME = "edison-agent.service"
CONFIG_DIR = Path("etc/edison-agent")
UNIT_DIR = Path("etc/systemd/system")
STATE_DIR = Path("var/lib/edison-agent")
DROPIN_DIR = UNIT_DIR / (UNIT_NAME + ".d")
DROPIN = DROPIN_DIR / "hardening.conf"
CONFIG_ON_BOARD = "/etc/edison-agent/config.yaml"

CONFIG_DIR_MODE = 0o750
CONFIG_MODE = 0o640
CERTS_MODE = 0o700
KEY_MODE = 0o600
STATE_MODE = 0o700
UNIT_MODE = 0o644

# The version of systemd whose NEWS first names each setting of the hardening drop-in (systemd's
# NEWS file; the man pages' "Added in version" notes agree). A systemd older than the newest of
# them would skip that line with a warning, so the drop-in goes only where all of them are known.
# tests/test_install.py checks that this table covers every setting in hardening.conf.
HARDENING_SINCE = {
    "CapabilityBoundingSet": 183,
    "AmbientCapabilities": 229,
    "NoNewPrivileges": 187,
    "RestrictSUIDSGID": 242,
    "ProtectSystem": 232,  # "strict" arrived in 232 (the setting itself in 214)
    "ProtectHome": 214,
    "PrivateTmp": 183,
    "PrivateMounts": 239,
    "StateDirectory": 235,
    "StateDirectoryMode": 235,
    "RuntimeDirectory": 211,
    "RuntimeDirectoryMode": 211,
    "ConfigurationDirectory": 235,
    "ConfigurationDirectoryMode": 235,
    "UMask": 183,
    "ProtectKernelTunables": 232,
    "ReadWritePaths": 231,
    "ProtectKernelModules": 232,
    "ProtectKernelLogs": 244,
    "ProtectControlGroups": 232,
    "ProtectClock": 245,
    "ProtectHostname": 242,
    "ProtectProc": 247,
    "DevicePolicy": 183,
    "DeviceAllow": 183,
    "RestrictAddressFamilies": 211,
    "RestrictNamespaces": 233,
    "RestrictRealtime": 231,
    "LockPersonality": 235,
    "MemoryDenyWriteExecute": 231,
    "RemoveIPC": 232,
    "SystemCallArchitectures": 209,
    "SystemCallFilter": 241,  # the @system-service group; SystemCallFilter= itself is 187
    "SystemCallErrorNumber": 209,
}
HARDENING_MIN_SYSTEMD = max(HARDENING_SINCE.values())

EXIT_OK, EXIT_FAILED = 0, 2

Output = Callable[[str], None]
Systemctl = Callable[[List[str]], None]


class InstallError(AgentError):
    """A failure, said in one line."""


def add_install_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    install = subparsers.add_parser("install", help="install the systemd service, its config directory and unit")
    install.set_defaults(func=run_install)
    uninstall = subparsers.add_parser("uninstall", help="remove the systemd unit (config, certificates, spool stay)")
    uninstall.set_defaults(func=run_uninstall)
    for parser in (install, uninstall):
        parser.add_argument("--root", type=Path, default=Path("/"), metavar="DIR",
                            help="work on the tree under DIR instead of / (systemctl is not run); default: /")
        parser.add_argument("--dry-run", action="store_true", help="print each action, change nothing")
    install.add_argument("--systemd-version", type=int, metavar="N",
                         help="the target's systemd version (default: `systemctl --version`); "
                              "the hardening drop-in needs %d or newer" % HARDENING_MIN_SYSTEMD)
    install.add_argument("--exec", dest="command", metavar="PATH",
                         help="the edison-agent command ExecStart= runs (default: this command)")


def run_install(args: argparse.Namespace) -> int:
    return _run("install", lambda: install(args.root, dry_run=args.dry_run,
                                           systemd_version=args.systemd_version, command=args.command))


def run_uninstall(args: argparse.Namespace) -> int:
    return _run("uninstall", lambda: uninstall(args.root, dry_run=args.dry_run))


def _run(verb: str, action: Callable[[], None]) -> int:
    try:
        action()
    except InstallError as exc:
        print("edison-agent %s: %s" % (verb, exc), file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


class _Plan:
    """Runs (or, dry, only prints) each action, one line apiece."""

    def __init__(self, root: Path, dry_run: bool, out: Output) -> None:
        self.root = root
        self.dry_run = dry_run
        self.out = out

    def path(self, relative: Path) -> Path:
        path = self.root / relative
        self.check(path)
        return path

    def check(self, path: Path) -> None:
        """Refuse a path under --root that goes through a symlink: one planted in the target tree
        (an image being built from files someone else made) would send a chmod or a write outside
        it. Each component below the root is looked at with lstat, never followed. On / itself
        the machine's own layout is trusted (whoever can plant links there is root already)."""
        if self.root == Path("/"):
            return
        try:
            relative = path.relative_to(self.root)
        except ValueError:
            raise InstallError("%s is outside --root %s" % (path, self.root)) from None
        current = self.root
        for part in relative.parts:
            current = current / part
            if current.is_symlink():
                raise InstallError("%s is a symlink (to %s): refusing to follow it out of --root %s; remove it "
                                   "or make it a real directory or file" % (current, os.readlink(current), self.root))

    def do(self, description: str, action: Callable[[], None]) -> None:
        if self.dry_run:
            self.out("[dry-run] " + description)
            return
        try:
            action()
        except OSError as exc:
            raise InstallError("%s failed: %s" % (description, exc.strerror or exc)) from exc
        self.out(description)

    def note(self, text: str) -> None:
        self.out(("[dry-run] " if self.dry_run else "") + text)


def install(root: Path = Path("/"), *, dry_run: bool = False, systemd_version: Optional[int] = None,
            command: Optional[str] = None, out: Output = print,
            systemctl: Optional[Systemctl] = None) -> None:
    root = _check_root(root, dry_run, "install")
    plan = _Plan(root, dry_run, out)
    exec_path = _command_path(command)
    on_host = root == Path("/")
    if systemd_version is None:
        systemd_version = installed_systemd_version()
        if systemd_version is not None and not on_host:
            plan.note("using this machine's systemd %d for %s: pass --systemd-version for another board's"
                      % (systemd_version, root))

    config_dir = plan.path(CONFIG_DIR)
    _ensure_dir(plan, config_dir, CONFIG_DIR_MODE, tighten=True)
    config = config_dir / "config.yaml"
    plan.check(config)
    if config.exists() or config.is_symlink():
        plan.note("keep %s (an existing config is never overwritten)" % config)
        _tighten(plan, config, CONFIG_MODE)
    else:
        example = example_config()
        plan.do("write %s (%04o) from the example: edit mqtt.host and device.id" % (config, CONFIG_MODE),
                lambda: replace_file(config, example, CONFIG_MODE))
    certs = config_dir / "certs"
    _ensure_dir(plan, certs, CERTS_MODE, tighten=True)
    if certs.is_dir():
        for key in sorted(certs.glob("*.key")):
            plan.check(key)
            _tighten(plan, key, KEY_MODE)
    _ensure_dir(plan, plan.path(STATE_DIR), STATE_MODE, tighten=True)

    unit = plan.path(UNIT_DIR / UNIT_NAME)
    unit_text = unit_with_exec(packaged_file("edison-agent.service").decode("utf-8"), exec_path)
    _ensure_dir(plan, unit.parent, 0o755)
    _install_file(plan, unit, unit_text.encode("utf-8"), "the unit, ExecStart=%s" % exec_path)

    dropin = plan.path(DROPIN)
    if systemd_version is not None and systemd_version >= HARDENING_MIN_SYSTEMD:
        _ensure_dir(plan, dropin.parent, 0o755)
        _install_file(plan, dropin, packaged_file("hardening.conf"),
                      "the hardening drop-in, for systemd %d" % systemd_version)
    else:
        why = ("systemd %d is older than %d" % (systemd_version, HARDENING_MIN_SYSTEMD)
               if systemd_version is not None else "the systemd version is unknown (no systemctl)")
        plan.note("skip the hardening drop-in: %s; the base unit runs as unconfined root" % why)
        if dropin.exists():
            plan.do("remove %s (left from a newer systemd)" % dropin, dropin.unlink)

    if _can_run_systemctl(root):
        run = systemctl or _systemctl
        plan.do("systemctl daemon-reload", lambda: run(["daemon-reload"]))
        plan.do("systemctl enable %s" % UNIT_NAME, lambda: run(["enable", UNIT_NAME]))
        plan.note("next: edit %s, put the certificates in %s/certs/, check it with "
                  "`edison-agent check-config`, then `systemctl start edison-agent`" % (config, config_dir))
    else:
        plan.note("skip systemctl (%s): on the board run `systemctl daemon-reload && systemctl enable --now "
                  "edison-agent`" % _why_no_systemctl(root))


def uninstall(root: Path = Path("/"), *, dry_run: bool = False, out: Output = print,
              systemctl: Optional[Systemctl] = None) -> None:
    root = _check_root(root, dry_run, "uninstall")
    plan = _Plan(root, dry_run, out)
    unit = plan.path(UNIT_DIR / UNIT_NAME)
    dropin = plan.path(DROPIN)
    live = _can_run_systemctl(root)
    run = systemctl or _systemctl
    if live and unit.exists():
        plan.do("systemctl disable --now %s" % UNIT_NAME, lambda: run(["disable", "--now", UNIT_NAME]))
    elif not live:
        # What `systemctl enable` made: the [Install] symlinks.
        # (glob() would skip them here: they point at /etc/..., outside the --root tree.)
        for wants in sorted(plan.path(UNIT_DIR).glob("*.wants")):
            plan.check(wants)
            link = wants / UNIT_NAME
            if link.is_symlink():
                plan.do("remove %s" % link, link.unlink)
    for path in (dropin, unit):
        if path.exists() or path.is_symlink():
            plan.do("remove %s" % path, path.unlink)
    dropin_dir = dropin.parent
    if dropin_dir.is_dir() and not [p for p in dropin_dir.iterdir() if p != dropin]:
        plan.do("remove %s" % dropin_dir, dropin_dir.rmdir)
    elif dropin_dir.is_dir():
        plan.note("keep %s: it holds drop-ins that are not ours" % dropin_dir)
    if live:
        plan.do("systemctl daemon-reload", lambda: run(["daemon-reload"]))
    else:
        plan.note("skip systemctl (%s)" % _why_no_systemctl(root))
    plan.note("kept %s (config and certificates) and %s (the spool): remove them by hand if they should go"
              % (plan.path(CONFIG_DIR), plan.path(STATE_DIR)))
    plan.note("the edison-agent command stays: `pip uninstall edison-agent` removes it")


def unit_with_exec(unit_text: str, command: str) -> str:
    """The unit with ExecStart= running `command` (quoted for systemd when it has spaces)."""
    quoted = '"%s"' % command if re.search(r"\s", command) else command
    new, count = re.subn(r"^ExecStart=\S+", lambda _: "ExecStart=" + quoted, unit_text, flags=re.MULTILINE)
    if count != 1:
        raise InstallError("the packaged unit has %d ExecStart= lines, expected 1" % count)
    # ExecReload= runs the same command (`edison-agent reload`), so it moves with ExecStart=.
    return re.sub(r"^ExecReload=/usr/bin/edison-agent(?=\s)", lambda _: "ExecReload=" + quoted, new,
                  flags=re.MULTILINE)


def packaged_file(name: str) -> bytes:
    """A file shipped in agent/data/ (copies of systemd/ and config/, kept identical by the tests)."""
    resource = resources.files("agent") / "data" / name
    try:
        return resource.read_bytes()
    except OSError as exc:
        raise InstallError("agent/data/%s is missing from this installation (%s): reinstall the package"
                           % (name, exc.strerror or exc)) from exc


def example_config() -> bytes:
    return packaged_file("config.yaml")


def installed_systemd_version() -> Optional[int]:
    """This machine's systemd version from `systemctl --version`, or None without systemctl."""
    try:
        result = subprocess.run(["systemctl", "--version"], capture_output=True, text=True, timeout=30,
                                check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.match(r"systemd (\d+)", result.stdout)
    return int(match.group(1)) if match else None


def systemd_booted() -> bool:
    """Whether systemd runs as PID 1 here (sd_booted(3): /run/systemd/system/ exists)."""
    return os.path.isdir("/run/systemd/system")


def _check_root(root: Path, dry_run: bool, verb: str) -> Path:
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise InstallError("--root %s is not a directory" % root)
    if root == Path("/") and not dry_run and os.geteuid() != 0:
        raise InstallError("must run as root to %s into / (try sudo, or --dry-run to see what it would do)" % verb)
    return root


def _command_path(command: Optional[str]) -> str:
    if command is not None:
        if not os.path.isabs(command):
            raise InstallError("--exec %s: give an absolute path" % command)
        return command
    candidates = []
    if Path(sys.argv[0]).name == "edison-agent":
        candidates.append(sys.argv[0])
    found = shutil.which("edison-agent")
    if found:
        candidates.append(found)
    for candidate in candidates:
        path = os.path.abspath(candidate)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise InstallError("cannot find the edison-agent command: install the package first (pip install .), "
                       "or name it with --exec PATH")


def _ensure_dir(plan: _Plan, path: Path, mode: int, tighten: bool = False) -> None:
    """Create `path` with `mode`; when it exists, take away what `mode` does not allow (if `tighten`)."""
    plan.check(path)
    if path.is_dir():
        if tighten:
            _tighten(plan, path, mode)
        return
    if path.exists():
        raise InstallError("%s exists and is not a directory" % path)

    def make() -> None:
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)

    plan.do("create %s (%04o)" % (path, mode), make)


def _tighten(plan: _Plan, path: Path, mode: int) -> None:
    """Take away the permissions beyond `mode`; never add any."""
    plan.check(path)
    current = stat.S_IMODE(path.stat().st_mode)
    if current & ~mode == 0:
        return
    target = current & mode
    plan.do("chmod %04o %s (was %04o)" % (target, path, current), lambda: os.chmod(path, target))


def _install_file(plan: _Plan, path: Path, content: bytes, what: str) -> None:
    plan.check(path)
    if path.is_file() and path.read_bytes() == content:
        plan.note("keep %s (%s): unchanged" % (path, what))
        return
    verb = "replace" if path.exists() else "write"
    plan.do("%s %s (%s)" % (verb, path, what), lambda: replace_file(path, content, UNIT_MODE))


def _can_run_systemctl(root: Path) -> bool:
    return root == Path("/") and systemd_booted()


def _why_no_systemctl(root: Path) -> str:
    if root != Path("/"):
        return "--root is %s, not /" % root
    return "systemd is not running as PID 1 here"


def _systemctl(args: List[str]) -> None:
    argv = ["systemctl"] + args
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError("%s: %s" % (shlex.join(argv), exc)) from exc
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise InstallError("%s failed: %s" % (shlex.join(argv), lines[-1] if lines else "exit %d" % result.returncode))
