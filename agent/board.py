"""The hardware edge: libmraa on the Edison, or a simulated board anywhere else.

This is the only module that imports mraa. mraa reports failures in two styles
(exceptions from constructors and reads, integer result codes from setters), and
both are turned into BoardError here so drivers see one kind of failure.
"""

from __future__ import annotations

import logging
import math
import random
import time
from types import ModuleType
from typing import Any, Optional

log = logging.getLogger(__name__)

# libmraa's mraa_result_t values, so an error says more than "returned 7".
_RESULTS = {
    1: "feature not implemented on this board",
    4: "invalid parameter",
    5: "invalid handle",
    6: "no resources (pin busy or not permitted: mraa needs root or the gpio group)",
    7: "invalid resource (wrong pin mode or direction)",
    99: "unspecified error",
}


class BoardError(Exception):
    """A pin or bus could not be opened or read."""


class BoardUnavailable(Exception):
    """`board: mraa` was asked for, but mraa cannot be imported."""


def _check(code: Any, what: str) -> None:
    if code != 0:
        raise BoardError("%s: %s (mraa result %s)" % (what, _RESULTS.get(code, "error"), code))


class AnalogIn:
    def __init__(self, aio: Any, pin: int, bits: int) -> None:
        self._aio = aio
        self.pin = pin
        self.bits = bits

    @property
    def max_raw(self) -> int:
        return (1 << self.bits) - 1

    def read(self) -> int:
        try:
            return int(self._aio.read())
        except ValueError as exc:
            raise BoardError("analog pin A%d: read failed: %s" % (self.pin, exc)) from None


class DigitalIn:
    def __init__(self, gpio: Any, pin: int) -> None:
        self._gpio = gpio
        self.pin = pin

    def read(self) -> int:
        try:
            level = int(self._gpio.read())
        except ValueError as exc:
            raise BoardError("GPIO %d: read failed: %s" % (self.pin, exc)) from None
        if level < 0:
            raise BoardError("GPIO %d: read failed (mraa returned %d)" % (self.pin, level))
        return level


class Board:
    """Hands out pins; the interface drivers program against."""

    name = "board"

    def analog_in(self, pin: int, bits: int = 10) -> AnalogIn:
        raise NotImplementedError

    def digital_in(self, pin: int) -> DigitalIn:
        raise NotImplementedError


class MraaBoard(Board):
    def __init__(self, mraa: ModuleType) -> None:
        self._mraa = mraa
        self.name = "%s (mraa %s)" % (mraa.getPlatformName(), mraa.getVersion())

    def analog_in(self, pin: int, bits: int = 10) -> AnalogIn:
        try:
            aio = self._mraa.Aio(pin)
        except ValueError as exc:
            raise BoardError("analog pin A%d: cannot open: %s" % (pin, exc)) from None
        if bits != 10:
            _check(aio.setBit(bits), "analog pin A%d: set %d-bit resolution" % (pin, bits))
        return AnalogIn(aio, pin, bits)

    def digital_in(self, pin: int) -> DigitalIn:
        try:
            gpio = self._mraa.Gpio(pin)
        except ValueError as exc:
            raise BoardError("GPIO %d: cannot open: %s" % (pin, exc)) from None
        _check(gpio.dir(self._mraa.DIR_IN), "GPIO %d: set as input" % pin)
        return DigitalIn(gpio, pin)


class _SimulatedAio:
    """A slow sine with a little noise around 15% of full scale: with the shipped example's
    scale (0.4883) and offset (-50) that reads as a room at about 20 degC."""

    def __init__(self, pin: int, bits: int) -> None:
        self._pin = pin
        self._bits = bits
        self._rng = random.Random(pin)

    def read(self) -> int:
        full = (1 << self._bits) - 1
        phase = time.time() / 60.0 * 2 * math.pi + self._pin
        fraction = 0.145 + 0.01 * math.sin(phase) + self._rng.uniform(-0.002, 0.002)
        return max(0, min(full, int(round(fraction * full))))


class _SimulatedGpio:
    """Changes level every few seconds, like a door that is opened now and then."""

    def __init__(self, pin: int) -> None:
        self._pin = pin

    def read(self) -> int:
        return int(time.time() // (5 + self._pin)) % 2


class SimulatedBoard(Board):
    name = "simulated board"

    def analog_in(self, pin: int, bits: int = 10) -> AnalogIn:
        return AnalogIn(_SimulatedAio(pin, bits), pin, bits)

    def digital_in(self, pin: int) -> DigitalIn:
        return DigitalIn(_SimulatedGpio(pin), pin)


def _import_mraa() -> Optional[ModuleType]:
    try:
        import mraa
    except ImportError:
        return None
    module: ModuleType = mraa
    return module


def open_board(kind: str) -> Board:
    """`auto` takes mraa when it imports, else the simulated board (with one warning)."""
    if kind == "simulated":
        return SimulatedBoard()
    mraa = _import_mraa()
    if mraa is not None:
        return MraaBoard(mraa)
    if kind == "mraa":
        raise BoardUnavailable("the mraa Python module cannot be imported: install the board image's "
                               "python3 mraa binding, or set 'board: simulated'")
    log.warning("mraa is not available: using the simulated board (set 'board: simulated' to silence this)")
    return SimulatedBoard()
