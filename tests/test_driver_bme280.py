"""The bme280 driver: Bosch's worked example through the real register path, the failures a bus
and a part can produce, and the simulated part it runs against on a laptop."""

from __future__ import annotations

import dataclasses
import struct
import time
from typing import Any, Dict, List, Tuple

import pytest

from agent.hardware import simulated
from agent.hardware.board import BoardError, MraaBoard
from agent.hardware.sensors.base import SensorError
from agent.hardware.sensors.bme280 import (
    BME280Options,
    BME280Sensor,
    Calibration,
    compensate_humidity,
    compensate_pressure,
    compensate_temperature,
    max_measurement_time_s,
)
from agent.hardware.simulated import SimulatedBoard
from agent.hardware.simulated.bme280 import SimulatedBME280, raw_humidity, raw_pressure, raw_temperature

# BMP280 datasheet (BST-BMP280-DS001) section 3.12, the worked example Bosch gives for the temperature
# and pressure compensation the BME280 shares: adc_T 519888 -> 25.08 degC (t_fine 128422),
# adc_P 415148 -> 100653.27 Pa. The datasheet has no humidity example: these H values are a real
# part's, and humidity is checked against the datasheet's double-precision formula instead.
EXAMPLE = Calibration(
    dig_T1=27504, dig_T2=26435, dig_T3=-1000,
    dig_P1=36477, dig_P2=-10685, dig_P3=3024, dig_P4=2855, dig_P5=140, dig_P6=-7, dig_P7=15500,
    dig_P8=-14600, dig_P9=6000,
    dig_H1=75, dig_H2=362, dig_H3=0, dig_H4=313, dig_H5=50, dig_H6=30,
)
ADC_T, ADC_P, ADC_H = 519888, 415148, 27000

# 15:00 UTC, when the simulated room is warmest (a fixed clock makes its signals repeatable).
AFTERNOON = 1_699_974_000.0


def calibration_registers(cal: Calibration) -> Dict[int, int]:
    """The NVM as the part holds it (datasheet table 16), packed here independently of the driver."""
    tp = struct.pack("<HhhHhhhhhhhhBB", cal.dig_T1, cal.dig_T2, cal.dig_T3, cal.dig_P1, cal.dig_P2, cal.dig_P3,
                     cal.dig_P4, cal.dig_P5, cal.dig_P6, cal.dig_P7, cal.dig_P8, cal.dig_P9, 0, cal.dig_H1)
    # 0xE4 = H4[11:4], 0xE5 = H5[3:0] H4[3:0], 0xE6 = H5[11:4]
    h = struct.pack("<hBBBBb", cal.dig_H2, cal.dig_H3, (cal.dig_H4 >> 4) & 0xFF,
                    ((cal.dig_H5 & 0x0F) << 4) | (cal.dig_H4 & 0x0F), (cal.dig_H5 >> 4) & 0xFF, cal.dig_H6)
    registers = {0x88 + i: b for i, b in enumerate(tp)}
    registers.update({0xE1 + i: b for i, b in enumerate(h)})
    return registers


def data_registers(adc_t: int, adc_p: int, adc_h: int) -> Dict[int, int]:
    """0xF7..0xFE: press_msb/lsb/xlsb[7:4], temp_msb/lsb/xlsb[7:4], hum_msb/lsb (datasheet section 5.4.7-5.4.9)."""
    values = [adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0x0F) << 4,
              adc_t >> 12, (adc_t >> 4) & 0xFF, (adc_t & 0x0F) << 4, adc_h >> 8, adc_h & 0xFF]
    return {0xF7 + i: b for i, b in enumerate(values)}


def bme280_registers(chip_id: int = 0x60, cal: Calibration = EXAMPLE, adc: Tuple[int, int, int] = (ADC_T, ADC_P, ADC_H),
                     status: int = 0x00) -> Dict[int, int]:
    registers = {0xD0: chip_id, 0xF3: status}
    registers.update(calibration_registers(cal))
    registers.update(data_registers(*adc))
    return registers


class Recorder:
    """A BME280 register file that logs each write (register, value, time) and each read, in order.
    Writes are register/value pairs, as the part takes them (datasheet section 6.2.1)."""

    def __init__(self, registers: Dict[int, int]) -> None:
        self.registers = registers
        self.pointer = 0
        self.writes: List[Tuple[int, int, float]] = []
        self.reads: List[Tuple[int, int, float]] = []

    def i2c_write(self, data: bytes) -> None:
        self.pointer = data[0]
        for reg, value in zip(data[0::2], data[1::2]):
            self.registers[reg] = value
            self.writes.append((reg, value, time.monotonic()))

    def i2c_read(self, n: int) -> bytes:
        self.reads.append((self.pointer, n, time.monotonic()))
        data = bytes(self.registers.get((self.pointer + i) & 0xFF, 0) for i in range(n))
        self.pointer = (self.pointer + n) & 0xFF
        return data

    def written(self) -> List[Tuple[int, int]]:
        return [(reg, value) for reg, value, _ in self.writes]


