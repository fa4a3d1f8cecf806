"""The unit files: systemd-analyze verify (strict), only what systemd 216 has in the base unit,
and the hardened unit's `systemd-analyze security` score.

`systemd-analyze verify` exits 0 even on a misspelt key unless given --recursive-errors=, and it
fails on an ExecStart= binary that does not exist; so the units are checked in a scratch --root
holding this system's targets and a stand-in for /usr/bin/edison-agent.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from agent.tools import install
from conftest import ROOT

UNIT = ROOT / "systemd" / "edison-agent.service"
DROPIN = ROOT / "systemd" / "edison-agent.service.d" / "hardening.conf"
SYSTEM_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))

# Every setting the base unit may use, with the evidence that systemd 216 (the Edison's stock
# image) knows it. "man: no version note" means systemd's man page (systemd.unit(5),
# systemd.service(5), systemd.kill(5)) gives the setting no "Added in version N" line, which it
# does for everything from 183 on; "NEWS N" is the release notes of version N.
KNOWN_TO_216: Dict[Tuple[str, str], str] = {
    ("Unit", "Description"): "systemd.unit(5): no version note (before 183)",
    ("Unit", "Documentation"): "NEWS 183: 'We introduced the Documentation= field for units'",
    ("Unit", "Wants"): "systemd.unit(5): no version note (before 183)",
    ("Unit", "After"): "systemd.unit(5): no version note (before 183)",
    ("Service", "Type"): "systemd.service(5): no version note; Type=notify predates 183 (sd_notify(3))",
    ("Service", "NotifyAccess"): "systemd.service(5): no version note (before 183)",
    ("Service", "ExecStart"): "systemd.service(5): no version note (before 183)",
    ("Service", "ExecReload"): "systemd.service(5): no version note (before 183)",
    ("Service", "WatchdogSec"): "systemd.service(5): no version note; NEWS 40-42: service watchdog support",
    ("Service", "Restart"): "systemd.service(5): no version note (before 183)",
    ("Service", "RestartSec"): "systemd.service(5): no version note (before 183)",
    ("Service", "RestartPreventExitStatus"): "systemd.service(5): 'Added in version 189'; NEWS 189",
    ("Service", "StartLimitInterval"): "NEWS 229: moved from [Service] to [Unit] (and still read in [Service]); "
                                       "NEWS 213 already extends it with StartLimitAction=",
    ("Service", "StartLimitBurst"): "NEWS 229 (as StartLimitInterval=)",
    ("Service", "KillMode"): "systemd.kill(5): no version note; the 'mixed' mode: NEWS 209",
    ("Service", "TimeoutStopSec"): "systemd.service(5): 'Added in version 188'",
    ("Install", "WantedBy"): "systemd.unit(5): no version note (before 183)",
}

# Settings (or values) systemd 216 lacks, which 216 would skip without a word: FIELD-NOTES
# ("The Intel Edison") and NEWS. The allow-list above already keeps them out; this list says why
# in the failure message when someone tries.
NEWER_THAN_216 = {
    "DynamicUser": "232 (NEWS 232)",
    "ReadWritePaths": "231 (NEWS 231; 216 has ReadWriteDirectories=)",
    "StateDirectory": "235 (NEWS 235)",
    "ConfigurationDirectory": "235 (NEWS 235)",
    "StartLimitIntervalSec": "229 (the [Unit] spelling; systemd.unit(5) 'Added in version 229')",
    "ProtectKernelTunables": "232 (NEWS 232)",
    "ProtectControlGroups": "232 (NEWS 232)",
}
NEWER_VALUES = {("Service", "Type"): {"exec": 240, "notify-reload": 253},
                ("Service", "NotifyAccess"): {"exec": 233},
                ("Service", "ProtectSystem"): {"strict": 232}}


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail("%s is not installed: apt-get install systemd (CI needs it for the unit checks)" % tool)
    return path


def _settings(path: Path) -> List[Tuple[str, str, str]]:
    """(section, key, value) for each line of a unit file, in order."""
    out, section = [], ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        header = re.fullmatch(r"\[(\w+)\]", line)
        if header:
            section = header.group(1)
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


@pytest.fixture
def scratch_root(tmp_path: Path) -> Path:
    """A root with this system's targets, stand-in binaries and the unit (no drop-in yet)."""
    source = next((d for d in SYSTEM_UNIT_DIRS if (d / "multi-user.target").exists()), None)
    if source is None:
        pytest.fail("no systemd targets under %s: apt-get install systemd" % " or ".join(map(str, SYSTEM_UNIT_DIRS)))
    units = tmp_path / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    for target in source.glob("*.target"):
        shutil.copy(target, units / target.name)
    for binary in ("usr/bin/edison-agent",):
        stand_in = tmp_path / binary
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#!/bin/sh\nexit 0\n")
        stand_in.chmod(0o755)
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, tmp_path / "etc/systemd/system" / UNIT.name)
    return tmp_path


