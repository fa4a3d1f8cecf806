"""Bosch BME280 over I2C: temperature, relative humidity and barometric pressure.

Each read is one forced-mode measurement (datasheet BST-BME280-DS002 sections 3.3.3 and 3.5.1:
Bosch's choice for low sampling rates and weather monitoring): trigger, wait the worst-case
conversion time, burst read the data block, then the datasheet's integer compensation (4.2.3). The compensation
functions are public: the simulated part (agent/hardware/simulated/bme280.py) inverts them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from agent.hardware.board import I2CDevice
from agent.hardware.sensors.base import Channel, Sensor, SensorError, Value

# Register map, datasheet section 5.3 (table 18).
REG_CALIB_TP = 0x88  # 0x88..0xA1: dig_T1..dig_P9, a reserved byte, dig_H1
REG_CALIB_H = 0xE1  # 0xE1..0xE7: dig_H2..dig_H6
REG_ID = 0xD0
REG_RESET = 0xE0
REG_CTRL_HUM = 0xF2
REG_STATUS = 0xF3
REG_CTRL_MEAS = 0xF4
REG_CONFIG = 0xF5
REG_DATA = 0xF7  # 0xF7..0xFE: press msb/lsb/xlsb, temp msb/lsb/xlsb, hum msb/lsb

CHIP_ID = 0x60
# The BMP280 (same package and registers, no humidity sensor): 0x58, or 0x56/0x57 on samples.
BMP280_CHIP_IDS = (0x56, 0x57, 0x58)
RESET_COMMAND = 0xB6
STATUS_MEASURING = 0x08  # section 5.4.4: set while a conversion runs
STATUS_IM_UPDATE = 0x01  # section 5.4.4: set while the NVM trimming data is copied to the image registers
MODE_SLEEP = 0b00
MODE_FORCED = 0b01

ADDRESSES = (0x76, 0x77)  # section 6.2: SDO to GND is 0x76, SDO to VDDIO is 0x77
# osrs_h / osrs_t / osrs_p field values (sections 5.4.3, 5.4.5); 0 would skip the measurement.
OVERSAMPLING = {1: 0b001, 2: 0b010, 4: 0b011, 8: 0b100, 16: 0b101}
# The IIR filter field of config (section 5.4.6, table 28); 0 is off.
IIR_FILTER = {0: 0b000, 2: 0b001, 4: 0b010, 8: 0b011, 16: 0b100}
# What the data registers hold for a measurement that was skipped (section 5.4.7 to 5.4.9).
SKIPPED_20BIT = 0x80000
SKIPPED_16BIT = 0x8000

# Operating ranges, section 1 (table 1); humidity is clipped to 0..100 %RH by the compensation.
TEMPERATURE_RANGE = (-40.0, 85.0)
PRESSURE_RANGE = (300.0, 1100.0)

# Table 1: start-up time 2 ms; after a soft reset the NVM copy takes about as long. Bosch's API
# polls im_update five times at this interval before giving up.
STARTUP_S = 0.002
NVM_POLLS = 5
# A little slack over the datasheet's maximum before a conversion that still runs is an error.
POLL_S = 0.001
MARGIN_S = 0.005


@dataclass(frozen=True)
class Calibration:
    """The trimming parameters (section 4.2.2, table 16), each with its datasheet type's range."""

    dig_T1: int
    dig_T2: int
    dig_T3: int
    dig_P1: int
    dig_P2: int
    dig_P3: int
    dig_P4: int
    dig_P5: int
    dig_P6: int
    dig_P7: int
    dig_P8: int
    dig_P9: int
    dig_H1: int
    dig_H2: int
    dig_H3: int
    dig_H4: int
    dig_H5: int
    dig_H6: int


def _u16(data: bytes, i: int) -> int:
    return data[i] | (data[i + 1] << 8)


def _s16(data: bytes, i: int) -> int:
    value = _u16(data, i)
    return value - 0x10000 if value & 0x8000 else value


def _s8(value: int) -> int:
    return value - 0x100 if value & 0x80 else value