def make(board: Any, **options: Any) -> BME280Sensor:
    sensor = BME280Sensor("env", BME280Options(**options), board)
    sensor.setup()
    return sensor


def double_humidity(adc_h: int, t_fine: int, c: Calibration) -> float:
    """The datasheet's double-precision humidity (section 8.1), an independent check of the integer code."""
    var_h = t_fine - 76800.0
    var_h = (adc_h - (c.dig_H4 * 64.0 + c.dig_H5 / 16384.0 * var_h)) * (
        c.dig_H2 / 65536.0 * (1.0 + c.dig_H6 / 67108864.0 * var_h * (1.0 + c.dig_H3 / 67108864.0 * var_h)))
    var_h = var_h * (1.0 - c.dig_H1 * var_h / 524288.0)
    return min(100.0, max(0.0, var_h))


# ---- the datasheet's arithmetic --------------------------------------------------------------


def test_integer_compensation_gives_the_datasheet_worked_example():
    centi_degrees, t_fine = compensate_temperature(ADC_T, EXAMPLE)
    assert (centi_degrees, t_fine) == (2508, 128422)
    q24_8 = compensate_pressure(ADC_P, t_fine, EXAMPLE)
    # The datasheet's 100653.27 Pa comes from the floating-point code; the int64 code is within 0.02 Pa.
    # 25767233 is also what the datasheet's C code gives, compiled with gcc.
    assert q24_8 == 25767233
    assert q24_8 / 256 == pytest.approx(100653.27, abs=0.05)


@pytest.mark.parametrize("adc_t", [380000, 450000, 519888, 600000])
@pytest.mark.parametrize("adc_h", [15000, 27000, 33000, 40000])
def test_integer_humidity_agrees_with_the_datasheets_double_precision_formula(adc_t, adc_h):
    t_fine = compensate_temperature(adc_t, EXAMPLE)[1]
    assert compensate_humidity(adc_h, t_fine, EXAMPLE) / 1024 == pytest.approx(
        double_humidity(adc_h, t_fine, EXAMPLE), abs=0.02)


def test_32_bit_arithmetic_wraps_as_the_c_code_does():
    # ((adc_T >> 4) - dig_T1) squared is 65535**2 here, past int32: C wraps it to -131071, and
    # -131071 >> 12 is -32, * dig_T3 (1) >> 14 is -1. Unbounded Python ints would give +63.
    cal = Calibration(*([0, 0, 1] + [0] * 15))
    assert compensate_temperature(0xFFFF0, cal)[1] == -1


def test_64_bit_division_truncates_towards_zero_as_c_does():
    # Raw values no real pressure gives, where the dividend is negative: C's `/` rounds towards
    # zero (Python's // would floor, one less here) and the result is cast to uint32. The expected
    # value is what the datasheet's C code gives, compiled with gcc.
    t_fine = compensate_temperature(466686, EXAMPLE)[1]
    assert t_fine == 42901
    assert compensate_pressure(1045374, t_fine, EXAMPLE) == 4293485038


def test_measurement_time_follows_appendix_b():
    # Section 9.1's example: T x1, P x4, no humidity is 11.5 ms typical, so 13.325 ms at most.
    assert max_measurement_time_s(1, 4, 0) == pytest.approx(0.013325)
    assert max_measurement_time_s(1, 1, 1) == pytest.approx(0.0093)
    assert max_measurement_time_s(16, 16, 16) == pytest.approx(0.1128)


# ---- the driver on the bus (fake libmraa) ------------------------------------------------------


def test_reads_the_worked_example_from_the_registers(mraa):
    mraa._add_i2c_device(6, 0x76, bme280_registers())
    values = make(MraaBoard(mraa)).read_all()
    assert values["temperature"] == 25.08
    assert values["pressure"] == pytest.approx(1006.5327, abs=0.0005)
    t_fine = 128422
    assert values["humidity"] == pytest.approx(double_humidity(ADC_H, t_fine, EXAMPLE), abs=0.02)
    assert set(values) == {"temperature", "humidity", "pressure"}


def test_channels_are_temperature_humidity_and_pressure():
    assert [(c.key, c.unit) for c in BME280Sensor.channels(BME280Options())] == [
        ("temperature", "degC"), ("humidity", "%RH"), ("pressure", "hPa")]


def test_decodes_the_packed_signed_humidity_trimming(mraa):
    cal = dataclasses.replace(EXAMPLE, dig_H1=200, dig_H2=-300, dig_H3=250, dig_H4=-349, dig_H5=-27, dig_H6=-5)
    mraa._add_i2c_device(6, 0x76, bme280_registers(cal=cal))
    assert make(MraaBoard(mraa)).calibration == cal


