"""The fake `mraa`'s simulated board (mraa.py beside this file): the state every context
shares, as sysfs is, guarded by one lock; the isr threads.
"""

from __future__ import annotations

import queue as _queue
import threading as _threading
import weakref as _weakref
from typing import Any, Dict, List, Optional, Set, Tuple
from typing import Protocol as _Protocol

from _mraa_consts import _ADC_SUPPORTED_BITS, _ISR_TIMEOUT, DIR_IN, EDGE_BOTH, EDGE_NONE
from _mraa_swig import _hold_gil

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
