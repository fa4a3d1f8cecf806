"""The board steps the README and docs/operations.md give: the same lines in both, and the
certificate names in them, the example config and `pki issue-device` agree. (`make test-system`
runs the lines themselves.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import PurePosixPath
from typing import Dict

import pytest
import yaml

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tests" / "system"))
import board_steps  # noqa: E402

DOCS = (ROOT / "docs" / "operations.md").read_text()
README = (ROOT / "README.md").read_text()
CONFIG_DIR = PurePosixPath("/etc/edison-agent")


def _copies() -> Dict[str, str]:
    """scp lines of the board steps: file on the board -> file name from the workstation's pki/."""
    copies = {}
    for line in board_steps.block(DOCS):
        found = re.fullmatch(r"scp workstation:pki/(\S+) (\S+)", line)
        if found:
            copies[found.group(2)] = found.group(1)
    return copies


def test_the_readme_and_the_operations_guide_give_the_same_board_steps():
    assert board_steps.readme_board_block(README) == board_steps.block(DOCS)


@pytest.mark.parametrize("example", ["agent/data/config.yaml", "config/config.yaml"])
def test_the_example_config_names_the_files_the_steps_copy(example):
    cfg = yaml.safe_load((ROOT / example).read_text())
    tls = cfg["mqtt"]["tls"]
    named = {str(CONFIG_DIR / tls[key]) for key in ("ca_file", "cert_file", "key_file")}
    assert named == set(_copies()), "the config names %s; the steps copy to %s" % (sorted(named), sorted(_copies()))


def test_the_steps_copy_what_pki_issue_device_writes(tmp_path):
    device = re.search(r"^edison-agent pki issue-device pki/ (\S+)$", README, re.M)
    assert device, "the README's workstation steps issue no device certificate"
    pki = tmp_path / "pki"
    agent = [sys.executable, "-m", "agent", "pki"]
    subprocess.run(agent + ["init-ca", str(pki)], check=True, capture_output=True, cwd=str(ROOT))
    subprocess.run(agent + ["issue-device", str(pki), device.group(1)], check=True, capture_output=True,
                   cwd=str(ROOT))
    for source in _copies().values():
        assert (pki / source).is_file(), "the steps copy pki/%s, which pki issue-device did not write" % source
    # The config's device.id is the device the certificate was issued for (its CN).
    cfg = yaml.safe_load((ROOT / "agent" / "data" / "config.yaml").read_text())
    assert cfg["device"]["id"] == device.group(1)
