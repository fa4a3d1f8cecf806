"""A fake ``mraa``: libmraa's Python binding as seen on an Intel Edison on the Arduino breakout.

libmraa's SWIG binding cannot be installed off the board, so the tests put this directory
on ``sys.path``/``PYTHONPATH`` and ``import mraa`` finds this module instead. Its public
names behave like the real binding in every point of /work/shared/mraa-api.md, and in
the details checked against eclipse/mraa (v2.x sources), including the two failure
styles: constructors and some reads raise, setters and writes return an int code.

Everything whose name starts with an underscore is a test-control hook, not mraa API:
``_reset``, ``_set_analog``, ``_set_gpio``, ``_fail_reads``, ``_add_i2c_device``,
``_pulse``, ``_set_edge_supported``, ``_uart_feed``, ``_uart_sent``, ``_isr_errors``,
``_hang``, ``_set_errno``, ``_set_pulse_rate``.
Initial state can also come from environment variables read at import time
(``FAKE_MRAA_ANALOG``, ``FAKE_MRAA_GPIO``, ``FAKE_MRAA_FAIL``, ``FAKE_MRAA_I2C``,
``FAKE_MRAA_HANG``, ``FAKE_MRAA_ERRNO``, ``FAKE_MRAA_PULSES``):
see README.md next to this file.
"""

from __future__ import annotations

import contextlib as _contextlib
import ctypes as _ctypes
import math as _math
import os as _os
import queue as _queue
import struct as _struct
import threading as _threading
import weakref as _weakref
from collections.abc import Mapping
from typing import Any, Dict, List, Optional, Set, Tuple, Union
from typing import Protocol as _Protocol

# --------------------------------------------------------------------------------------
# Module-level constants (api/mraa/types.h, types.hpp, common.hpp; SWIG strips "MRAA_").
# --------------------------------------------------------------------------------------

# mraa::Result / mraa_result_t
SUCCESS = 0
ERROR_FEATURE_NOT_IMPLEMENTED = 1
ERROR_FEATURE_NOT_SUPPORTED = 2
ERROR_INVALID_VERBOSITY_LEVEL = 3
ERROR_INVALID_PARAMETER = 4
ERROR_INVALID_HANDLE = 5
ERROR_NO_RESOURCES = 6
ERROR_INVALID_RESOURCE = 7
ERROR_INVALID_QUEUE_TYPE = 8
ERROR_NO_DATA_AVAILABLE = 9
ERROR_INVALID_PLATFORM = 10
ERROR_PLATFORM_NOT_INITIALISED = 11
ERROR_UNSPECIFIED = 99

# mraa::Platform (a few)
INTEL_GALILEO_GEN1 = 0
INTEL_GALILEO_GEN2 = 1
INTEL_EDISON_FAB_C = 2
NULL_PLATFORM = 98
UNKNOWN_PLATFORM = 99

# mraa::Dir, mraa::Edge, mraa::Mode (api/mraa/gpio.hpp)
DIR_OUT = 0
DIR_IN = 1
DIR_OUT_HIGH = 2
DIR_OUT_LOW = 3
EDGE_NONE = 0
EDGE_BOTH = 1
EDGE_RISING = 2
EDGE_FALLING = 3
MODE_STRONG = 0
MODE_PULLUP = 1
MODE_PULLDOWN = 2
MODE_HIZ = 3

# mraa::I2cMode
I2C_STD = 0
I2C_FAST = 1
I2C_HIGH = 2

# mraa::Spi_Mode
SPI_MODE0 = 0
SPI_MODE1 = 1
SPI_MODE2 = 2
SPI_MODE3 = 3

# mraa::UartParity
UART_PARITY_NONE = 0
UART_PARITY_EVEN = 1
UART_PARITY_ODD = 2
UART_PARITY_MARK = 3
UART_PARITY_SPACE = 4

# --------------------------------------------------------------------------------------
# The board: src/x86/intel_edison_fab_c.c, Arduino breakout branch.
# --------------------------------------------------------------------------------------

