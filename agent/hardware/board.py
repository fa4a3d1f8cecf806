"""The hardware edge: libmraa on the Edison, or a simulated board anywhere else.

This is the only module that imports mraa. mraa reports failures in two styles
(exceptions from constructors and reads, integer result codes from setters), and
both are turned into BoardError here so drivers see one kind of failure.
"""

from __future__ import annotations

import threading
from types import ModuleType
from typing import Any, Callable, Optional, Tuple

from agent.errors import HardwareError

# libmraa's mraa_result_t values, so an error says more than "returned 7".
_RESULTS = {
    1: "feature not implemented on this board",
    4: "invalid parameter",
    5: "invalid handle",
    6: "no resources (pin busy or not permitted: mraa needs root or the gpio group)",
    7: "invalid resource (wrong pin mode or direction)",
    99: "unspecified error",
}


class BoardError(HardwareError):
    """A pin or bus could not be opened or read."""


class BoardUnavailable(HardwareError):
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


class I2CDevice:
    """One device on an I2C bus, over an object with mraa.I2c's methods (address already set).

    Register words come back as mraa returns them (SMBus order: the byte at `reg` is the low
    byte); big-endian sensors should read bytes and assemble them.
    """

    def __init__(self, i2c: Any, bus: int, address: int) -> None:
        self._i2c = i2c
        self.bus = bus
        self.address = address

    def _where(self) -> str:
        return "I2C bus %d device 0x%02x" % (self.bus, self.address)

    def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except ValueError as exc:
            raise BoardError("%s: %s failed: %s (is it connected, at this address?)"
                             % (self._where(), what, exc)) from None
        except OSError:
            # A failed or short buffer read: libmraa sets no errno of its own (i2c.c:220-224), so
            # the OSError's errno is 0 or left over from an earlier call; naming it would mislead.
            raise BoardError("%s: %s failed: no reply, or fewer bytes than asked (is it connected, at "
                             "this address?)" % (self._where(), what)) from None

    def read_reg(self, reg: int) -> int:
        return int(self._call("read register 0x%02x" % reg, self._i2c.readReg, reg))

    def read_word_reg(self, reg: int) -> int:
        return int(self._call("read word register 0x%02x" % reg, self._i2c.readWordReg, reg))

    def read_bytes_reg(self, reg: int, length: int) -> bytes:
        return bytes(self._call("read %d bytes at register 0x%02x" % (length, reg), self._i2c.readBytesReg,
                                reg, length))

    def read(self, length: int) -> bytes:
        return bytes(self._call("read %d bytes" % length, self._i2c.read, length))

    def write_reg(self, reg: int, value: int) -> None:
        _check(self._i2c.writeReg(reg, value), "%s: write register 0x%02x" % (self._where(), reg))

    def write_byte(self, value: int) -> None:
        _check(self._i2c.writeByte(value), "%s: write byte 0x%02x" % (self._where(), value))

    def write(self, data: bytes) -> None:
        _check(self._i2c.write(bytearray(data)), "%s: write %d bytes" % (self._where(), len(data)))


class PulseCounter:
    """Counts edges on a pin from mraa's interrupt thread; `take()` returns the count since the last take."""

    def __init__(self, gpio: Any, pin: int) -> None:
        self._gpio = gpio
        self.pin = pin
        # The callback runs on libmraa's own thread: a lock keeps `+=` and take() from losing counts.
        self._lock = threading.Lock()
        self._count = 0
        # libmraa keeps only a borrowed pointer to the callback it is given (gpio.hpp:173-176): this
        # reference is all that keeps it alive, for as long as the interrupt is armed. A bound method
        # made for the isr() call would be freed at once and the next edge would crash the agent.
        self.callback: Optional[Callable[[Any], None]] = self._edge

    def _edge(self, arg: Any = None) -> None:
        with self._lock:
            self._count += 1

    def take(self) -> int:
        with self._lock:
            count, self._count = self._count, 0
        return count

    def close(self) -> None:
        """Disarm the interrupt, then let go of the callback (never the other way round) and the pin."""
        gpio, self._gpio = self._gpio, None
        if gpio is not None:
            isr_exit = getattr(gpio, "isrExit", None)
            if isr_exit is not None:
                isr_exit()
            close = getattr(gpio, "close", None)
            if close is not None:
                close()
        self.callback = None


