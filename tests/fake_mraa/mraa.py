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

import os as _os

from _mraa_buses import (  # noqa: F401 - mraa's names
    I2c,
    Spi,
    Uart,
)
from _mraa_consts import (  # noqa: F401 - mraa's names
    _ADC_RAW_BITS,
    _ADC_SUPPORTED_BITS,
    _PIN_COUNT,
    _PLATFORM_NAME,
    _VERSION,
    DIR_IN,
    DIR_OUT,
    DIR_OUT_HIGH,
    DIR_OUT_LOW,
    EDGE_BOTH,
    EDGE_FALLING,
    EDGE_NONE,
    EDGE_RISING,
    ERROR_FEATURE_NOT_IMPLEMENTED,
    ERROR_FEATURE_NOT_SUPPORTED,
    ERROR_INVALID_HANDLE,
    ERROR_INVALID_PARAMETER,
    ERROR_INVALID_PLATFORM,
    ERROR_INVALID_QUEUE_TYPE,
    ERROR_INVALID_RESOURCE,
    ERROR_INVALID_VERBOSITY_LEVEL,
    ERROR_NO_DATA_AVAILABLE,
    ERROR_NO_RESOURCES,
    ERROR_PLATFORM_NOT_INITIALISED,
    ERROR_UNSPECIFIED,
    I2C_FAST,
    I2C_HIGH,
    I2C_STD,
    INTEL_EDISON_FAB_C,
    INTEL_GALILEO_GEN1,
    INTEL_GALILEO_GEN2,
    MODE_HIZ,
    MODE_PULLDOWN,
    MODE_PULLUP,
    MODE_STRONG,
    NULL_PLATFORM,
    SPI_MODE0,
    SPI_MODE1,
    SPI_MODE2,
    SPI_MODE3,
    SUCCESS,
    UART_PARITY_EVEN,
    UART_PARITY_MARK,
    UART_PARITY_NONE,
    UART_PARITY_ODD,
    UART_PARITY_SPACE,
    UNKNOWN_PLATFORM,
)
from _mraa_gpio import (  # noqa: F401 - mraa's names
    Aio,
    Gpio,
    Pwm,
)
from _mraa_hooks import (  # noqa: F401 - mraa's names
    _add_i2c_device,
    _apply_env,
    _fail_reads,
    _hang,
    _pulse,
    _reset,
    _set_analog,
    _set_edge_supported,
    _set_errno,
    _set_gpio,
    _set_pulse_rate,
    _uart_feed,
    _uart_sent,
)
from _mraa_state import (  # noqa: F401 - mraa's names
    _isr_errors,
)


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


_reset()
_apply_env(_os.environ)