_PLATFORM_NAME = "Intel Edison"
_VERSION = "v2.2.0"
_PIN_COUNT = 20  # b->phy_pin_count on the Arduino breakout
_ADC_RAW_BITS = 12  # b->adc_raw
_ADC_SUPPORTED_BITS = 10  # b->adc_supported (and DEFAULT_BITS in aio.c)
_AIO_CHANNELS = range(6)  # aio_count = 6: A0-A5
_GPIO_PINS = range(_PIN_COUNT)  # IO0-IO13 and A0-A5 as IO14-IO19
# gpio.pinmap of IO0..IO19: what Gpio.getPin(True) returns and Gpio(n, raw=True) takes.
_GPIO_SYSFS = (130, 131, 128, 12, 129, 13, 182, 48, 49, 183, 41, 43, 42, 40, 44, 45, 46, 47, 14, 165)
_PWM_PINS = (3, 5, 6, 9)
_I2C_BUS = 6  # the only bus wired to the Arduino headers (def_i2c_bus)
_I2C_BUS_COUNT = 9  # buses 0-8 exist in the table; all but 6 are moved to 6
_SPI_BUSES = (0,)
_UART_PATH = "/dev/ttyMFD1"
_PWM_DEFAULT_PERIOD_US = 5000
_PWM_MIN_PERIOD_US = 1
_PWM_MAX_PERIOD_US = 218453

_AIO_INIT_ERROR = "Invalid AIO pin specified - do you have an ADC?"
_GPIO_INIT_ERROR = "Invalid GPIO pin specified"
_I2C_INIT_ERROR = "Invalid i2c bus"
_SPI_INIT_ERROR = "Error initialising SPI bus"
_UART_INIT_ERROR = "Error initialising UART"
_PWM_INIT_ERROR = "Error initialising PWM on pin"

_DEFAULT_FRACTION = 0.5
_ISR_TIMEOUT = 10.0  # seconds _pulse waits for callbacks before calling it a hang


def getPlatformName() -> str:
    return _PLATFORM_NAME


def getPlatformType() -> int:
    return INTEL_EDISON_FAB_C


def getVersion() -> str:
    return _VERSION


def getPinCount() -> int:
    return _PIN_COUNT


def adcRawBits() -> int:
    """Bits the ADC hardware delivers (12 on the Edison)."""
    return _ADC_RAW_BITS


def adcSupportedBits() -> int:
    """Bits mraa returns by default (10 on the Edison); Aio.setBit changes it per context."""
    return _ADC_SUPPORTED_BITS


def init() -> int:
    return SUCCESS


# --------------------------------------------------------------------------------------
# SWIG argument conversion, so wrong types fail the way the generated wrapper fails.
# --------------------------------------------------------------------------------------

_INT_MIN = -(2**31)
_INT_MAX = 2**31 - 1
_FLT_MAX = 3.4028234663852886e38


def _arg_int(value: Any, method: str, argn: int, ctype: str = "int",
             lo: int = _INT_MIN, hi: int = _INT_MAX) -> int:
    """SWIG_AsVal_int / unsigned char / unsigned short: TypeError for non-ints,
    OverflowError for ints out of range (negative included, for unsigned types)."""
    if not isinstance(value, int):
        raise TypeError("in method '%s', argument %s of type '%s'" % (method, argn, ctype))
    if not lo <= value <= hi:
        raise OverflowError("in method '%s', argument %s of type '%s'" % (method, argn, ctype))
    return int(value)


def _arg_u8(value: Any, method: str, argn: int) -> int:
    return _arg_int(value, method, argn, "uint8_t", 0, 0xFF)


def _arg_u16(value: Any, method: str, argn: int) -> int:
    return _arg_int(value, method, argn, "uint16_t", 0, 0xFFFF)


def _arg_uint(value: Any, method: str, argn: int) -> int:
    return _arg_int(value, method, argn, "unsigned int", 0, 2**32 - 1)


def _arg_float(value: Any, method: str, argn: int) -> float:
    """SWIG_AsVal_float: ints and floats; beyond FLT_MAX is an OverflowError."""
    if not isinstance(value, (int, float)):
        raise TypeError("in method '%s', argument %s of type 'float'" % (method, argn))
    result = float(value)
    if _math.isfinite(result) and abs(result) > _FLT_MAX:
        raise OverflowError("in method '%s', argument %s of type 'float'" % (method, argn))
    return result


def _arg_bool(value: Any, method: str, argn: int) -> bool:
    # SWIG 4's SWIG_AsVal_bool takes only a bool (PyBool_Check): getPin(1) is a TypeError.
    if not isinstance(value, bool):
        raise TypeError("in method '%s', argument %s of type 'bool'" % (method, argn))
    return value