PULLS = ("none", "up", "down")
EDGES = ("rising", "falling", "both")


class Board:
    """Hands out pins and buses; the interface drivers program against."""

    name = "board"
    # Made-up readings: said in the health document and the online status, never hidden.
    simulated = False
    # Whether a call may hold the GIL for as long as the hardware takes (libmraa's binding does):
    # drivers on such a board run in processes of their own (agent/hardware/sensor_process.py).
    isolated_calls = False

    def analog_in(self, pin: int, bits: int = 10, part: Optional[str] = None) -> AnalogIn:
        """`part` names what is wired to the pin; a simulated board makes it behave so."""
        raise NotImplementedError

    def digital_in(self, pin: int, pull: str = "none") -> DigitalIn:
        raise NotImplementedError

    def i2c(self, bus: int, address: int, chip: Optional[str] = None) -> I2CDevice:
        """`chip` names the part the driver expects; a simulated board puts one there."""
        raise NotImplementedError

    def pulse_counter(self, pin: int, edge: str = "rising") -> PulseCounter:
        raise NotImplementedError


class MraaBoard(Board):
    isolated_calls = True

    def __init__(self, mraa: ModuleType) -> None:
        self._mraa = mraa
        self.name = "%s (mraa %s)" % (mraa.getPlatformName(), mraa.getVersion())

    def analog_in(self, pin: int, bits: int = 10, part: Optional[str] = None) -> AnalogIn:
        try:
            aio = self._mraa.Aio(pin)
        except ValueError as exc:
            raise BoardError("analog pin A%d: cannot open: %s" % (pin, exc)) from None
        if bits != 10:
            _check(aio.setBit(bits), "analog pin A%d: set %d-bit resolution" % (pin, bits))
        return AnalogIn(aio, pin, bits)

    def _gpio_in(self, pin: int, pull: str) -> Any:
        try:
            gpio = self._mraa.Gpio(pin)
        except ValueError as exc:
            raise BoardError("GPIO %d: cannot open: %s" % (pin, exc)) from None
        _check(gpio.dir(self._mraa.DIR_IN), "GPIO %d: set as input" % pin)
        if pull != "none":
            mode = {"up": self._mraa.MODE_PULLUP, "down": self._mraa.MODE_PULLDOWN}[pull]
            _check(gpio.mode(mode), "GPIO %d: pull-%s" % (pin, pull))
        return gpio

    def digital_in(self, pin: int, pull: str = "none") -> DigitalIn:
        return DigitalIn(self._gpio_in(pin, pull), pin)

    def i2c(self, bus: int, address: int, chip: Optional[str] = None) -> I2CDevice:
        try:
            i2c = self._mraa.I2c(bus)
        except ValueError as exc:
            raise BoardError("I2C bus %d: cannot open: %s" % (bus, exc)) from None
        _check(i2c.address(address), "I2C bus %d: select device 0x%02x" % (bus, address))
        return I2CDevice(i2c, bus, address)

    def pulse_counter(self, pin: int, edge: str = "rising") -> PulseCounter:
        gpio = self._gpio_in(pin, "none")
        counter = PulseCounter(gpio, pin)
        mode = {"rising": self._mraa.EDGE_RISING, "falling": self._mraa.EDGE_FALLING,
                "both": self._mraa.EDGE_BOTH}[edge]
        try:
            _check(gpio.isr(mode, counter.callback, None), "GPIO %d: interrupt on %s edges" % (pin, edge))
        except BoardError:
            counter.close()
            raise
        return counter


def import_mraa() -> Tuple[Optional[ModuleType], str]:
    """mraa, or None and the ImportError's own words (the useful part: which file is missing)."""
    try:
        import mraa
    except ImportError as exc:
        return None, str(exc) or type(exc).__name__
    module: ModuleType = mraa
    return module, ""