def test_resets_then_writes_ctrl_hum_before_ctrl_meas(mraa):
    chip = Recorder(bme280_registers())
    mraa._add_i2c_device(6, 0x76, chip)
    sensor = make(MraaBoard(mraa), temperature_oversampling=2, pressure_oversampling=16, humidity_oversampling=4,
                  iir_filter=8)
    # Soft reset first, then ctrl_hum (osrs_h x4 = 011), config (filter 8 = 011 in bits 4:2),
    # ctrl_meas (osrs_t x2 = 010, osrs_p x16 = 101, sleep) - datasheet sections 5.4.2 to 5.4.6.
    assert chip.written() == [(0xE0, 0xB6), (0xF2, 0x03), (0xF5, 0x0C), (0xF4, 0b010_101_00)]
    del chip.writes[:]
    sensor.read_all()
    # Each forced measurement: ctrl_hum again, then ctrl_meas with mode 01.
    assert chip.written() == [(0xF2, 0x03), (0xF4, 0b010_101_01)]


def test_waits_the_datasheets_maximum_before_reading_the_data(mraa):
    chip = Recorder(bme280_registers())
    mraa._add_i2c_device(6, 0x76, chip)
    sensor = make(MraaBoard(mraa))
    del chip.writes[:], chip.reads[:]
    sensor.read_all()
    triggered = next(t for reg, value, t in chip.writes if reg == 0xF4 and value & 0x03 == 0x01)
    burst = [(n, t) for reg, n, t in chip.reads if reg == 0xF7]
    assert [n for n, _ in burst] == [8]  # one burst read of the whole data block
    assert burst[0][1] - triggered >= max_measurement_time_s(1, 1, 1)


def test_accepts_0x77_and_other_settings():
    assert BME280Sensor.check_options(BME280Options(address=0x77, temperature_oversampling=16,
                                                    iir_filter=16)) == []


def test_rejects_an_address_and_settings_the_part_cannot_have():
    problems = dict(BME280Sensor.check_options(BME280Options(address=0x40, humidity_oversampling=3,
                                                             iir_filter=5)))
    assert "0x76" in problems["address"] and "0x77" in problems["address"]
    assert "1, 2, 4, 8 or 16" in problems["humidity_oversampling"]
    assert "0 (off), 2, 4, 8 or 16" in problems["iir_filter"]


def test_no_device_at_the_address_is_a_board_error_naming_bus_and_address(mraa):
    with pytest.raises(BoardError, match=r"I2C bus 6 device 0x76: read register 0xd0 failed"):
        make(MraaBoard(mraa))


def test_a_bmp280_is_named_as_the_part_without_humidity(mraa):
    mraa._add_i2c_device(6, 0x76, bme280_registers(chip_id=0x58))
    with pytest.raises(SensorError, match=r"0xD0 reads 0x58, expected 0x60: that is a BMP280, which has no humidity"):
        make(MraaBoard(mraa))


def test_another_chip_id_is_reported_with_what_was_found(mraa):
    mraa._add_i2c_device(6, 0x77, bme280_registers(chip_id=0x55))
    with pytest.raises(SensorError, match=r"address 0x77: chip id register 0xD0 reads 0x55, expected 0x60"):
        make(MraaBoard(mraa), address=0x77)


def test_failing_reads_are_board_errors(mraa):
    mraa._add_i2c_device(6, 0x76, bme280_registers())
    sensor = make(MraaBoard(mraa))
    mraa._fail_reads("i2c", 6)
    with pytest.raises(BoardError, match=r"I2C bus 6 device 0x76: read register 0xf3 failed"):
        sensor.read_all()


def test_nvm_copy_that_never_finishes_is_a_sensor_error(mraa):
    mraa._add_i2c_device(6, 0x76, bme280_registers(status=0x01))
    with pytest.raises(SensorError, match=r"still copying its calibration from NVM 10 ms after a reset"):
        make(MraaBoard(mraa))


def test_a_measurement_that_never_finishes_fails_soon_after_the_datasheet_maximum(mraa):
    mraa._add_i2c_device(6, 0x76, bme280_registers(status=0x08))
    sensor = make(MraaBoard(mraa))
    started = time.monotonic()
    with pytest.raises(SensorError, match=r"still running after [\d.]+ ms \(the datasheet's maximum is 9\.3 ms\)"):
        sensor.read_all()
    assert time.monotonic() - started < 0.1


@pytest.mark.parametrize("adc, missing", [
    ((0x80000, 0x80000, 0x8000), "temperature or pressure or humidity"),
    ((ADC_T, ADC_P, 0x8000), "humidity"),
    ((ADC_T, 0x80000, ADC_H), "pressure"),
])
def test_a_skipped_measurement_is_a_sensor_error_not_a_value(mraa, adc, missing):
    mraa._add_i2c_device(6, 0x76, bme280_registers(adc=adc))
    with pytest.raises(SensorError, match=r"no %s measurement" % missing):
        make(MraaBoard(mraa)).read_all()