def _is_bool(value: Any) -> bool:
    """Overloaded constructors dispatch on PyBool_Check too: Gpio(0, 1, 0) matches no overload."""
    return isinstance(value, bool)


# The binding never releases the GIL (no SWIG_PYTHON_THREAD_BEGIN_ALLOW, not built with -threads),
# so a slow ioctl freezes every Python thread. A foreign call through PyDLL keeps the GIL the same
# way; time.sleep would release it and hide the problem.
class _Timespec(_ctypes.Structure):
    # glibc's struct timespec: time_t and long are both C longs (32-bit on the Edison's i386).
    _fields_ = [("tv_sec", _ctypes.c_long), ("tv_nsec", _ctypes.c_long)]


_libc = _ctypes.PyDLL(None, use_errno=True)
_libc.nanosleep.argtypes = [_ctypes.POINTER(_Timespec), _ctypes.POINTER(_Timespec)]


def _hold_gil(seconds: float) -> None:
    """Block for `seconds` in one foreign call that keeps the GIL, as a stuck ioctl in libmraa does."""
    whole = int(seconds)
    request = _Timespec(whole, int((seconds - whole) * 1e9))
    left = _Timespec(0, 0)
    # Only a signal handler interrupts it (EINTR); the rest is slept again, still holding the GIL.
    while _libc.nanosleep(_ctypes.byref(request), _ctypes.byref(left)) != 0:
        request = _Timespec(left.tv_sec, left.tv_nsec)


def _overload_error(name: str) -> TypeError:
    return TypeError("Wrong number or type of arguments for overloaded function '%s'." % name)


def _length_arg(value: Any) -> int:
    """The (uint8_t* data, int length) / (char* data, int length) 'in' typemaps of mraapython.i."""
    if not isinstance(value, int):
        raise ValueError("Expecting an integer")  # noqa: TRY004 - the typemap's choice, not ours
    if value < 0:
        raise ValueError("Positive integer expected")
    return int(value)


def _bytearray_arg(value: Any) -> bytearray:
    """The (const uint8_t* data, int length) 'in' typemaps: PyByteArray_Check or ValueError."""
    if not isinstance(value, bytearray):
        raise ValueError("bytearray expected")  # noqa: TRY004 - the typemap's choice, not ours
    return value


def _f32(value: float) -> float:
    """A C float, as SWIG hands it to Python."""
    return float(_struct.unpack("f", _struct.pack("f", value))[0])


def _io_error(code: int) -> OSError:
    """PyErr_SetFromErrno(PyExc_IOError)."""
    return OSError(code, _os.strerror(code))


# --------------------------------------------------------------------------------------
# Simulated state, shared by all contexts (like sysfs is), guarded by one lock.
# --------------------------------------------------------------------------------------


class _PinState:
    __slots__ = ("direction", "edge", "level", "output")

    def __init__(self) -> None:
        self.direction = DIR_IN  # a freshly exported sysfs gpio is an input
        self.output = 0
        self.level = 0  # what the outside world drives on an input
        self.edge = EDGE_NONE


class _I2cSlave(_Protocol):
    """What sits at an address, seen at the wire level: a write transaction, a read transaction.
    Every mraa.I2c call is made of these (a register read is a write of the register number,
    then a read). Tests may attach any object with these two methods."""

    def i2c_write(self, data: bytes) -> None: ...

    def i2c_read(self, n: int) -> bytes: ...


class _I2cDevice:
    """A register-map slave: a write sets the register pointer (first byte) and stores the
    rest; reads start at the pointer, which auto-increments."""

    def __init__(self, registers: Dict[int, int]) -> None:
        self.registers = registers
        self.pointer = 0

    def i2c_write(self, data: bytes) -> None:
        self.pointer = data[0]
        for b in data[1:]:
            self.registers[self.pointer] = b & 0xFF
            self.pointer = (self.pointer + 1) & 0xFF

    def i2c_read(self, n: int) -> bytes:
        data = bytes(int(self.registers.get((self.pointer + i) & 0xFF, 0)) & 0xFF for i in range(n))
        self.pointer = (self.pointer + n) & 0xFF
        return data