def parse_calibration(tp: bytes, h: bytes) -> Calibration:
    """`tp`: the 26 bytes from 0x88, `h`: the 7 bytes from 0xE1 (table 16; words are little-endian)."""
    if len(tp) != 26 or len(h) != 7:
        raise ValueError("calibration blocks are 26 and 7 bytes, not %d and %d" % (len(tp), len(h)))
    return Calibration(
        dig_T1=_u16(tp, 0), dig_T2=_s16(tp, 2), dig_T3=_s16(tp, 4),
        dig_P1=_u16(tp, 6), dig_P2=_s16(tp, 8), dig_P3=_s16(tp, 10), dig_P4=_s16(tp, 12),
        dig_P5=_s16(tp, 14), dig_P6=_s16(tp, 16), dig_P7=_s16(tp, 18), dig_P8=_s16(tp, 20),
        dig_P9=_s16(tp, 22),
        # tp[24] is 0xA0, reserved.
        dig_H1=tp[25],
        dig_H2=_s16(h, 0),
        dig_H3=h[2],
        # dig_H4 and dig_H5 are signed 12-bit values sharing 0xE5: H4 = E4[7:0] E5[3:0],
        # H5 = E6[7:0] E5[7:4]. The sign comes from the whole byte (E4, E6) read as int8.
        dig_H4=(_s8(h[3]) * 16) | (h[4] & 0x0F),
        dig_H5=(_s8(h[5]) * 16) | (h[4] >> 4),
        dig_H6=_s8(h[6]),
    )


# The compensation below is the datasheet's C code (section 4.2.3, rev. 1.1; humidity rev. 1.0) in
# Python. Python's >> on a negative int floors, as the arithmetic shift of gcc and every compiler
# Bosch targets does. Python ints never overflow: _i32/_i64 wrap each product and sum where the C
# types could, so out-of-range inputs give what a two's-complement C build gives. C's `/` truncates
# towards zero, unlike Python's `//`: _div does it C's way.

def _i32(x: int) -> int:
    return ((x + 0x80000000) & 0xFFFFFFFF) - 0x80000000


def _i64(x: int) -> int:
    return ((x + 0x8000000000000000) & 0xFFFFFFFFFFFFFFFF) - 0x8000000000000000


def _div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def compensate_temperature(adc_t: int, cal: Calibration) -> Tuple[int, int]:
    """BME280_compensate_T_int32: (temperature in 0.01 degC, t_fine for P and H)."""
    var1 = _i32(_i32(((adc_t >> 3) - (cal.dig_T1 << 1)) * cal.dig_T2) >> 11)
    d = (adc_t >> 4) - cal.dig_T1
    var2 = _i32(_i32((_i32(d * d) >> 12) * cal.dig_T3) >> 14)
    t_fine = _i32(var1 + var2)
    return _i32(t_fine * 5 + 128) >> 8, t_fine


def compensate_pressure(adc_p: int, t_fine: int, cal: Calibration) -> int:
    """BME280_compensate_P_int64: pressure in Pa as Q24.8 (1/256 Pa); 0 where C divides by zero."""
    var1 = _i64(t_fine - 128000)
    var2 = _i64(var1 * var1 * cal.dig_P6)
    var2 = _i64(var2 + _i64(_i64(var1 * cal.dig_P5) << 17))
    var2 = _i64(var2 + _i64(cal.dig_P4 << 35))
    var1 = _i64((_i64(var1 * var1 * cal.dig_P3) >> 8) + _i64(_i64(var1 * cal.dig_P2) << 12))
    var1 = _i64(_i64(((1 << 47) + var1) * cal.dig_P1) >> 33)
    if var1 == 0:
        return 0
    p = 1048576 - adc_p
    p = _div(_i64(_i64(_i64(p << 31) - var2) * 3125), var1)
    var1 = _i64(_i64(cal.dig_P9 * (p >> 13) * (p >> 13)) >> 25)
    var2 = _i64(cal.dig_P8 * p) >> 19
    p = _i64(_i64(p + var1 + var2) >> 8) + _i64(cal.dig_P7 << 4)
    return p & 0xFFFFFFFF  # the C function returns it as BME280_U32_t