def test_a_value_outside_the_parts_range_is_a_sensor_error(mraa):
    mraa._add_i2c_device(6, 0x76, bme280_registers(adc=(0xFFFF0, ADC_P, ADC_H)))
    with pytest.raises(SensorError, match=r"temperature .* is outside the part's range \(-40\.\.85 degC\)"):
        make(MraaBoard(mraa)).read_all()


# ---- the simulated part -----------------------------------------------------------------------


def test_simulation_inverts_the_compensation():
    adc_t = raw_temperature(21.0)
    centi_degrees, t_fine = compensate_temperature(adc_t, EXAMPLE)
    assert centi_degrees == 2100
    hpa = compensate_pressure(raw_pressure(1013.25, t_fine), t_fine, EXAMPLE) / 25600
    assert hpa == pytest.approx(1013.25, abs=0.01)
    assert compensate_humidity(raw_humidity(45.0, t_fine), t_fine, EXAMPLE) / 1024 == pytest.approx(45.0, abs=0.01)


def test_simulated_part_answers_like_the_real_one():
    chip = SimulatedBME280(seed=1, clock=lambda: AFTERNOON)

    def read(reg: int, n: int = 1) -> bytes:
        chip.i2c_write(bytes([reg]))
        return chip.i2c_read(n)

    assert read(0xD0) == b"\x60"
    # After power-on every measurement reads as skipped (datasheet table 18).
    assert read(0xF7, 8) == bytes([0x80, 0, 0, 0x80, 0, 0, 0x80, 0])
    chip.i2c_write(bytes([0xD0, 0x12]))  # read-only: ignored
    assert read(0xD0) == b"\x60"
    chip.i2c_write(bytes([0xF2, 0x00, 0xF4, 0b001_001_01]))  # humidity skipped, forced mode
    time.sleep(0.01)
    data = read(0xF7, 8)
    assert data[6:] == b"\x80\x00" and data[:3] != b"\x80\x00\x00"
    assert read(0xF4)[0] & 0x03 == 0  # forced mode returns to sleep after the measurement
    chip.i2c_write(bytes([0xE0, 0xB6]))
    assert read(0xE0) == b"\x00" and read(0xF3)[0] & 0x01 == 0x01  # reset: NVM copy under way
    assert read(0xF3)[0] & 0x01 == 0


def test_driver_reads_a_plausible_room_from_the_simulated_part_through_mraa(mraa):
    mraa._add_i2c_device(6, 0x77, SimulatedBME280(seed=7, clock=lambda: AFTERNOON))
    values = make(MraaBoard(mraa), address=0x77).read_all()
    # The simulated room at 15:00 UTC: 23 degC, 41 %RH, 1013.56 hPa, plus a little noise.
    assert values["temperature"] == pytest.approx(23.0, abs=0.2)
    assert values["humidity"] == pytest.approx(41.0, abs=1.0)
    assert values["pressure"] == pytest.approx(1013.56, abs=0.15)


def test_driver_recovers_when_the_part_resets_between_reads(mraa):
    chip = SimulatedBME280(seed=7, clock=lambda: AFTERNOON)
    mraa._add_i2c_device(6, 0x76, chip)
    sensor = make(MraaBoard(mraa))
    chip.i2c_write(bytes([0xE0, 0xB6]))  # a brown-out: ctrl_hum is back to 0 (humidity skipped)
    assert sensor.read_all()["humidity"] == pytest.approx(41.0, abs=1.0)


def test_iir_filter_and_oversampling_run_on_the_simulated_part(mraa):
    mraa._add_i2c_device(6, 0x76, SimulatedBME280(seed=3, clock=lambda: AFTERNOON))
    sensor = make(MraaBoard(mraa), temperature_oversampling=4, pressure_oversampling=8, humidity_oversampling=2,
                  iir_filter=4)
    readings = [sensor.read_all() for _ in range(3)]
    assert all(r["pressure"] == pytest.approx(1013.56, abs=0.15) for r in readings)


def test_simulated_board_gives_the_same_room_for_the_same_seed(monkeypatch):
    monkeypatch.setitem(simulated.CHIPS, "bme280", lambda seed: SimulatedBME280(seed, clock=lambda: AFTERNOON))

    def three_reads() -> List[Dict[str, Any]]:
        sensor = make(SimulatedBoard())
        return [sensor.read_all() for _ in range(3)]

    first, second = three_reads(), three_reads()
    assert first == second
    assert all(15 < r["temperature"] < 30 and 30 < r["humidity"] < 60 and 1000 < r["pressure"] < 1025
               for r in first)
