"""The board's install steps as docs/operations.md gives them, and how the system test runs them.

The docs are the script: `make test-system` runs the lines of the block marked `board-steps` as
written, except where a line needs a person or another machine, each replaced as said here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List

MARKER = "<!-- board-steps"
# A line of the docs -> what the container runs instead (the rest run as written).
STAND_INS = {
    # The copy of this repository is mounted there.
    "/path/to/edison-agent": "/root/edison-agent",
    # The workstation is the container itself: its pki/ is /root/pki.
    "scp workstation:pki/": "cp /root/pki/",
}
# What a person does in vi: the broker's name resolves here (the container is the gateway too),
# readings every second rather than ten, for a test that waits for them, and a Wi-Fi sensor,
# which fails in the container on any host (its private network has no wireless interface), so
# the journal has entries with SENSOR= for the checks. `sensors:` is the example's last section.
# The container has no libmraa: the shipped `board: mraa` would (rightly) stop the agent with exit 2,
# so the person trying it off a board says `board: simulated`, as docs/operations.md tells them.
VI = ("echo '127.0.0.1 iotgateway1' >> /etc/hosts\n"
      "sed -i 's/^board: mraa /board: simulated /' /etc/edison-agent/config.yaml\n"
      "sed -i 's/\\(name: temperature, type: analog, pin: 0, interval:\\) 10,/\\1 1,/' /etc/edison-agent/config.yaml\n"
      "echo '  - {name: rssi, type: wifi, interval: 5}' >> /etc/edison-agent/config.yaml")


def block(markdown: str, marker: str = MARKER) -> List[str]:
    """The command lines of the first ```sh block after `marker` (else the first after the
    "Quick start on the board" heading's second block, for the README)."""
    tail = markdown[markdown.index(marker):]
    found = re.search(r"```sh\n(.*?)```", tail, re.S)
    assert found, "no ```sh block after %r" % marker
    return [line.split("  #")[0].rstrip() for line in found.group(1).splitlines() if line.strip()]


def readme_board_block(readme: str) -> List[str]:
    section = readme[readme.index("## Quick start on the board"):]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    return [line.split("  #")[0].rstrip() for line in blocks[1].splitlines() if line.strip()]


def script(docs: Path) -> str:
    """The docs' steps up to (not including) starting the service, which the checks do themselves."""
    lines = []
    for line in block(docs.read_text()):
        if line.startswith("systemctl start"):
            break
        if line.startswith("vi "):
            lines.append(VI)
            continue
        for text, stand_in in STAND_INS.items():
            line = line.replace(text, stand_in)
        lines.append(line)
    return "set -ex\n" + "\n".join(lines) + "\n"
