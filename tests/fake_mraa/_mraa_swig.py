"""How SWIG hands arguments to libmraa and back, for the fake `mraa` (mraa.py beside this
file): wrong types fail the way the generated wrapper fails, and a slow call holds the GIL.
"""

from __future__ import annotations

import ctypes as _ctypes
import math as _math
import os as _os
import struct as _struct
from typing import Any

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