_lock = _threading.RLock()
_analog: Dict[int, float] = {}
_pins: Dict[int, _PinState] = {}
_i2c_devices: Dict[Tuple[int, int], _I2cSlave] = {}
_failing: Dict[str, Set[int]] = {"aio": set(), "gpio": set(), "i2c": set()}
_no_edge: Set[int] = set()
_isr_threads: Set[_IsrThread] = set()
_uart_rx = bytearray()
_uart_tx = bytearray()
# (kind, channel/pin/bus) -> [seconds, calls left]: calls that hold the GIL that long (_hang).
_hangs: Dict[Tuple[str, int], List[float]] = {}
# What errno holds when a failed I2C buffer read turns it into OSError: libmraa does not set it
# (src/i2c/i2c.c:220-224), so it is whatever an earlier call left (_set_errno).
_stale_errno = 0
# pin -> edges per second that every isr armed on the pin receives by itself (_set_pulse_rate):
# how a test in another process (the agent's) makes a counter count.
_pulse_rates: Dict[int, float] = {}
# src/aio/aio.c:18-20: one max_analog_value for the whole process, rewritten by any context's
# setBit, and what readFloat divides by.
_max_analog_value = (1 << _ADC_SUPPORTED_BITS) - 1

#: Exceptions raised by isr callbacks. The real binding logs them to syslog and carries on
#: (src/python/mraapy.c); the fake does the same, keeping them here for tests to inspect.
_isr_errors: List[BaseException] = []


class _IsrThread(_threading.Thread):
    """The pthread libmraa starts per isr(): waits for edges, calls the Python callback."""

    def __init__(self, pin: int, mode: int, callback: Any, arg: Any) -> None:
        super().__init__(name="mraa-isr-gpio%s" % pin, daemon=True)
        self.pin = pin
        self.mode = mode
        # libmraa keeps a borrowed pointer to the callback (api/mraa/gpio.hpp:173-176,
        # src/gpio/gpio.c:991,1001): nothing keeps it alive but the caller. A weak reference
        # here, so code that lets go of it fails in the tests as it would crash on the board.
        self._callback = _weakref.ref(callback)
        self._arg = arg
        self._events: _queue.Queue[Optional[_threading.Event]] = _queue.Queue()

    def run(self) -> None:
        while True:
            rate = _pulse_rates.get(self.pin)
            try:
                done = self._events.get(timeout=1.0 / rate if rate else None)
            except _queue.Empty:
                done = _threading.Event()  # a free-running edge (_set_pulse_rate): nobody waits for it
            if done is None:
                return
            try:
                callback = self._callback()
                if callback is None:
                    # The real binding calls freed memory here: a SIGSEGV, or nothing at all.
                    raise RuntimeError("fake mraa: the isr callback on pin %s was freed "
                                       "(libmraa keeps no reference to it: this crashes on the board)" % self.pin)
                # mraa_python_isr: PyEval_CallObject(isr, Py_BuildValue("(O)", isr_args))
                callback(self._arg)
            except Exception as exc:  # noqa: BLE001 - the real binding logs to syslog and goes on
                _isr_errors.append(exc)
            finally:
                done.set()

    def fire(self) -> _threading.Event:
        done = _threading.Event()
        self._events.put(done)
        return done

    def stop(self) -> None:
        self._events.put(None)
        if _threading.current_thread() is not self:
            self.join(_ISR_TIMEOUT)

    def listens_to(self, edge: Optional[int]) -> bool:
        if self.mode == EDGE_NONE:
            return False
        return edge is None or edge == EDGE_BOTH or self.mode == EDGE_BOTH or self.mode == edge


def _maybe_hang(kind: str, where: int) -> None:
    with _lock:
        entry = _hangs.get((kind, where))
        if entry is None:
            return
        seconds = entry[0]
        entry[1] -= 1
        if entry[1] <= 0:
            del _hangs[(kind, where)]
    _hold_gil(seconds)


class _Closable:
    """close() frees the C context; the real binding then works on freed memory, the fake refuses."""

    _closed = False

    def close(self) -> None:
        self._closed = True

    def _open(self) -> None:
        if self._closed:
            raise RuntimeError("fake mraa: %s used after close()" % type(self).__name__)