def _add_dropin(root: Path, text: str) -> None:
    d = root / "etc/systemd/system/edison-agent.service.d"
    d.mkdir(exist_ok=True)
    (d / "hardening.conf").write_text(text)


def _verify(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_require("systemd-analyze"), "verify", "--recursive-errors=one", "--root", str(root),
                           "edison-agent.service"], capture_output=True, text=True, timeout=60)


def test_verify_catches_a_misspelt_key(scratch_root):
    # Without this the other verify tests could pass by checking nothing.
    unit = scratch_root / "etc/systemd/system/edison-agent.service"
    unit.write_text(unit.read_text().replace("\nRestart=on-failure", "\nRestat=on-failure"))
    result = _verify(scratch_root)
    assert result.returncode != 0
    assert "Unknown key" in result.stderr and "Restat" in result.stderr


def test_the_base_unit_verifies(scratch_root):
    result = _verify(scratch_root)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_the_base_unit_with_the_hardening_dropin_verifies(scratch_root):
    _add_dropin(scratch_root, DROPIN.read_text())
    result = _verify(scratch_root)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_a_misspelt_key_in_the_dropin_is_caught_too(scratch_root):
    _add_dropin(scratch_root, DROPIN.read_text().replace("ProtectHome=", "ProtectHomes="))
    result = _verify(scratch_root)
    assert result.returncode != 0 and "ProtectHomes" in result.stderr


def test_the_base_unit_uses_only_what_systemd_216_has():
    for section, key, value in _settings(UNIT):
        assert key not in NEWER_THAN_216, "%s= needs systemd %s" % (key, NEWER_THAN_216[key])
        assert (section, key) in KNOWN_TO_216, (
            "[%s] %s= is not known to be in systemd 216: check systemd's NEWS and man pages, then add it to "
            "KNOWN_TO_216 with the evidence, or move it to the hardening drop-in" % (section, key))
        too_new = NEWER_VALUES.get((section, key), {})
        assert value not in too_new, "%s=%s needs systemd %d" % (key, value, too_new[value])


def test_the_base_unit_says_what_the_issue_asks():
    settings = {(s, k): v for s, k, v in _settings(UNIT)}
    assert settings[("Service", "Type")] == "notify"
    assert settings[("Service", "NotifyAccess")] == "main"
    assert settings[("Service", "WatchdogSec")] == "30"
    assert settings[("Service", "Restart")] == "on-failure"
    assert settings[("Service", "RestartPreventExitStatus")] == "2"
    # A reload that returns when the agent has reloaded (agent/service/reload.py), not `kill -HUP`, which races.
    assert settings[("Service", "ExecReload")] == "/usr/bin/edison-agent reload --pid $MAINPID"
    assert settings[("Service", "ExecStart")] == "/usr/bin/edison-agent run -c /etc/edison-agent/config.yaml"
    assert "network-online.target" in settings[("Unit", "Wants")]
    assert settings[("Unit", "After")].split() == ["network-online.target", "time-sync.target"]
    # The start limit must be reachable: 5 restarts 5 s apart fit in the interval.
    restart_sec, burst = int(settings[("Service", "RestartSec")]), int(settings[("Service", "StartLimitBurst")])
    assert burst * restart_sec < int(settings[("Service", "StartLimitInterval")])


