"""mraa's constants (api/mraa/types.h, types.hpp, common.hpp) and the Edison board's
(src/x86/intel_edison_fab_c.c), for the fake `mraa` (mraa.py beside this file).
"""

from __future__ import annotations

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