def _pin(pin: int) -> _PinState:
    state = _pins.get(pin)
    if state is None:
        state = _pins[pin] = _PinState()
    return state


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
            max_value = _f32(float(_max_analog_value))
        if raw == -1:
            return _f32(_f32(float(2**32 - 1)) / max_value)
        return _f32(raw / max_value)

    def setBit(self, bits: int) -> int:
        bits = _arg_int(bits, "Aio_setBit", 2)
        if bits < 1:  # mraa_aio_set_bit rejects only bits < 1
            return ERROR_INVALID_RESOURCE
        global _max_analog_value
        with _lock:
            self._bits = bits
            # Every other context's readFloat now divides by this too (aio.c:214-256).
            _max_analog_value = (1 << bits) - 1
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


# --------------------------------------------------------------------------------------
# I2c
# --------------------------------------------------------------------------------------


class I2c(_Closable):
    """An I2C master. On the Arduino breakout every bus 0-8 is moved to bus 6."""

    def __init__(self, bus: int, raw: bool = False) -> None:
        if not isinstance(bus, int) or not _is_bool(raw):
            raise _overload_error("new_I2c")
        if raw:
            if bus != _I2C_BUS:  # only /dev/i2c-6 is modelled
                raise ValueError(_I2C_INIT_ERROR)
        elif not 0 <= bus < _I2C_BUS_COUNT:
            raise ValueError(_I2C_INIT_ERROR)
        self._bus = _I2C_BUS
        self._addr = 0

    def _slave(self) -> Optional[_I2cSlave]:
        """The device that answers at the current address, or None (a NACK)."""
        self._open()
        return _i2c_devices.get((self._bus, self._addr))

    def _transfer(self) -> None:
        """Every call that reaches the bus: where a hung bus holds the GIL."""
        self._open()
        _maybe_hang("i2c", self._bus)

    def _read_failing(self) -> bool:
        return self._bus in _failing["i2c"]

    def frequency(self, mode: int) -> int:
        mode = _arg_int(mode, "I2c_frequency", 2, "mraa::I2cMode")
        if mode in (I2C_STD, I2C_FAST, I2C_HIGH):
            return SUCCESS
        return ERROR_INVALID_PARAMETER

    def address(self, address: int) -> int:
        address = _arg_u8(address, "I2c_address", 2)
        if address > 0x7F:  # ioctl(I2C_SLAVE_FORCE) refuses 8-bit addresses with EINVAL
            return ERROR_UNSPECIFIED
        self._addr = address
        return SUCCESS

    # Reads that raise ValueError (I2c::readByte/readReg/readWordReg throw invalid_argument).

    def readByte(self) -> int:
        self._transfer()
        with _lock:
            dev = self._slave()
            if dev is None or self._read_failing():
                raise ValueError("Unknown error in I2c::readByte()")
            return _first(_slave_read(dev, 1), "readByte")

    def readReg(self, reg: int) -> int:
        reg = _arg_u8(reg, "I2c_readReg", 2)
        self._transfer()
        with _lock:
            dev = self._slave()
            if dev is None or self._read_failing():
                raise ValueError("Unknown error in I2c::readReg()")
            data = _slave_read(dev, 1) if _slave_write(dev, bytes([reg])) else b""
            return _first(data, "readReg")

    def readWordReg(self, reg: int) -> int:
        """SMBus read word: the first byte the device sends (reg) is the low byte."""
        reg = _arg_u8(reg, "I2c_readWordReg", 2)
        self._transfer()
        with _lock:
            dev = self._slave()
            data = b""
            if dev is not None and not self._read_failing():
                data = _slave_read(dev, 2) if _slave_write(dev, bytes([reg])) else b""
            if len(data) != 2:
                # sic: the real I2c::readWordReg reuses readReg's message
                raise ValueError("Unknown error in I2c::readReg()")
            return data[0] | (data[1] << 8)

    # Buffer reads that raise OSError: the argout typemap calls PyErr_SetFromErrno whenever
    # mraa returns -1, and libmraa sets no errno of its own, so the error carries a stale one.

    def read(self, length: int) -> bytearray:
        n = _length_arg(length)
        self._transfer()
        with _lock:
            dev = self._slave()
            if dev is None or self._read_failing():
                raise _stale_io_error()
            return _whole(_slave_read(dev, n), n)

    def readBytesReg(self, reg: int, length: int) -> bytearray:
        reg = _arg_u8(reg, "I2c_readBytesReg", 2)
        n = _length_arg(length)
        self._transfer()
        with _lock:
            dev = self._slave()
            if dev is None or self._read_failing():
                raise _stale_io_error()
            data = _slave_read(dev, n) if _slave_write(dev, bytes([reg])) else b""
            return _whole(data, n)

    # Writes return a code; a missing device is MRAA_ERROR_UNSPECIFIED.

    def writeByte(self, data: int) -> int:
        data = _arg_u8(data, "I2c_writeByte", 2)
        self._transfer()
        with _lock:
            dev = self._slave()
            if dev is None:
                return ERROR_UNSPECIFIED
            if not _slave_write(dev, bytes([data])):  # SMBus send byte
                return ERROR_UNSPECIFIED
        return SUCCESS

    def write(self, data: bytearray) -> int:
        buf = _bytearray_arg(data)
        self._transfer()
        with _lock:
            dev = self._slave()
            if dev is None:
                return ERROR_UNSPECIFIED
            if buf:
                # mraa_i2c_write: SMBus I2C block write, command = data[0], at most 32 data bytes
                if not _slave_write(dev, bytes(buf[:33])):
                    return ERROR_UNSPECIFIED
        # An empty write is not an error (seen on the real binding).
        return SUCCESS

    def writeReg(self, reg: int, data: int) -> int:
        reg = _arg_u8(reg, "I2c_writeReg", 2)
        data = _arg_u8(data, "I2c_writeReg", 3)
        self._transfer()
        with _lock:
            dev = self._slave()
            if dev is None:
                return ERROR_UNSPECIFIED
            if not _slave_write(dev, bytes([reg, data])):
                return ERROR_UNSPECIFIED
        return SUCCESS

    def writeWordReg(self, reg: int, data: int) -> int:
        """SMBus write word: low byte goes to reg, high byte to reg + 1."""
        reg = _arg_u8(reg, "I2c_writeWordReg", 2)
        data = _arg_u16(data, "I2c_writeWordReg", 3)
        self._transfer()
        with _lock:
            dev = self._slave()
            if dev is None:
                return ERROR_UNSPECIFIED
            if not _slave_write(dev, bytes([reg, data & 0xFF, data >> 8])):
                return ERROR_UNSPECIFIED
        return SUCCESS


