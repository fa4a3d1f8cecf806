"""The fake `mraa`'s pins: Aio, Gpio and Pwm (mraa.py beside this file)."""

from __future__ import annotations

import contextlib as _contextlib
from typing import Any, Optional

import _mraa_state
from _mraa_consts import (
    _ADC_SUPPORTED_BITS,
    _AIO_CHANNELS,
    _AIO_INIT_ERROR,
    _DEFAULT_FRACTION,
    _GPIO_INIT_ERROR,
    _GPIO_PINS,
    _GPIO_SYSFS,
    _PWM_DEFAULT_PERIOD_US,
    _PWM_INIT_ERROR,
    _PWM_MAX_PERIOD_US,
    _PWM_MIN_PERIOD_US,
    _PWM_PINS,
    DIR_IN,
    DIR_OUT,
    DIR_OUT_HIGH,
    DIR_OUT_LOW,
    EDGE_BOTH,
    EDGE_FALLING,
    EDGE_NONE,
    EDGE_RISING,
    ERROR_FEATURE_NOT_IMPLEMENTED,
    ERROR_INVALID_PARAMETER,
    ERROR_INVALID_RESOURCE,
    ERROR_NO_RESOURCES,
    MODE_HIZ,
    MODE_PULLDOWN,
    MODE_PULLUP,
    MODE_STRONG,
    SUCCESS,
)
from _mraa_state import (
    _analog,
    _Closable,
    _failing,
    _isr_threads,
    _IsrThread,
    _lock,
    _maybe_hang,
    _no_edge,
    _pin,
    _pins,
)
from _mraa_swig import _arg_bool, _arg_float, _arg_int, _f32, _is_bool, _overload_error

# --------------------------------------------------------------------------------------
# Aio
# --------------------------------------------------------------------------------------


class Aio(_Closable):
    """An analog input, A0-A5. The ADC is 12-bit; reads are 10-bit unless setBit says otherwise."""

    def __init__(self, pin: int) -> None:
        if not isinstance(pin, int):
            raise _overload_error("new_Aio")
        if pin not in _AIO_CHANNELS:
            raise ValueError(_AIO_INIT_ERROR)
        self._channel = int(pin)
        self._bits = _ADC_SUPPORTED_BITS

    def _raw(self) -> int:
        """mraa_aio_read: the count at the current resolution, or -1 when the read fails."""
        self._open()
        _maybe_hang("aio", self._channel)
        with _lock:
            if self._channel in _failing["aio"]:
                return -1
            fraction = _analog.get(self._channel, _DEFAULT_FRACTION)
        return round(fraction * ((1 << self._bits) - 1))

    def read(self) -> int:
        value = self._raw()
        if value == -1:
            raise ValueError("Unknown error in Aio::read()")
        return value

    def readFloat(self) -> float:
        """raw / (2**bits - 1), computed in C float.

        Faithful to mraa_aio_read_float, a failed read is NOT an exception here: the -1 from
        mraa_aio_read is stored in an unsigned int and divided, so the result is a huge
        number (about 4.2e6 at 10 bits). Only Aio.read() raises on failure.
        """
        raw = self._raw()
        with _lock:
            max_value = _f32(float(_mraa_state._max_analog_value))
        if raw == -1:
            return _f32(_f32(float(2**32 - 1)) / max_value)
        return _f32(raw / max_value)

    def setBit(self, bits: int) -> int:
        bits = _arg_int(bits, "Aio_setBit", 2)
        if bits < 1:  # mraa_aio_set_bit rejects only bits < 1
            return ERROR_INVALID_RESOURCE
        with _lock:
            self._bits = bits
            # Every other context's readFloat now divides by this too (aio.c:214-256).
            _mraa_state._max_analog_value = (1 << bits) - 1
        return SUCCESS

    def getBit(self) -> int:
        return self._bits


# --------------------------------------------------------------------------------------
# Gpio
# --------------------------------------------------------------------------------------


