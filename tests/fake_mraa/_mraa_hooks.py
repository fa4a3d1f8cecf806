"""The fake `mraa`'s test-control hooks (not mraa API) and the initial state from the
environment (mraa.py beside this file; README.md).
"""

from __future__ import annotations

import threading as _threading
from collections.abc import Mapping
from typing import Dict, List, Optional, Tuple, Union

import _mraa_state
from _mraa_consts import (
    _ADC_SUPPORTED_BITS,
    _AIO_CHANNELS,
    _DEFAULT_FRACTION,
    _GPIO_PINS,
    _I2C_BUS,
    _I2C_BUS_COUNT,
    _ISR_TIMEOUT,
    EDGE_BOTH,
    EDGE_FALLING,
    EDGE_RISING,
)
from _mraa_state import (
    _analog,
    _failing,
    _hangs,
    _i2c_devices,
    _I2cDevice,
    _I2cSlave,
    _isr_errors,
    _isr_threads,
    _lock,
    _no_edge,
    _pin,
    _pins,
    _pulse_rates,
    _uart_rx,
    _uart_tx,
)

# --------------------------------------------------------------------------------------
# Test-control hooks (not mraa API)
# --------------------------------------------------------------------------------------

_KINDS = ("aio", "gpio", "i2c")


def _check_channel(channel: int) -> int:
    if not isinstance(channel, int) or channel not in _AIO_CHANNELS:
        raise ValueError("fake mraa: no analog channel %r (A0-A5 are 0-5)" % (channel,))
    return int(channel)


def _check_gpio(pin: int) -> int:
    if not isinstance(pin, int) or pin not in _GPIO_PINS:
        raise ValueError("fake mraa: no gpio pin %r (0-19)" % (pin,))
    return int(pin)


def _check_bus(bus: int) -> int:
    """Buses as I2c(bus) sees them: 0-8 all lead to bus 6."""
    if not isinstance(bus, int) or not 0 <= bus < _I2C_BUS_COUNT:
        raise ValueError("fake mraa: no i2c bus %r (0-8, all moved to 6)" % (bus,))
    return _I2C_BUS


def _reset() -> None:
    """Back to a freshly booted board: every analog input at 0.5 of full scale, every gpio an
    input reading 0, no I2C devices, no failures, no isr threads, empty UART."""
    with _lock:
        threads = list(_isr_threads)
        _isr_threads.clear()
        _hangs.clear()
        _pulse_rates.clear()
        _mraa_state._stale_errno = 0
        _mraa_state._max_analog_value = (1 << _ADC_SUPPORTED_BITS) - 1
        _analog.clear()
        _analog.update({ch: _DEFAULT_FRACTION for ch in _AIO_CHANNELS})
        _pins.clear()
        _i2c_devices.clear()
        for pins in _failing.values():
            pins.clear()
        _no_edge.clear()
        del _uart_rx[:]
        del _uart_tx[:]
        del _isr_errors[:]
    for thread in threads:
        thread.stop()


def _set_analog(channel: int, fraction: float) -> None:
    """Aio(channel).read() returns round(fraction * (2**bits - 1))."""
    channel = _check_channel(channel)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
        raise ValueError("fake mraa: analog fraction must be within 0.0-1.0, not %r" % (fraction,))
    with _lock:
        _analog[channel] = float(fraction)


def _set_gpio(pin: int, level: int) -> None:
    """What Gpio(pin).read() returns while the pin is an input."""
    pin = _check_gpio(pin)
    if level not in (0, 1):
        raise ValueError("fake mraa: gpio level must be 0 or 1, not %r" % (level,))
    with _lock:
        _pin(pin).level = int(level)


def _fail_reads(kind: str, pin: int, failing: bool = True) -> None:
    """Make reads on one pin or bus fail, each in the real binding's style for that call:
    "aio": Aio.read() raises ValueError (readFloat() returns garbage, as the real one does);
    "gpio": Gpio.read() returns -1 (the real Gpio.read() never raises);
    "i2c": readByte/readReg/readWordReg raise ValueError, read/readBytesReg raise OSError."""
    if kind not in _KINDS:
        raise ValueError("fake mraa: kind must be one of %s, not %r" % (', '.join(_KINDS), kind))
    if kind == "aio":
        pin = _check_channel(pin)
    elif kind == "gpio":
        pin = _check_gpio(pin)
    else:
        pin = _check_bus(pin)
    with _lock:
        if failing:
            _failing[kind].add(pin)
        else:
            _failing[kind].discard(pin)


