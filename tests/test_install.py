"""`edison-agent install` / `uninstall` against temporary root directories."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from agent import cli
from agent.tools import install
from conftest import ROOT

AGENT = "/opt/edison-agent/bin/edison-agent"
UNIT = Path("etc/systemd/system/edison-agent.service")
DROPIN = Path("etc/systemd/system/edison-agent.service.d/hardening.conf")
CONFIG = Path("etc/edison-agent/config.yaml")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _snapshot(root: Path) -> Dict[str, Tuple[int, bytes]]:
    """Every path under root with its mode and (for files) content."""
    out = {}
    for path in sorted(root.rglob("*")):
        content = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        out[str(path.relative_to(root))] = (path.lstat().st_mode, content)
    return out


def _install(root: Path, version: int = 252, **kwargs) -> List[str]:
    lines: List[str] = []
    install.install(root, systemd_version=version, command=AGENT, out=lines.append, **kwargs)
    return lines


def _uninstall(root: Path, **kwargs) -> List[str]:
    lines: List[str] = []
    install.uninstall(root, out=lines.append, **kwargs)
    return lines


@pytest.mark.parametrize("copy, source", [
    ("config.yaml", "config/config.yaml"),
    ("edison-agent.service", "systemd/edison-agent.service"),
    ("hardening.conf", "systemd/edison-agent.service.d/hardening.conf"),
])
def test_the_packaged_copies_match_the_repository(copy, source):
    assert (ROOT / "agent" / "data" / copy).read_bytes() == (ROOT / source).read_bytes(), (
        "agent/data/%s differs from %s: cp %s agent/data/%s" % (copy, source, source, copy))
    assert install.packaged_file(copy) == (ROOT / source).read_bytes()


def test_install_creates_everything_with_its_mode(tmp_path):
    _install(tmp_path)
    assert _mode(tmp_path / "etc/edison-agent") == 0o750
    assert _mode(tmp_path / CONFIG) == 0o640
    assert (tmp_path / CONFIG).read_bytes() == (ROOT / "config/config.yaml").read_bytes()
    assert _mode(tmp_path / "etc/edison-agent/certs") == 0o700
    assert _mode(tmp_path / "var/lib/edison-agent") == 0o700
    assert _mode(tmp_path / UNIT) == 0o644
    assert _mode(tmp_path / DROPIN) == 0o644
    assert (tmp_path / DROPIN).read_bytes() == (ROOT / "systemd/edison-agent.service.d/hardening.conf").read_bytes()


def test_the_unit_runs_this_command(tmp_path):
    _install(tmp_path)
    unit = (tmp_path / UNIT).read_text()
    assert "\nExecStart=%s run -c /etc/edison-agent/config.yaml\n" % AGENT in unit
    # Nothing else changed.
    assert unit.replace(AGENT, "/usr/bin/edison-agent") == (ROOT / "systemd/edison-agent.service").read_text()


def test_a_command_path_with_a_space_is_quoted():
    text = install.unit_with_exec("[Service]\nExecStart=/usr/bin/edison-agent run\n", "/opt/my agent/edison-agent")
    assert 'ExecStart="/opt/my agent/edison-agent" run' in text


def test_without_exec_the_command_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(Path(sys.executable).parent / "edison-agent"), "install"])
    install.install(tmp_path, systemd_version=252, out=lambda line: None)
    assert "ExecStart=%s run" % (Path(sys.executable).parent / "edison-agent") in (tmp_path / UNIT).read_text()


def test_an_existing_config_is_never_overwritten_only_tightened(tmp_path):
    config = tmp_path / CONFIG
    config.parent.mkdir(parents=True)
    config.write_text("mqtt: {host: mine}\n")
    config.chmod(0o644)
    key = tmp_path / "etc/edison-agent/certs/thunder10.key"
    key.parent.mkdir()
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o644)
    key.parent.chmod(0o755)
    lines = _install(tmp_path)
    assert config.read_text() == "mqtt: {host: mine}\n"
    assert _mode(config) == 0o640
    assert _mode(key) == 0o600
    assert _mode(key.parent) == 0o700
    assert any("never overwritten" in line for line in lines)
    assert "chmod 0600 %s (was 0644)" % key in lines


def test_a_second_install_changes_nothing(tmp_path):
    _install(tmp_path)
    before = _snapshot(tmp_path)
    lines = _install(tmp_path)
    assert _snapshot(tmp_path) == before
    assert not [line for line in lines if line.startswith(("create", "write", "replace", "chmod"))], lines


def test_dry_run_changes_nothing(tmp_path):
    (tmp_path / "etc").mkdir()
    before = _snapshot(tmp_path)
    lines = _install(tmp_path, dry_run=True)
    assert _snapshot(tmp_path) == before
    assert lines and all(line.startswith("[dry-run] ") for line in lines)
    assert "[dry-run] write %s (0640) from the example: edit mqtt.host and device.id" % (tmp_path / CONFIG) in lines


def test_dry_run_of_an_update_changes_nothing(tmp_path):
    _install(tmp_path, version=216)
    (tmp_path / CONFIG).chmod(0o666)
    before = _snapshot(tmp_path)
    lines = _install(tmp_path, version=252, dry_run=True)
    assert _snapshot(tmp_path) == before
    assert "[dry-run] write %s (the hardening drop-in, for systemd 252)" % (tmp_path / DROPIN) in lines
    assert "[dry-run] chmod 0640 %s (was 0666)" % (tmp_path / CONFIG) in lines


@pytest.mark.parametrize("version, hardened", [(216, False), (246, False), (247, True), (252, True), (None, False)])
def test_the_dropin_only_where_systemd_knows_all_of_it(tmp_path, version, hardened, monkeypatch):
    monkeypatch.setattr(install, "installed_systemd_version", lambda: None)
    lines = _install(tmp_path, version=version)
    assert (tmp_path / DROPIN).exists() == hardened
    if not hardened:
        assert any(line.startswith("skip the hardening drop-in") for line in lines)


def test_an_older_systemd_drops_a_stale_dropin(tmp_path):
    _install(tmp_path, version=252)
    _install(tmp_path, version=216)
    assert not (tmp_path / DROPIN).exists()
    assert (tmp_path / UNIT).exists()


def test_systemctl_runs_only_on_a_live_system(tmp_path, monkeypatch):
    calls: List[List[str]] = []
    lines = _install(tmp_path, systemctl=calls.append)
    assert calls == []
    assert any("skip systemctl (--root is %s, not /)" % tmp_path in line for line in lines)
    # Pretend tmp_path is / on a board that runs systemd.
    monkeypatch.setattr(install, "_can_run_systemctl", lambda root: True)
    _install(tmp_path, systemctl=calls.append)
    assert calls == [["daemon-reload"], ["enable", "edison-agent.service"]]
    calls.clear()
    _uninstall(tmp_path, systemctl=calls.append)
    assert calls == [["disable", "--now", "edison-agent.service"], ["daemon-reload"]]


def test_a_failing_systemctl_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(install, "_can_run_systemctl", lambda root: True)
    monkeypatch.setattr(install, "_systemctl", lambda args: (_ for _ in ()).throw(
        install.InstallError("systemctl enable edison-agent.service failed: Access denied")))
    code = cli.main(["install", "--root", str(tmp_path), "--systemd-version", "252", "--exec", AGENT])
    assert code == 2
    err = capsys.readouterr().err
    assert err == "edison-agent install: systemctl enable edison-agent.service failed: Access denied\n"


def test_uninstall_removes_the_wiring_and_keeps_config_certs_and_spool(tmp_path):
    _install(tmp_path)
    (tmp_path / "etc/edison-agent/certs/ca.crt").write_text("cert")
    (tmp_path / "var/lib/edison-agent/spool.db").write_text("readings")
    wants = tmp_path / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir()
    (wants / "edison-agent.service").symlink_to("/etc/systemd/system/edison-agent.service")
    lines = _uninstall(tmp_path)
    assert not (tmp_path / UNIT).exists()
    assert not (tmp_path / DROPIN).parent.exists()
    assert not (wants / "edison-agent.service").is_symlink()
    assert (tmp_path / CONFIG).exists()
    assert (tmp_path / "etc/edison-agent/certs/ca.crt").read_text() == "cert"
    assert (tmp_path / "var/lib/edison-agent/spool.db").read_text() == "readings"
    assert any(line.startswith("kept %s" % (tmp_path / "etc/edison-agent")) for line in lines)


def test_uninstall_keeps_someone_elses_dropin(tmp_path):
    _install(tmp_path)
    other = tmp_path / DROPIN.parent / "local.conf"
    other.write_text("[Service]\nEnvironment=X=1\n")
    _uninstall(tmp_path)
    assert other.exists()
    assert not (tmp_path / DROPIN).exists()


def test_uninstall_dry_run_changes_nothing(tmp_path):
    _install(tmp_path)
    before = _snapshot(tmp_path)
    lines = _uninstall(tmp_path, dry_run=True)
    assert _snapshot(tmp_path) == before
    assert "[dry-run] remove %s" % (tmp_path / UNIT) in lines


def test_not_root_on_the_real_system_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for verb in ("install", "uninstall"):
        assert cli.main([verb]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("edison-agent %s: must run as root" % verb), err


def test_a_missing_root_directory_is_one_line_and_exit_2(tmp_path, capsys):
    assert cli.main(["install", "--root", str(tmp_path / "nowhere"), "--exec", AGENT]) == 2
    assert capsys.readouterr().err == "edison-agent install: --root %s is not a directory\n" % (tmp_path / "nowhere")


def test_an_unwritable_root_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "etc").write_text("not a directory")
    assert cli.main(["install", "--root", str(tmp_path), "--systemd-version", "252", "--exec", AGENT]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edison-agent install: create %s" % (tmp_path / "etc/edison-agent"))


def test_the_command_line_dry_run(tmp_path):
    # Through the installed console script, as a person would run it.
    agent = Path(sys.executable).parent / "edison-agent"
    result = subprocess.run([str(agent), "install", "--root", str(tmp_path), "--dry-run", "--systemd-version", "216"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "[dry-run] write %s (the unit, ExecStart=%s)" % (tmp_path / UNIT, agent) in result.stdout
    assert "skip the hardening drop-in: systemd 216 is older than 247" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_the_systemd_version_is_read_from_systemctl():
    version = install.installed_systemd_version()
    assert version is not None and version >= 216, "systemctl --version: apt-get install systemd"


# -- symlinks planted in the target tree -----------------------------------------------------------

@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """Files outside the --root tree that a planted symlink points at: they must not change."""
    there = tmp_path / "outside"
    (there / "certs").mkdir(parents=True)
    (there / "config.yaml").write_text("someone else's\n")
    (there / "certs" / "thunder10.key").write_text("someone else's key\n")
    for path in (there, there / "certs", there / "config.yaml", there / "certs" / "thunder10.key"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return there


@pytest.mark.parametrize("planted, target", [
    ("etc/edison-agent", "."),  # the whole config directory
    ("etc/edison-agent/config.yaml", "config.yaml"),
    ("etc/edison-agent/certs", "certs"),
    ("etc/edison-agent/certs/thunder10.key", "certs/thunder10.key"),
    ("var/lib/edison-agent", "certs"),
    ("etc/systemd", "."),
])
def test_install_refuses_to_follow_a_symlink_planted_in_the_target_tree(tmp_path, outside, planted, target):
    # Before: install chmod'ed the files the links pointed at (0644 -> 0640/0600/0700) and wrote into them.
    root = tmp_path / "root"
    link = root / planted
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside / target)
    before = _snapshot(outside)
    with pytest.raises(install.InstallError, match="symlink .*refusing to follow it"):
        _install(root)
    assert _snapshot(outside) == before
    assert cli.main(["install", "--root", str(root), "--systemd-version", "252", "--exec", AGENT]) == 2
    assert _snapshot(outside) == before