def compensate_humidity(adc_h: int, t_fine: int, cal: Calibration) -> int:
    """bme280_compensate_H_int32: relative humidity in %RH as Q22.10 (1/1024 %RH), clipped to 0..100."""
    x = _i32(t_fine - 76800)
    a = _i32(_i32(_i32(adc_h << 14) - _i32(cal.dig_H4 << 20) - _i32(cal.dig_H5 * x)) + 16384) >> 15
    b = _i32(_i32(x * cal.dig_H6) >> 10)
    c = _i32(_i32(x * cal.dig_H3) >> 11) + 32768
    d = _i32(_i32(_i32(_i32(b * c) >> 10) + 2097152) * cal.dig_H2 + 8192) >> 14
    x = _i32(a * d)
    x = _i32(x - (_i32(_i32(_i32((x >> 15) * (x >> 15)) >> 7) * cal.dig_H1) >> 4))
    x = min(max(x, 0), 419430400)
    return x >> 12


def max_measurement_time_s(osr_t: int, osr_p: int, osr_h: int) -> float:
    """Appendix B, section 9.1: the maximum time of one measurement, by oversampling factor (0 = skipped)."""
    ms = 1.25 + 2.3 * osr_t
    if osr_p:
        ms += 2.3 * osr_p + 0.575
    if osr_h:
        ms += 2.3 * osr_h + 0.575
    return ms / 1000.0


@dataclass(frozen=True)
class BME280Options:
    bus: int = 6
    # 0x76 with SDO to GND (most breakouts), 0x77 with SDO to VDDIO.
    address: int = 0x76
    # Oversampling factors, 1, 2, 4, 8 or 16: more lowers the noise and lengthens each read
    # (9.3 ms at 1/1/1, 113 ms at 16/16/16).
    temperature_oversampling: int = 1
    pressure_oversampling: int = 1
    humidity_oversampling: int = 1
    # The chip's IIR filter on temperature and pressure, 0 (off), 2, 4, 8 or 16. Bosch advises off
    # for weather monitoring; it smooths door slams and wind gusts out of indoor pressure.
    iir_filter: int = 0


