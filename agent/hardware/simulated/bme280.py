"""A simulated Bosch BME280: the register map, reset, forced and normal modes, status bits and the
IIR filter of the real part, with a room's temperature, humidity and pressure behind it.

The raw ADC words it reports are found by searching the datasheet's compensation (the driver's
own functions, all monotonic in the raw value) for the value that gives the room's, so the driver
reads back the room through exactly the arithmetic it uses on a real part.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Tuple

from agent.hardware.sensors.bme280 import (
    CHIP_ID,
    REG_CALIB_H,
    REG_CALIB_TP,
    REG_CONFIG,
    REG_CTRL_HUM,
    REG_CTRL_MEAS,
    REG_DATA,
    REG_ID,
    REG_RESET,
    REG_STATUS,
    RESET_COMMAND,
    SKIPPED_16BIT,
    SKIPPED_20BIT,
    STATUS_IM_UPDATE,
    STATUS_MEASURING,
    Calibration,
    compensate_humidity,
    compensate_pressure,
    compensate_temperature,
)
from agent.hardware.simulated.i2c import RegisterChip
from agent.hardware.simulated.signals import Signal, room_humidity, room_temperature

# Temperature and pressure trimming from the BMP280 datasheet's worked example (section 3.12; the
# BME280 shares that part of the die), humidity trimming as read from a real BME280.
CALIBRATION = Calibration(
    dig_T1=27504, dig_T2=26435, dig_T3=-1000,
    dig_P1=36477, dig_P2=-10685, dig_P3=3024, dig_P4=2855, dig_P5=140, dig_P6=-7, dig_P7=15500,
    dig_P8=-14600, dig_P9=6000,
    dig_H1=75, dig_H2=362, dig_H3=0, dig_H4=313, dig_H5=50, dig_H6=30,
)

# Registers a write reaches (section 5.3); the rest are read-only and ignore writes.
_WRITABLE = (REG_RESET, REG_CTRL_HUM, REG_CTRL_MEAS, REG_CONFIG)
# Data registers after power-on or reset: every measurement "skipped" (section 5.3, table 18).
_DATA_RESET = bytes([0x80, 0x00, 0x00, 0x80, 0x00, 0x00, 0x80, 0x00])
# osrs field -> oversampling factor (sections 5.4.3, 5.4.5; 101 and above are all x16).
_FACTOR = {0: 0, 1: 1, 2: 2, 3: 4, 4: 8, 5: 16, 6: 16, 7: 16}
# config filter field -> IIR coefficient (table 28; 100 and above are all 16).
_IIR = {0: 0, 1: 2, 2: 4, 3: 8, 4: 16, 5: 16, 6: 16, 7: 16}
# config t_sb field -> standby time in normal mode, ms (table 27).
_STANDBY_MS = (0.5, 62.5, 125.0, 250.0, 500.0, 1000.0, 10.0, 20.0)


def calibration_bytes(cal: Calibration) -> Tuple[bytes, bytes]:
    """The two NVM blocks as the part stores them: 26 bytes at 0x88, 7 bytes at 0xE1 (table 16)."""
    def word(value: int) -> bytes:
        return bytes([value & 0xFF, (value >> 8) & 0xFF])

    tp = b"".join(word(v) for v in (cal.dig_T1, cal.dig_T2, cal.dig_T3, cal.dig_P1, cal.dig_P2, cal.dig_P3,
                                    cal.dig_P4, cal.dig_P5, cal.dig_P6, cal.dig_P7, cal.dig_P8, cal.dig_P9))
    tp += bytes([0x00, cal.dig_H1])
    h = word(cal.dig_H2) + bytes([
        cal.dig_H3,
        (cal.dig_H4 >> 4) & 0xFF,
        ((cal.dig_H5 & 0x0F) << 4) | (cal.dig_H4 & 0x0F),
        (cal.dig_H5 >> 4) & 0xFF,
        cal.dig_H6 & 0xFF,
    ])
    return tp, h


def _first(lo: int, hi: int, reached: Callable[[int], bool]) -> int:
    """The smallest raw value in lo..hi for which `reached` holds (False below it, True from it on)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if reached(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _nearest(raw: int, lo: int, value_at: Callable[[int], int], target: int) -> int:
    """Of `raw` and the raw value just below it, the one whose compensated value is nearer `target`."""
    if raw > lo and abs(value_at(raw - 1) - target) <= abs(value_at(raw) - target):
        return raw - 1
    return raw


def raw_temperature(degrees: float, cal: Calibration = CALIBRATION) -> int:
    """The 20-bit adc_T that compensates to `degrees` (via t_fine, which has 1/5120 degC steps)."""
    target = int(round(degrees * 5120))

    def t_fine(raw: int) -> int:
        return compensate_temperature(raw, cal)[1]

    return _nearest(_first(0, 0xFFFFF, lambda raw: t_fine(raw) >= target), 0, t_fine, target)


def raw_pressure(hpa: float, t_fine: int, cal: Calibration = CALIBRATION) -> int:
    """The 20-bit adc_P that compensates to `hpa` at `t_fine` (pressure falls as adc_P rises)."""
    target = int(round(hpa * 100 * 256))

    def q24_8(raw: int) -> int:
        return compensate_pressure(raw, t_fine, cal)

    return _nearest(_first(0, 0xFFFFF, lambda raw: q24_8(raw) <= target), 0, q24_8, target)


def raw_humidity(percent: float, t_fine: int, cal: Calibration = CALIBRATION) -> int:
    """The 16-bit adc_H that compensates to `percent` %RH at `t_fine`."""
    target = int(round(percent * 1024))

    def q22_10(raw: int) -> int:
        return compensate_humidity(raw, t_fine, cal)

    return _nearest(_first(0, 0xFFFF, lambda raw: q22_10(raw) >= target), 0, q22_10, target)


class SimulatedBME280(RegisterChip):
    """A BME280 in a room at about 21 degC (warmest mid-afternoon), 45 %RH and 1013 hPa."""

    def __init__(self, seed: int, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self._temperature = room_temperature(seed, clock)
        self._humidity = room_humidity(seed + 1, clock)
        self._pressure = Signal(seed=seed + 2, mean=1013.25, swing=1.2, noise=0.02, peak_hour=10.0, clock=clock)
        # Conversions take real time (the wall clock above only sets the time of day).
        self.monotonic: Callable[[], float] = time.monotonic
        self.calibration = CALIBRATION
        self._pending: Optional[Tuple[float, bytes]] = None
        self._filtered: Optional[Tuple[int, int]] = None
        self._next_normal = 0.0
        self._nvm_busy_reads = 0
        self._power_on()

    def _power_on(self) -> None:
        tp, h = calibration_bytes(self.calibration)
        self.registers = {REG_ID: CHIP_ID, REG_RESET: 0x00, REG_CTRL_HUM: 0x00, REG_STATUS: 0x00,
                          REG_CTRL_MEAS: 0x00, REG_CONFIG: 0x00}
        self.registers.update({REG_CALIB_TP + i: b for i, b in enumerate(tp)})
        self.registers.update({REG_CALIB_H + i: b for i, b in enumerate(h)})
        self.registers.update({REG_DATA + i: b for i, b in enumerate(_DATA_RESET)})
        self._osrs_h = 0
        self._pending = None
        self._filtered = None

    # The wire: writes are (register, value) pairs, with no auto-increment (section 6.2.1); a
    # lone register byte only sets the read pointer. Reads auto-increment (section 6.2.2).

    def i2c_write(self, data: bytes) -> None:
        self.pointer = data[0]
        for i in range(0, len(data) - 1, 2):
            self._write(data[i], data[i + 1] & 0xFF)

    def i2c_read(self, n: int) -> bytes:
        start = self.pointer
        data = super().i2c_read(n)  # calls refresh() first
        if self._nvm_busy_reads and start <= REG_STATUS < start + n:
            self._nvm_busy_reads -= 1
        return data

    def _write(self, reg: int, value: int) -> None:
        if reg not in _WRITABLE:
            return
        if reg == REG_RESET:
            # Only 0xB6 resets (section 5.4.2); the register always reads 0x00.
            if value == RESET_COMMAND:
                self._power_on()
                # The trimming data is copied from NVM again: the first status read sees im_update.
                self._nvm_busy_reads = 1
            return
        self.registers[reg] = value
        if reg == REG_CONFIG:
            self._filtered = None  # section 3.4.4: writing the filter setting resets the filter
        if reg == REG_CTRL_MEAS:
            # Section 5.4.3: ctrl_hum takes effect only now.
            self._osrs_h = self.registers[REG_CTRL_HUM] & 0x07
            mode = value & 0x03
            if mode in (0b01, 0b10):
                done_at = self.monotonic() + self._typical_time_s()
                self._pending = (done_at, self._measure())
            elif mode == 0b11:
                self._next_normal = self.monotonic()

    def refresh(self) -> None:
        now = self.monotonic()
        if self._pending is not None and now >= self._pending[0]:
            self._publish(self._pending[1])
            self._pending = None
            # Forced mode: back to sleep once the results are in (section 3.3.3).
            self.registers[REG_CTRL_MEAS] &= 0xFC
        if self.registers[REG_CTRL_MEAS] & 0x03 == 0b11 and now >= self._next_normal:
            self._publish(self._measure())
            t_sb = _STANDBY_MS[self.registers[REG_CONFIG] >> 5] / 1000.0
            self._next_normal = now + self._typical_time_s() + t_sb
        status = STATUS_MEASURING if self._pending is not None else 0
        if self._nvm_busy_reads:
            status |= STATUS_IM_UPDATE
        self.registers[REG_STATUS] = status

    def _publish(self, data: bytes) -> None:
        for i, b in enumerate(data):
            self.registers[REG_DATA + i] = b

    def _oversampling(self) -> Tuple[int, int, int]:
        meas = self.registers[REG_CTRL_MEAS]
        return _FACTOR[meas >> 5], _FACTOR[(meas >> 2) & 0x07], _FACTOR[self._osrs_h]

    def _typical_time_s(self) -> float:
        # Appendix B, section 9.1: the typical measurement time (the maximum is about 15% longer).
        t, p, h = self._oversampling()
        ms = 1.0 + 2.0 * t + (2.0 * p + 0.5 if p else 0.0) + (2.0 * h + 0.5 if h else 0.0)
        return ms / 1000.0

    def _measure(self) -> bytes:
        """One measurement cycle (section 3.4): T, then P, then H, each skipped at oversampling 0."""
        osr_t, osr_p, osr_h = self._oversampling()
        cal = self.calibration
        degrees = self._temperature()
        adc_t = raw_temperature(degrees, cal)
        t_fine = compensate_temperature(adc_t, cal)[1]
        adc_p = raw_pressure(self._pressure(), t_fine, cal)
        adc_h = raw_humidity(max(0.0, min(100.0, self._humidity())), t_fine, cal)
        iir = _IIR[(self.registers[REG_CONFIG] >> 2) & 0x07]
        if iir:
            # Section 3.4.4: filtered = (previous * (c - 1) + new) / c. The first values after a
            # write to config pass unchanged; a skipped measurement leaves its memory as it was.
            old_t, old_p = self._filtered if self._filtered is not None else (adc_t, adc_p)
            adc_t = (old_t * (iir - 1) + adc_t) // iir if osr_t else old_t
            adc_p = (old_p * (iir - 1) + adc_p) // iir if osr_p else old_p
            self._filtered = (adc_t, adc_p)
        else:
            # Sections 3.4.2, 3.4.3: without the filter the resolution is 16 + (osrs - 1) bits.
            adc_t = self._resolution(adc_t, self.registers[REG_CTRL_MEAS] >> 5)
            adc_p = self._resolution(adc_p, (self.registers[REG_CTRL_MEAS] >> 2) & 0x07)
        adc_t = adc_t if osr_t else SKIPPED_20BIT
        adc_p = adc_p if osr_p else SKIPPED_20BIT
        adc_h = adc_h if osr_h else SKIPPED_16BIT
        return bytes([adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0x0F) << 4,
                      adc_t >> 12, (adc_t >> 4) & 0xFF, (adc_t & 0x0F) << 4,
                      adc_h >> 8, adc_h & 0xFF])

    @staticmethod
    def _resolution(raw: int, osrs: int) -> int:
        bits = min(20, 15 + max(1, osrs))
        return raw & ~((1 << (20 - bits)) - 1)