def _slave_read(dev: _I2cSlave, n: int) -> bytes:
    """A NACK or bus error from the device is a failed transfer, not its OSError: the binding
    only sees libmraa's -1 (and the stale errno), so the slave's own errno never reaches Python."""
    try:
        return dev.i2c_read(n)
    except OSError:
        return b""


def _slave_write(dev: _I2cSlave, data: bytes) -> bool:
    try:
        dev.i2c_write(data)
    except OSError:
        return False
    return True


def _stale_io_error() -> OSError:
    """PyErr_SetFromErrno with an errno libmraa never set: 0 gives OSError(0, 'Error')."""
    code = _stale_errno
    return OSError(code, _os.strerror(code) if code else "Error")


def _whole(data: bytes, n: int) -> bytearray:
    # src/i2c/i2c.c:220-224: fewer bytes than asked makes the read return -1, errno untouched.
    if len(data) != n:
        raise _stale_io_error()
    return bytearray(data)


def _first(data: bytes, method: str) -> int:
    if len(data) != 1:
        raise ValueError("Unknown error in I2c::%s()" % method)
    return data[0]


class Spi(_Closable):
    """SPI bus 0 (spidev5.1). No slave is attached: MISO reads back zeros."""

    def __init__(self, bus: int, cs: Optional[int] = None) -> None:
        if not isinstance(bus, int) or (cs is not None and not isinstance(cs, int)):
            raise _overload_error("new_Spi")
        if bus not in _SPI_BUSES:
            raise ValueError(_SPI_INIT_ERROR)
        self._mode = SPI_MODE0
        self._hz = 4000000

    def mode(self, mode: int) -> int:
        mode = _arg_int(mode, "Spi_mode", 2, "mraa::Spi_Mode")
        if mode not in (SPI_MODE0, SPI_MODE1, SPI_MODE2, SPI_MODE3):
            return ERROR_INVALID_PARAMETER
        self._mode = mode
        return SUCCESS

    def frequency(self, hz: int) -> int:
        hz = _arg_int(hz, "Spi_frequency", 2)
        if hz <= 0:
            return ERROR_INVALID_PARAMETER
        self._hz = hz
        return SUCCESS

    def write(self, txBuf: bytearray) -> bytearray:
        return bytearray(len(_bytearray_arg(txBuf)))

    def writeByte(self, data: int) -> int:
        _arg_u8(data, "Spi_writeByte", 2)
        return 0

    def writeWord(self, data: int) -> int:
        _arg_u16(data, "Spi_writeWord", 2)
        return 0

    def lsbmode(self, lsb: bool) -> int:
        # mraa_intel_edison_spi_lsbmode_replace: the Edison cannot do LSB first
        return ERROR_FEATURE_NOT_SUPPORTED if _arg_bool(lsb, "Spi_lsbmode", 2) else SUCCESS

    def bitPerWord(self, bits: int) -> int:
        _arg_uint(bits, "Spi_bitPerWord", 2)
        return SUCCESS