class BME280Sensor(Sensor):
    Options = BME280Options
    _device: Optional[I2CDevice] = None
    _calibration: Optional[Calibration] = None

    @classmethod
    def check_options(cls, options: BME280Options) -> List[Tuple[str, str]]:
        problems = []
        if options.address not in ADDRESSES:
            problems.append(("address", "0x%02x is not a BME280 address: it answers at 0x76 (SDO to GND) "
                                        "or 0x77 (SDO to VDDIO)" % options.address))
        for key in ("temperature_oversampling", "pressure_oversampling", "humidity_oversampling"):
            value = getattr(options, key)
            if value not in OVERSAMPLING:
                problems.append((key, "%d is not an oversampling factor: use 1, 2, 4, 8 or 16" % value))
        if options.iir_filter not in IIR_FILTER:
            problems.append(("iir_filter", "%d is not a filter coefficient: use 0 (off), 2, 4, 8 or 16"
                             % options.iir_filter))
        return problems

    @classmethod
    def channels(cls, options: BME280Options) -> Tuple[Channel, ...]:
        return (Channel("temperature", "degC"), Channel("humidity", "%RH"), Channel("pressure", "hPa"))

    @property
    def calibration(self) -> Optional[Calibration]:
        return self._calibration

    def _where(self) -> str:
        return "BME280 at I2C bus %d address 0x%02x" % (self.options.bus, self.options.address)

    def setup(self) -> None:
        device = self.board.i2c(self.options.bus, self.options.address, chip="bme280")
        found = device.read_reg(REG_ID)
        if found != CHIP_ID:
            hint = (": that is a BMP280, which has no humidity sensor" if found in BMP280_CHIP_IDS
                    else ": is another part at this address?")
            raise SensorError("%s: chip id register 0xD0 reads 0x%02x, expected 0x%02x%s"
                              % (self._where(), found, CHIP_ID, hint))
        device.write_reg(REG_RESET, RESET_COMMAND)
        self._wait_for_nvm(device)
        self._calibration = parse_calibration(device.read_bytes_reg(REG_CALIB_TP, 26),
                                              device.read_bytes_reg(REG_CALIB_H, 7))
        # Section 5.4.3: ctrl_hum takes effect only with the next write to ctrl_meas, so it goes first.
        # Section 5.4.6: config is written in sleep mode, where writes are never ignored.
        device.write_reg(REG_CTRL_HUM, OVERSAMPLING[self.options.humidity_oversampling])
        device.write_reg(REG_CONFIG, IIR_FILTER[self.options.iir_filter] << 2)
        device.write_reg(REG_CTRL_MEAS, self._ctrl_meas(MODE_SLEEP))
        self._device = device

    def _wait_for_nvm(self, device: I2CDevice) -> None:
        for _ in range(NVM_POLLS):
            time.sleep(STARTUP_S)
            if not device.read_reg(REG_STATUS) & STATUS_IM_UPDATE:
                return
        raise SensorError("%s: still copying its calibration from NVM %d ms after a reset (status im_update set)"
                          % (self._where(), NVM_POLLS * STARTUP_S * 1000))

    def _ctrl_meas(self, mode: int) -> int:
        return (OVERSAMPLING[self.options.temperature_oversampling] << 5
                | OVERSAMPLING[self.options.pressure_oversampling] << 2 | mode)

    def read_all(self) -> Dict[str, Value]:
        device, cal = self._device, self._calibration
        assert device is not None and cal is not None, "setup() first"
        o = self.options
        # ctrl_hum again: if the part lost power since setup, humidity would be skipped (0x8000).
        device.write_reg(REG_CTRL_HUM, OVERSAMPLING[o.humidity_oversampling])
        device.write_reg(REG_CTRL_MEAS, self._ctrl_meas(MODE_FORCED))
        longest = max_measurement_time_s(o.temperature_oversampling, o.pressure_oversampling,
                                         o.humidity_oversampling)
        started = time.monotonic()
        time.sleep(longest)
        while device.read_reg(REG_STATUS) & STATUS_MEASURING:
            if time.monotonic() - started > longest + MARGIN_S:
                raise SensorError("%s: measurement still running after %.1f ms (the datasheet's maximum is %.1f ms)"
                                  % (self._where(), (time.monotonic() - started) * 1000, longest * 1000))
            time.sleep(POLL_S)
        # One burst read, so all three values come from the same measurement (section 4).
        data = device.read_bytes_reg(REG_DATA, 8)
        adc_p = (data[0] << 12) | (data[1] << 4) | (data[2] >> 4)
        adc_t = (data[3] << 12) | (data[4] << 4) | (data[5] >> 4)
        adc_h = (data[6] << 8) | data[7]
        skipped = [name for name, raw, mark in (("temperature", adc_t, SKIPPED_20BIT),
                                                ("pressure", adc_p, SKIPPED_20BIT),
                                                ("humidity", adc_h, SKIPPED_16BIT)) if raw == mark]
        if skipped:
            raise SensorError("%s: no %s measurement (data registers hold the 'skipped' value; "
                              "did the part reset?)" % (self._where(), " or ".join(skipped)))
        centi_degrees, t_fine = compensate_temperature(adc_t, cal)
        temperature = centi_degrees / 100.0
        pressure = compensate_pressure(adc_p, t_fine, cal) / 256.0 / 100.0
        # Outside the operating range (section 1, table 1) the value is not a measurement but a
        # fault: a damaged part, a corrupted calibration, a bus returning garbage.
        if not TEMPERATURE_RANGE[0] <= temperature <= TEMPERATURE_RANGE[1]:
            raise SensorError("%s: temperature %.2f degC is outside the part's range (%g..%g degC)"
                              % ((self._where(), temperature) + TEMPERATURE_RANGE))
        if not PRESSURE_RANGE[0] <= pressure <= PRESSURE_RANGE[1]:
            raise SensorError("%s: pressure %.2f hPa is outside the part's range (%g..%g hPa)"
                              % ((self._where(), pressure) + PRESSURE_RANGE))
        return {
            "temperature": temperature,
            "humidity": compensate_humidity(adc_h, t_fine, cal) / 1024.0,
            "pressure": pressure,
        }

    def close(self) -> None:
        self._device = None