class Gpio(_Closable):
    """A digital pin, IO0-IO19 (A0-A5 are IO14-IO19)."""

    def __init__(self, pin: int, owner: bool = True, raw: bool = False) -> None:
        if not isinstance(pin, int) or not _is_bool(owner) or not _is_bool(raw):
            raise _overload_error("new_Gpio")
        if raw:
            if pin not in _GPIO_SYSFS:
                raise ValueError(_GPIO_INIT_ERROR)
            phy = _GPIO_SYSFS.index(pin)
        else:
            if pin not in _GPIO_PINS:
                raise ValueError(_GPIO_INIT_ERROR)
            phy = int(pin)
        self._pin = phy
        self._isr: Optional[_IsrThread] = None
        with _lock:
            _pin(phy)

    def __del__(self) -> None:
        # ~Gpio() -> mraa_gpio_close() -> isr exit
        with _contextlib.suppress(Exception):  # may run during interpreter shutdown
            self.isrExit()

    def close(self) -> None:
        self.isrExit()
        super().close()

    def dir(self, dir: int) -> int:
        dir = _arg_int(dir, "Gpio_dir", 2, "mraa::Dir")
        with _lock:
            state = _pin(self._pin)
            if dir == DIR_IN:
                state.direction = DIR_IN
            elif dir in (DIR_OUT, DIR_OUT_LOW):  # sysfs "out" drives low, like "low"
                state.direction, state.output = DIR_OUT, 0
            elif dir == DIR_OUT_HIGH:
                state.direction, state.output = DIR_OUT, 1
            else:
                return ERROR_FEATURE_NOT_IMPLEMENTED
        return SUCCESS

    def readDir(self) -> int:
        self._open()
        with _lock:
            if self._pin in _failing["gpio"]:
                # Gpio::readDir throws std::runtime_error; SWIG's catch-all gives no detail.
                raise RuntimeError("Unknown exception")
            return _pin(self._pin).direction  # sysfs reads back "in" or "out"

    def inputMode(self, mode: int) -> int:
        _arg_int(mode, "Gpio_inputMode", 2, "mraa::InputMode")
        return SUCCESS

    def outputMode(self, mode: int) -> int:
        _arg_int(mode, "Gpio_outputMode", 2, "mraa::OutputMode")
        return SUCCESS

    def read(self) -> int:
        """0 or 1. A failed read returns -1: the real Gpio::read() does not throw."""
        self._open()
        _maybe_hang("gpio", self._pin)
        with _lock:
            if self._pin in _failing["gpio"]:
                return -1
            state = _pin(self._pin)
            return state.output if state.direction == DIR_OUT else state.level

    def write(self, value: int) -> int:
        value = _arg_int(value, "Gpio_write", 2)
        with _lock:
            state = _pin(self._pin)
            if state.direction != DIR_OUT:
                return ERROR_INVALID_RESOURCE
            state.output = 1 if value else 0
        return SUCCESS

    def edge(self, mode: int) -> int:
        mode = _arg_int(mode, "Gpio_edge", 2, "mraa::Edge")
        with _lock:
            if self._pin in _no_edge or mode not in (EDGE_NONE, EDGE_BOTH, EDGE_RISING, EDGE_FALLING):
                return ERROR_FEATURE_NOT_IMPLEMENTED
            _pin(self._pin).edge = mode
        return SUCCESS

    def isr(self, mode: int, pyfunc: Any, args: Any) -> int:
        """Call pyfunc(args) on every matching edge, from a thread of its own (never the caller's)."""
        mode = _arg_int(mode, "Gpio_isr", 2, "mraa::Edge")
        self._open()
        with _lock:
            if self._isr is not None and self._isr in _isr_threads:  # one isr per context
                return ERROR_NO_RESOURCES
            code = self.edge(mode)
            if code != SUCCESS:
                return code
            thread = _IsrThread(self._pin, mode, pyfunc, args)
            self._isr = thread
            _isr_threads.add(thread)
        thread.start()
        return SUCCESS

    def isrExit(self) -> int:
        with _lock:
            thread = self._isr
            if thread is None:
                return SUCCESS
            self._isr = None
            _isr_threads.discard(thread)
            if self._pin in _pins:
                _pins[self._pin].edge = EDGE_NONE
        thread.stop()
        return SUCCESS

    def mode(self, mode: int) -> int:
        mode = _arg_int(mode, "Gpio_mode", 2, "mraa::Mode")
        # mraa_intel_edison_gpio_mode_replace: the four modes succeed, anything else is 1.
        if mode in (MODE_STRONG, MODE_PULLUP, MODE_PULLDOWN, MODE_HIZ):
            return SUCCESS
        return ERROR_FEATURE_NOT_IMPLEMENTED

    def getPin(self, raw: bool = False) -> int:
        raw = _arg_bool(raw, "Gpio_getPin", 2)
        return _GPIO_SYSFS[self._pin] if raw else self._pin

    def useMmap(self, enable: bool) -> int:
        _arg_bool(enable, "Gpio_useMmap", 2)
        return SUCCESS