class Uart(_Closable):
    """The UART on IO0/IO1, /dev/ttyMFD1 (index 0). Bytes arrive only through _uart_feed()."""

    def __init__(self, uart: Any) -> None:
        if isinstance(uart, str):
            ok = uart == _UART_PATH
        elif isinstance(uart, int):
            ok = uart == 0
        else:
            raise _overload_error("new_Uart")
        if not ok:
            raise ValueError(_UART_INIT_ERROR)

    def getDevicePath(self) -> str:
        return _UART_PATH

    def setBaudRate(self, baud: int) -> int:
        baud = _arg_uint(baud, "Uart_setBaudRate", 2)
        return SUCCESS if baud > 0 else ERROR_INVALID_PARAMETER

    def setMode(self, bytesize: int, parity: int, stopbits: int) -> int:
        bytesize = _arg_int(bytesize, "Uart_setMode", 2)
        parity = _arg_int(parity, "Uart_setMode", 3, "mraa::UartParity")
        stopbits = _arg_int(stopbits, "Uart_setMode", 4)
        if bytesize not in (5, 6, 7, 8) or stopbits not in (1, 2) or not 0 <= parity <= 4:
            return ERROR_INVALID_PARAMETER
        return SUCCESS

    def setFlowcontrol(self, xonxoff: bool, rtscts: bool) -> int:
        _arg_bool(xonxoff, "Uart_setFlowcontrol", 2)
        _arg_bool(rtscts, "Uart_setFlowcontrol", 3)
        return SUCCESS

    def setTimeout(self, read: int, write: int, interchar: int) -> int:
        for argn, value in enumerate((read, write, interchar), start=2):
            _arg_int(value, "Uart_setTimeout", argn)
        return SUCCESS

    def setNonBlocking(self, nonblock: bool) -> int:
        _arg_bool(nonblock, "Uart_setNonBlocking", 2)
        return SUCCESS

    def dataAvailable(self, millis: int = 0) -> bool:
        _arg_uint(millis, "Uart_dataAvailable", 2)
        with _lock:
            return len(_uart_rx) > 0

    def read(self, length: int) -> bytearray:
        n = _length_arg(length)
        with _lock:
            data = bytearray(_uart_rx[:n])
            del _uart_rx[:n]
        return data

    def readStr(self, length: int) -> str:
        n = _arg_int(length, "Uart_readStr", 2)
        return bytes(self.read(max(n, 0))).decode("utf-8", "surrogateescape")

    def write(self, data: bytearray) -> int:
        buf = _bytearray_arg(data)
        with _lock:
            _uart_tx.extend(buf)
        return len(buf)

    def writeStr(self, data: str) -> int:
        if not isinstance(data, str):
            raise TypeError("in method 'Uart_writeStr', argument 2 of type 'std::string'")
        encoded = data.encode("utf-8", "surrogateescape")
        with _lock:
            _uart_tx.extend(encoded)
        return len(encoded)

    def flush(self) -> int:
        return SUCCESS

    def sendBreak(self, duration: int) -> int:
        _arg_int(duration, "Uart_sendBreak", 2)
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
    global _stale_errno, _max_analog_value
    with _lock:
        threads = list(_isr_threads)
        _isr_threads.clear()
        _hangs.clear()
        _pulse_rates.clear()
        _stale_errno = 0
        _max_analog_value = (1 << _ADC_SUPPORTED_BITS) - 1
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
    global _stale_errno
    if not isinstance(code, int) or code < 0:
        raise ValueError("fake mraa: errno must be a non-negative int, not %r" % (code,))
    _stale_errno = code


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


_reset()
_apply_env(_os.environ)