def _add_i2c_device(bus: int, address: int, registers: Union[Dict[int, int], _I2cSlave]) -> None:
    """Attach a register-map slave, or any object with i2c_write(data) and i2c_read(n) (a
    simulated chip with commands, like an SHT31). A dict is used as it is (not copied), so a
    test can see what the code under test wrote. Unlisted registers read 0."""
    bus = _check_bus(bus)
    if not isinstance(address, int) or not 0 <= address <= 0x7F:
        raise ValueError("fake mraa: i2c address must be 0x00-0x7f, not %r" % (address,))
    if not isinstance(registers, dict):
        if not (callable(getattr(registers, "i2c_write", None)) and callable(getattr(registers, "i2c_read", None))):
            raise ValueError("fake mraa: an i2c device is a register dict or has i2c_write and i2c_read")
        with _lock:
            _i2c_devices[(bus, address)] = registers
        return
    for reg, value in registers.items():
        if not (isinstance(reg, int) and 0 <= reg <= 0xFF and isinstance(value, int) and 0 <= value <= 0xFF):
            raise ValueError("fake mraa: registers must map 0-255 to 0-255, not %r: %r" % (reg, value))
    with _lock:
        _i2c_devices[(bus, address)] = _I2cDevice(registers)


def _hang(kind: str, where: int, seconds: float, times: int = 1) -> None:
    """The next `times` calls that reach this analog channel, gpio pin or i2c bus block for
    `seconds` while holding the GIL, as a stuck ioctl in the real binding does: every Python
    thread of the process stops with it."""
    if kind not in _KINDS:
        raise ValueError("fake mraa: kind must be one of %s, not %r" % (', '.join(_KINDS), kind))
    where = {"aio": _check_channel, "gpio": _check_gpio, "i2c": _check_bus}[kind](where)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 3600:
        raise ValueError("fake mraa: hang seconds must be within 0-3600, not %r" % (seconds,))
    if not isinstance(times, int) or times < 1:
        raise ValueError("fake mraa: times must be a positive int, not %r" % (times,))
    with _lock:
        _hangs[(kind, where)] = [float(seconds), times]


def _set_pulse_rate(pin: int, per_second: float) -> None:
    """Every isr armed on `pin` (now or later) is called about `per_second` times a second, from
    its own thread, with no _pulse needed; 0 stops it."""
    pin = _check_gpio(pin)
    if isinstance(per_second, bool) or not isinstance(per_second, (int, float)) or not 0 <= per_second <= 10000:
        raise ValueError("fake mraa: pulse rate must be within 0-10000 per second, not %r" % (per_second,))
    with _lock:
        if per_second:
            _pulse_rates[pin] = float(per_second)
        else:
            _pulse_rates.pop(pin, None)


def _set_errno(code: int) -> None:
    """The errno a failed I2C buffer read reports (libmraa leaves whatever was there; 0 at start)."""
    if not isinstance(code, int) or code < 0:
        raise ValueError("fake mraa: errno must be a non-negative int, not %r" % (code,))
    _mraa_state._stale_errno = code


def _set_edge_supported(pin: int, supported: bool) -> None:
    """With supported=False, Gpio.edge() and Gpio.isr() on the pin return
    ERROR_FEATURE_NOT_IMPLEMENTED (every pin supports edges by default)."""
    pin = _check_gpio(pin)
    with _lock:
        if supported:
            _no_edge.discard(pin)
        else:
            _no_edge.add(pin)


