"""Which board a run gets: mraa, the simulated one, or `auto` (mraa where it imports, never the
simulation on an Edison). Apart from board.py so that the board's classes do not import the
simulation that is built from them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from agent.hardware.board import Board, BoardUnavailable, MraaBoard, import_mraa

log = logging.getLogger(__name__)


# libmraa's own test for an Edison (src/x86/x86.c) reads the DMI board name; the Edison's kernel
# reports "SALT BAY" there. cpuinfo's model name is the second sign, for kernels without DMI.
EDISON_SIGNS = (("sys/devices/virtual/dmi/id/board_name", "salt bay"),
                ("proc/cpuinfo", "intel(r) cpu 4000 @ 500mhz"))


def running_on_edison(root: Path = Path("/")) -> bool:
    """Whether this machine is an Intel Edison, read from the kernel's files under `root`."""
    for name, sign in EDISON_SIGNS:
        try:
            text = (root / name).read_text(errors="replace")
        except OSError:
            continue
        if sign in text.lower():
            return True
    return False


FIX = ("install the board image's python3 mraa binding; in a virtualenv, make it with "
       "'python3 -m venv --system-site-packages' so it sees the system's mraa")


def open_board(kind: str, root: Path = Path("/")) -> Board:
    """`mraa` or a BoardUnavailable naming why; `simulated` with a warning at every start; `auto`:
    mraa when it imports, else the simulated board, except on an Edison, where made-up readings
    would pass for measured ones: there it is mraa or nothing."""
    if kind == "simulated":
        log.warning("board: simulated: every reading is made up; the health document and the online "
                    "status say so (set 'board: mraa' on a real board)")
        return _simulated()
    mraa, reason = import_mraa()
    if mraa is not None:
        return MraaBoard(mraa)
    if kind == "mraa":
        raise BoardUnavailable("the mraa Python module cannot be imported (%s), and 'board: mraa' never "
                               "falls back to made-up readings: %s" % (reason, FIX))
    if running_on_edison(root):
        raise BoardUnavailable("'board: auto' on an Intel Edison, but the mraa Python module cannot be "
                               "imported (%s): %s. The simulated board is never chosen on an Edison "
                               "by 'auto'" % (reason, FIX))
    log.warning("board: auto: mraa cannot be imported (%s), so the simulated board is in use: every "
                "reading is made up; the health document and the online status say so. Set "
                "'board: mraa' to refuse to start instead, or 'board: simulated'", reason)
    return _simulated()


def _simulated() -> Board:
    # Imported here: the simulation is not needed on a board with mraa.
    from agent.hardware.simulated import SimulatedBoard

    return SimulatedBoard()
