"""Issue 19 item 7: a command whose reader goes away (`edison-agent doctor | head -1`) ends quietly."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
import yaml
from test_health_report import _report as report

from agent.service import health_report
from conftest import ROOT, Broker, Certs, agent_config


def _run_into_a_closed_pipe(args: List[str]) -> "subprocess.CompletedProcess[bytes]":
    """Run `python -m agent ARGS` with stdout a pipe whose reader has already gone, as `head` leaves it
    once it has its line: every write the command makes fails with EPIPE, whatever the timing."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "agent", *args], cwd=str(ROOT), stdout=write_end,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=60)
    finally:
        os.close(write_end)


@pytest.fixture
def config_file(certs: Certs, broker: Broker, tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(agent_config(certs, broker.port)))
    return path


@pytest.mark.parametrize("command", [
    ["check-config", "-c", "{config}"],
    ["doctor", "-c", "{config}"],
    ["doctor", "--json", "-c", "{config}"],
    ["status", "--file", "{health}"],
    ["pki", "list", "{pki}"],
    ["pki", "acl"],
])
def test_a_command_whose_reader_went_away_exits_141_and_says_nothing(command: List[str], config_file: Path,
                                                                    certs: Certs, tmp_path: Path) -> None:
    health = tmp_path / "health.json"
    health_report.write_atomically(health, report(time.time()).to_json())
    args = [a.format(config=config_file, health=health, pki=certs.dir) for a in command]
    result = _run_into_a_closed_pipe(args)
    # 141 = 128 + SIGPIPE: what a shell shows for `yes | head -1`, so `set -o pipefail` scripts see the
    # same thing from us as from coreutils, and nothing on stderr, where "internal error" used to be.
    assert (result.returncode, result.stderr.decode()) == (141, "")