def _pulse(pin: int, count: int = 1, edge: Optional[int] = None) -> int:
    """Simulate `count` edges on `pin`: every isr registered on it whose edge mode matches
    (edge=None or EDGE_BOTH: whatever it listens for) has its callback called `count` times,
    on its own isr thread. Blocks until all calls have returned; returns how many were made."""
    pin = _check_gpio(pin)
    if not isinstance(count, int) or count < 0:
        raise ValueError("fake mraa: count must be a non-negative int, not %r" % (count,))
    if edge is not None and edge not in (EDGE_BOTH, EDGE_RISING, EDGE_FALLING):
        raise ValueError("fake mraa: edge must be None, EDGE_BOTH, EDGE_RISING or EDGE_FALLING")
    with _lock:
        threads = [t for t in _isr_threads if t.pin == pin and t.listens_to(edge)]
    if _threading.current_thread() in threads:
        raise RuntimeError("fake mraa: _pulse() called from the isr callback it would wait for")
    pending = [thread.fire() for thread in threads for _ in range(count)]
    for done in pending:
        if not done.wait(_ISR_TIMEOUT):
            raise RuntimeError("fake mraa: an isr callback on pin %s did not return "
                               "within %.0f s" % (pin, _ISR_TIMEOUT))
    return len(pending)


def _uart_feed(data: bytes) -> None:
    """Bytes the UART's peer sends: Uart.read/readStr/dataAvailable see them."""
    with _lock:
        _uart_rx.extend(data)


def _uart_sent() -> bytes:
    """Everything written to the UART so far."""
    with _lock:
        return bytes(_uart_tx)


# --------------------------------------------------------------------------------------
# Initial state from the environment, so a subprocess can be given a board.
# --------------------------------------------------------------------------------------


def _pairs(name: str, text: str, sep: str) -> List[Tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, found, value = item.partition(sep)
        if not found:
            raise ValueError("%s: %r is not of the form key%svalue" % (name, item, sep))
        pairs.append((key.strip(), value.strip()))
    return pairs


def _apply_env(environ: Mapping[str, str]) -> None:
    """FAKE_MRAA_ANALOG="0=0.5,1=0.25"  FAKE_MRAA_GPIO="4=1"
    FAKE_MRAA_FAIL="aio:1,gpio:7,i2c:6,edge:4"  FAKE_MRAA_I2C="0x48=0x00:0x1a,0x01:0x60;6/0x40=" """
    name = ""
    try:
        name = "FAKE_MRAA_ANALOG"
        for key, value in _pairs(name, environ.get(name, ""), "="):
            _set_analog(int(key, 0), float(value))
        name = "FAKE_MRAA_GPIO"
        for key, value in _pairs(name, environ.get(name, ""), "="):
            _set_gpio(int(key, 0), int(value, 0))
        name = "FAKE_MRAA_FAIL"
        for kind, value in _pairs(name, environ.get(name, ""), ":"):
            if kind == "edge":
                _set_edge_supported(int(value, 0), False)
            else:
                _fail_reads(kind, int(value, 0))
        name = "FAKE_MRAA_HANG"
        for where, value in _pairs(name, environ.get(name, ""), "="):
            kind, _, pin = where.partition(":")
            seconds, _, times = value.partition("*")
            _hang(kind, int(pin, 0), float(seconds), int(times or "1", 0))
        name = "FAKE_MRAA_PULSES"
        for key, value in _pairs(name, environ.get(name, ""), "="):
            _set_pulse_rate(int(key, 0), float(value))
        name = "FAKE_MRAA_ERRNO"
        if environ.get(name):
            _set_errno(int(environ[name], 0))
        name = "FAKE_MRAA_I2C"
        for entry in environ.get(name, "").split(";"):
            entry = entry.strip()
            if not entry:
                continue
            where, found, regs = entry.partition("=")
            if not found:
                raise ValueError("%r is not of the form [bus/]address=reg:value,..." % (entry,))
            bus_text, _, addr_text = where.rpartition("/")
            registers = {int(r, 0): int(v, 0) for r, v in _pairs(name, regs, ":")}
            _add_i2c_device(int(bus_text or str(_I2C_BUS), 0), int(addr_text, 0), registers)
    except ValueError as exc:
        raise ValueError("fake mraa: bad %s: %s" % (name, exc)) from None
