"""The fake `mraa`'s buses: I2c, Spi and Uart (mraa.py beside this file)."""

from __future__ import annotations

import os as _os
from typing import Any, Optional

import _mraa_state
from _mraa_consts import (
    _I2C_BUS,
    _I2C_BUS_COUNT,
    _I2C_INIT_ERROR,
    _SPI_BUSES,
    _SPI_INIT_ERROR,
    _UART_INIT_ERROR,
    _UART_PATH,
    ERROR_FEATURE_NOT_SUPPORTED,
    ERROR_INVALID_PARAMETER,
    ERROR_UNSPECIFIED,
    I2C_FAST,
    I2C_HIGH,
    I2C_STD,
    SPI_MODE0,
    SPI_MODE1,
    SPI_MODE2,
    SPI_MODE3,
    SUCCESS,
)
from _mraa_state import _Closable, _failing, _i2c_devices, _I2cSlave, _lock, _maybe_hang, _uart_rx, _uart_tx
from _mraa_swig import (
    _arg_bool,
    _arg_int,
    _arg_u8,
    _arg_u16,
    _arg_uint,
    _bytearray_arg,
    _is_bool,
    _length_arg,
    _overload_error,
)

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
    code = _mraa_state._stale_errno
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