def test_the_dropin_holds_only_settings_whose_systemd_version_install_knows():
    keys = {key for _, key, _ in _settings(DROPIN)}
    unknown = keys - set(install.HARDENING_SINCE)
    assert not unknown, "add these to agent/tools/install.py HARDENING_SINCE with their systemd version: %s" % unknown
    assert install.HARDENING_MIN_SYSTEMD == max(install.HARDENING_SINCE[k] for k in keys) == 247
    assert "systemd %d or newer" % install.HARDENING_MIN_SYSTEMD in DROPIN.read_text()


def test_the_hardened_unit_scores_ok_or_better(scratch_root):
    _add_dropin(scratch_root, DROPIN.read_text())
    result = subprocess.run([_require("systemd-analyze"), "security", "--offline=true", "--root", str(scratch_root),
                             "edison-agent.service"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for edison-agent\.service: (\d+\.\d) (\w+)", result.stdout)
    assert match, result.stdout[-2000:]
    exposure, level = float(match.group(1)), match.group(2)
    assert level in ("OK", "SAFE", "PERFECT"), "exposure %.1f %s:\n%s" % (exposure, level, result.stdout)
    assert exposure < 5.0
    # The drop-in's comment tells the reader the score: it must be the one systemd gives.
    said = re.search(r"\((\d+\.\d) (\w+) with systemd (\d+)\)", DROPIN.read_text())
    assert said, "the drop-in's comment does not give its systemd-analyze security score"
    version = subprocess.run([_require("systemctl"), "--version"], capture_output=True, text=True).stdout.split()[1]
    if said.group(3) == version:
        assert (float(said.group(1)), said.group(2)) == (exposure, level), (
            "hardening.conf says %s %s with systemd %s; measured %.1f %s"
            % (said[1], said[2], said[3], exposure, level))


def test_the_base_unit_alone_scores_badly_which_is_why_the_dropin_exists(scratch_root):
    result = subprocess.run([_require("systemd-analyze"), "security", "--offline=true", "--root", str(scratch_root),
                             "edison-agent.service"], capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for edison-agent\.service: (\d+\.\d) (\w+)", result.stdout)
    assert match and match.group(2) not in ("OK", "SAFE", "PERFECT")


def test_what_install_writes_verifies(scratch_root):
    (scratch_root / "etc/systemd/system/edison-agent.service").unlink()
    install.install(scratch_root, systemd_version=252, command="/usr/bin/edison-agent", out=lambda line: None)
    assert (scratch_root / "etc/systemd/system/edison-agent.service.d/hardening.conf").exists()
    result = _verify(scratch_root)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_install_points_execreload_at_the_same_command_as_execstart(scratch_root):
    # ExecReload= runs `edison-agent reload`: on a board where the command lives in a venv, a
    # /usr/bin/edison-agent left in ExecReload= would fail every reload.
    (scratch_root / "etc/systemd/system/edison-agent.service").unlink()
    install.install(scratch_root, systemd_version=252, command="/opt/edison-agent/bin/edison-agent",
                    out=lambda line: None)
    settings = {(s, k): v for s, k, v in _settings(scratch_root / "etc/systemd/system/edison-agent.service")}
    assert settings[("Service", "ExecStart")].startswith("/opt/edison-agent/bin/edison-agent run ")
    assert settings[("Service", "ExecReload")] == "/opt/edison-agent/bin/edison-agent reload --pid $MAINPID"