class Pwm(_Closable):
    """PWM on IO3, IO5, IO6, IO9; period 1-218453 us, 5000 us by default."""

    def __init__(self, pin: int, owner: bool = True, chipid: int = -1) -> None:
        if not isinstance(pin, int) or not _is_bool(owner) or not isinstance(chipid, int):
            raise _overload_error("new_Pwm")
        if chipid != -1 or pin not in _PWM_PINS:
            raise ValueError(_PWM_INIT_ERROR)
        self._period_ns = _PWM_DEFAULT_PERIOD_US * 1000
        self._duty_ns = 0
        self._enabled = False

    def _write_duty(self, duty_ns: int) -> int:
        if duty_ns < 0 or duty_ns > self._period_ns:  # the pwm sysfs refuses it
            return ERROR_INVALID_RESOURCE
        self._duty_ns = duty_ns
        return SUCCESS

    def enable(self, enable: bool) -> int:
        self._enabled = _arg_bool(enable, "Pwm_enable", 2)
        return SUCCESS

    def period_us(self, us: int) -> int:
        us = _arg_int(us, "Pwm_period_us", 2)
        if us < _PWM_MIN_PERIOD_US or us > _PWM_MAX_PERIOD_US:
            return ERROR_INVALID_PARAMETER
        if self._duty_ns > us * 1000:
            return ERROR_INVALID_RESOURCE
        self._period_ns = us * 1000
        return SUCCESS

    def period_ms(self, ms: int) -> int:
        return self.period_us(_arg_int(ms, "Pwm_period_ms", 2) * 1000)

    def period(self, period: float) -> int:
        return self.period_ms(int(_arg_float(period, "Pwm_period", 2) * 1000))

    def pulsewidth_us(self, us: int) -> int:
        return self._write_duty(_arg_int(us, "Pwm_pulsewidth_us", 2) * 1000)

    def pulsewidth_ms(self, ms: int) -> int:
        return self.pulsewidth_us(_arg_int(ms, "Pwm_pulsewidth_ms", 2) * 1000)

    def pulsewidth(self, seconds: float) -> int:
        return self.pulsewidth_ms(int(_arg_float(seconds, "Pwm_pulsewidth", 2) * 1000))

    def write(self, percentage: float) -> int:
        fraction = _f32(_arg_float(percentage, "Pwm_write", 2))
        if fraction > 1.0:
            return self._write_duty(self._period_ns)
        return self._write_duty(int(fraction * self._period_ns))

    def read(self) -> float:
        return _f32(self._duty_ns / float(self._period_ns)) if self._period_ns > 0 else 0.0

    def max_period(self) -> int:
        return _PWM_MAX_PERIOD_US

    def min_period(self) -> int:
        return _PWM_MIN_PERIOD_US
