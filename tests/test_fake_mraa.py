"""The fake mraa against its contract (/work/shared/mraa-api.md), one test per point that matters.

Each test states a fact about libmraa's Python binding on an Intel Edison (Arduino
breakout) that the agent relies on; the fake must keep every one of them true.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from conftest import FAKE_MRAA

# --- module level ---------------------------------------------------------------------


def test_platform_is_an_intel_edison(mraa: Any) -> None:
    assert mraa.getPlatformName() == "Intel Edison"
    assert mraa.getPlatformType() == 2 == mraa.INTEL_EDISON_FAB_C
    assert mraa.getVersion() == "v2.2.0"
    assert mraa.getPinCount() == 20


def test_adc_is_12_bit_hardware_read_as_10_bits(mraa: Any) -> None:
    assert mraa.adcRawBits() == 12
    assert mraa.adcSupportedBits() == 10


def test_result_codes_are_plain_ints(mraa: Any) -> None:
    assert (mraa.SUCCESS, mraa.ERROR_FEATURE_NOT_IMPLEMENTED, mraa.ERROR_INVALID_PARAMETER,
            mraa.ERROR_INVALID_HANDLE, mraa.ERROR_NO_RESOURCES, mraa.ERROR_INVALID_RESOURCE,
            mraa.ERROR_UNSPECIFIED) == (0, 1, 4, 5, 6, 7, 99)


def test_direction_edge_mode_and_i2c_speed_constants(mraa: Any) -> None:
    assert (mraa.DIR_OUT, mraa.DIR_IN, mraa.DIR_OUT_HIGH, mraa.DIR_OUT_LOW) == (0, 1, 2, 3)
    assert (mraa.EDGE_NONE, mraa.EDGE_BOTH, mraa.EDGE_RISING, mraa.EDGE_FALLING) == (0, 1, 2, 3)
    assert (mraa.MODE_STRONG, mraa.MODE_PULLUP, mraa.MODE_PULLDOWN, mraa.MODE_HIZ) == (0, 1, 2, 3)
    assert (mraa.I2C_STD, mraa.I2C_FAST, mraa.I2C_HIGH) == (0, 1, 2)


# --- failure style 1: constructors raise ValueError -----------------------------------


@pytest.mark.parametrize(("make", "message"), [
    (lambda m: m.Aio(6), "Invalid AIO pin specified - do you have an ADC?"),
    (lambda m: m.Aio(99), "Invalid AIO pin specified - do you have an ADC?"),
    (lambda m: m.Aio(-1), "Invalid AIO pin specified - do you have an ADC?"),
    (lambda m: m.Gpio(20), "Invalid GPIO pin specified"),
    (lambda m: m.Gpio(-1), "Invalid GPIO pin specified"),
    (lambda m: m.I2c(9), "Invalid i2c bus"),
    (lambda m: m.Spi(1), "Error initialising SPI bus"),
    (lambda m: m.Uart(1), "Error initialising UART"),
    (lambda m: m.Uart("/dev/ttyS0"), "Error initialising UART"),
    (lambda m: m.Pwm(4), "Error initialising PWM on pin"),
])
def test_constructor_for_missing_pin_or_bus_raises_value_error(mraa: Any, make: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        make(mraa)
    assert str(info.value) == message


def test_the_breakout_has_a0_to_a5_gpio_0_to_19_and_pwm_on_3_5_6_9(mraa: Any) -> None:
    for channel in range(6):
        mraa.Aio(channel)
    for pin in range(20):
        assert mraa.Gpio(pin).getPin() == pin
    for pin in (3, 5, 6, 9):
        mraa.Pwm(pin)
    mraa.Spi(0)
    mraa.Uart(0)
    assert mraa.Uart("/dev/ttyMFD1").getDevicePath() == "/dev/ttyMFD1"


# --- Aio ------------------------------------------------------------------------------


def test_aio_reads_10_bits_by_default(mraa: Any) -> None:
    aio = mraa.Aio(0)
    assert aio.getBit() == 10
    assert aio.read() == 512  # every input starts at half scale
    mraa._set_analog(0, 1.0)
    assert aio.read() == 1023
    mraa._set_analog(0, 0.0)
    assert aio.read() == 0


def test_setbit_12_switches_to_0_4095(mraa: Any) -> None:
    aio = mraa.Aio(1)
    mraa._set_analog(1, 1.0)
    assert aio.setBit(12) == mraa.SUCCESS
    assert aio.getBit() == 12
    assert aio.read() == 4095
    mraa._set_analog(1, 0.25)
    assert aio.read() == round(0.25 * 4095)


def test_setbit_with_an_unsupported_value_returns_a_code_and_changes_nothing(mraa: Any) -> None:
    aio = mraa.Aio(0)
    assert aio.setBit(0) == mraa.ERROR_INVALID_RESOURCE
    assert aio.setBit(-3) != 0
    assert aio.getBit() == 10


def test_resolution_is_per_context(mraa: Any) -> None:
    twelve, ten = mraa.Aio(2), mraa.Aio(2)
    twelve.setBit(12)
    mraa._set_analog(2, 1.0)
    assert (twelve.read(), ten.read()) == (4095, 1023)


def test_readfloat_is_raw_over_full_scale(mraa: Any) -> None:
    aio = mraa.Aio(3)
    mraa._set_analog(3, 0.25)
    assert aio.readFloat() == pytest.approx(aio.read() / 1023, rel=1e-6)  # a C float
    aio.setBit(12)
    assert aio.readFloat() == pytest.approx(aio.read() / 4095, rel=1e-6)
    mraa._set_analog(3, 1.0)
    assert aio.readFloat() == 1.0


def test_aio_read_failure_raises_value_error(mraa: Any) -> None:
    aio = mraa.Aio(1)
    mraa._fail_reads("aio", 1)
    with pytest.raises(ValueError, match=r"^Unknown error in Aio::read\(\)$"):
        aio.read()
    mraa._fail_reads("aio", 1, False)
    assert aio.read() == 512


def test_aio_readfloat_failure_returns_garbage_not_an_exception(mraa: Any) -> None:
    # mraa_aio_read_float stores mraa_aio_read's -1 in an unsigned int: the real binding
    # returns about 4.2 million instead of raising. Only Aio.read() is a safe failure check.
    aio = mraa.Aio(0)
    mraa._fail_reads("aio", 0)
    assert aio.readFloat() == pytest.approx(2**32 / 1023, rel=1e-6)


# --- Gpio -----------------------------------------------------------------------------


def test_gpio_input_reads_the_level_on_the_pin(mraa: Any) -> None:
    gpio = mraa.Gpio(4)
    assert gpio.dir(mraa.DIR_IN) == mraa.SUCCESS
    assert gpio.readDir() == mraa.DIR_IN
    assert gpio.read() == 0
    mraa._set_gpio(4, 1)
    assert gpio.read() == 1


def test_gpio_write_on_an_input_returns_7_and_does_not_raise(mraa: Any) -> None:
    gpio = mraa.Gpio(7)
    gpio.dir(mraa.DIR_IN)
    assert gpio.write(1) == mraa.ERROR_INVALID_RESOURCE == 7
    assert gpio.read() == 0


def test_gpio_output_reads_back_what_was_written(mraa: Any) -> None:
    gpio = mraa.Gpio(13)
    assert gpio.dir(mraa.DIR_OUT_HIGH) == mraa.SUCCESS
    assert (gpio.readDir(), gpio.read()) == (mraa.DIR_OUT, 1)
    assert gpio.write(0) == mraa.SUCCESS
    assert gpio.read() == 0
    assert gpio.dir(mraa.DIR_OUT_LOW) == mraa.SUCCESS
    assert gpio.read() == 0


def test_gpio_setters_return_codes(mraa: Any) -> None:
    gpio = mraa.Gpio(2)
    assert gpio.dir(9) == mraa.ERROR_FEATURE_NOT_IMPLEMENTED
    assert gpio.mode(mraa.MODE_PULLUP) == mraa.SUCCESS
    assert gpio.mode(9) == mraa.ERROR_FEATURE_NOT_IMPLEMENTED
    assert gpio.getPin(True) == 128  # the sysfs number of IO2


def test_gpio_read_failure_returns_minus_one(mraa: Any) -> None:
    # Gpio::read() returns mraa_gpio_read's -1 as it is: it does not throw.
    gpio = mraa.Gpio(5)
    mraa._fail_reads("gpio", 5)
    assert gpio.read() == -1


def test_isr_calls_back_with_its_arg_from_a_thread_that_is_not_the_callers(mraa: Any) -> None:
    calls: list[tuple[object, threading.Thread]] = []
    gpio = mraa.Gpio(8)
    marker = object()

    def callback(arg: object) -> None:
        calls.append((arg, threading.current_thread()))

    assert gpio.isr(mraa.EDGE_RISING, callback, marker) == 0
    assert mraa._pulse(8, 3) == 3
    assert len(calls) == 3
    assert all(arg is marker for arg, _ in calls)
    assert all(thread is not threading.current_thread() for _, thread in calls)
    assert all(thread is not threading.main_thread() for _, thread in calls)
    assert gpio.isrExit() == mraa.SUCCESS


def test_isr_hears_only_its_edges(mraa: Any) -> None:
    calls: list[int] = []
    rising, both = mraa.Gpio(9), mraa.Gpio(9)
    append = calls.append  # kept alive: libmraa holds no reference to the callback
    rising.isr(mraa.EDGE_RISING, append, 1)
    both.isr(mraa.EDGE_BOTH, append, 2)
    assert mraa._pulse(9, 2, mraa.EDGE_FALLING) == 2
    assert sorted(calls) == [2, 2]
    assert mraa._pulse(9, 1, mraa.EDGE_RISING) == 2
    assert sorted(calls) == [1, 2, 2, 2]


def test_one_isr_per_context_and_isrexit_stops_it(mraa: Any) -> None:
    calls: list[None] = []
    gpio = mraa.Gpio(10)
    append = calls.append
    assert gpio.isr(mraa.EDGE_BOTH, append, None) == mraa.SUCCESS
    assert gpio.isr(mraa.EDGE_BOTH, append, None) == mraa.ERROR_NO_RESOURCES
    assert gpio.isrExit() == mraa.SUCCESS
    assert mraa._pulse(10, 5) == 0
    assert calls == []
    assert gpio.isr(mraa.EDGE_BOTH, append, None) == mraa.SUCCESS


def test_edge_and_isr_return_1_where_unsupported(mraa: Any) -> None:
    gpio = mraa.Gpio(11)
    assert gpio.edge(7) == mraa.ERROR_FEATURE_NOT_IMPLEMENTED
    mraa._set_edge_supported(11, False)
    assert gpio.edge(mraa.EDGE_BOTH) == mraa.ERROR_FEATURE_NOT_IMPLEMENTED == 1
    assert gpio.isr(mraa.EDGE_BOTH, print, None) == 1
    assert mraa._pulse(11, 1) == 0


def test_an_exception_in_the_callback_is_swallowed(mraa: Any) -> None:
    def boom(arg: object) -> None:
        raise RuntimeError("callback failed")

    gpio = mraa.Gpio(12)
    gpio.isr(mraa.EDGE_BOTH, boom, None)
    assert mraa._pulse(12, 2) == 2
    assert [str(e) for e in mraa._isr_errors] == ["callback failed", "callback failed"]


def test_isr_needs_all_three_arguments(mraa: Any) -> None:
    with pytest.raises(TypeError):
        mraa.Gpio(3).isr(mraa.EDGE_BOTH, print)


class _Tally:
    def __init__(self) -> None:
        self.count = 0

    def edge(self, arg: object) -> None:
        self.count += 1


def test_isr_keeps_no_reference_to_its_callback(mraa: Any) -> None:
    # libmraa borrows `func` (gpio.hpp:173-176): a bound method made for the call is freed at
    # once, and the next edge calls freed memory on the board. The fake calls nothing and says so.
    tally = _Tally()
    gpio = mraa.Gpio(13)
    assert gpio.isr(mraa.EDGE_BOTH, tally.edge, None) == mraa.SUCCESS
    mraa._pulse(13, 2)
    assert tally.count == 0
    assert all("freed" in str(e) for e in mraa._isr_errors) and len(mraa._isr_errors) == 2
    kept = tally.edge
    gpio.isrExit()
    gpio.isr(mraa.EDGE_BOTH, kept, None)
    mraa._pulse(13, 2)
    assert tally.count == 2


@pytest.mark.parametrize("call", [
    lambda m: m.Gpio(2).getPin(1),
    lambda m: m.Gpio(0, 1, 0),
    lambda m: m.Gpio(2).useMmap(1),
    lambda m: m.I2c(6, 0),
])
def test_boolean_parameters_refuse_ints(mraa: Any, call: Callable[[Any], Any]) -> None:
    with pytest.raises(TypeError):
        call(mraa)


def test_boolean_parameters_take_bools(mraa: Any) -> None:
    assert mraa.Gpio(2, True, False).getPin(False) == 2
    assert mraa.Gpio(2).useMmap(True) == mraa.SUCCESS


@pytest.mark.parametrize("make", [
    lambda m: m.Aio(0), lambda m: m.Gpio(2), lambda m: m.I2c(6), lambda m: m.Spi(0),
    lambda m: m.Uart(0), lambda m: m.Pwm(3),
])
def test_every_class_has_close(mraa: Any, make: Callable[[Any], Any]) -> None:
    make(mraa).close()


def test_close_ends_a_gpio_interrupt(mraa: Any) -> None:
    calls: list[None] = []
    append = calls.append
    gpio = mraa.Gpio(4)
    gpio.isr(mraa.EDGE_BOTH, append, None)
    gpio.close()
    assert mraa._pulse(4, 3) == 0


def test_readdir_failure_is_an_unknown_runtime_error(mraa: Any) -> None:
    gpio = mraa.Gpio(7)
    mraa._fail_reads("gpio", 7)
    with pytest.raises(RuntimeError, match="^Unknown exception$"):
        gpio.readDir()


def test_readfloat_scale_is_shared_by_every_aio(mraa: Any) -> None:
    # src/aio/aio.c:18-20: one max_analog_value per process; another context's setBit moves it.
    ten, twelve = mraa.Aio(0), mraa.Aio(1)
    mraa._set_analog(0, 1.0)
    assert ten.readFloat() == 1.0
    twelve.setBit(12)
    assert ten.read() == 1023
    assert ten.readFloat() == pytest.approx(1023 / 4095, rel=1e-6)


def test_failed_i2c_buffer_read_carries_a_stale_errno(mraa: Any) -> None:
    i2c = mraa.I2c(6)
    i2c.address(0x50)  # nothing there
    with pytest.raises(OSError) as first:
        i2c.read(2)
    assert first.value.errno == 0
    mraa._set_errno(11)
    with pytest.raises(OSError) as second:
        i2c.readBytesReg(0, 2)
    assert second.value.errno == 11


class _Short:
    def i2c_write(self, data: bytes) -> None:
        pass

    def i2c_read(self, n: int) -> bytes:
        return b"\x01"


def test_short_i2c_read_is_an_oserror_without_errno(mraa: Any) -> None:
    mraa._add_i2c_device(6, 0x51, _Short())
    i2c = mraa.I2c(6)
    i2c.address(0x51)
    with pytest.raises(OSError) as caught:
        i2c.read(4)
    assert caught.value.errno == 0
    assert i2c.read(1) == bytearray(b"\x01")


def test_empty_i2c_write_is_not_an_error(mraa: Any) -> None:
    mraa._add_i2c_device(6, 0x52, {})
    i2c = mraa.I2c(6)
    i2c.address(0x52)
    assert i2c.write(bytearray()) == mraa.SUCCESS


def test_a_hung_call_holds_the_gil(mraa: Any) -> None:
    # The real binding never lets go of the GIL: a thread counting in pure Python makes no
    # progress at all while another thread is inside a hung read.
    mraa._add_i2c_device(6, 0x53, {0: 1})
    mraa._hang("i2c", 6, 1.0)
    i2c = mraa.I2c(6)
    i2c.address(0x53)
    beats: list[float] = []
    started = threading.Event()
    stop = threading.Event()

    def beat() -> None:
        started.set()
        while not stop.is_set():
            beats.append(time.monotonic())
            time.sleep(0.01)

    thread = threading.Thread(target=beat)
    thread.start()
    started.wait()
    time.sleep(0.05)
    assert i2c.readReg(0) == 1  # holds the GIL for the whole second
    time.sleep(0.05)
    stop.set()
    thread.join()
    # The other thread's 10 ms beat stopped for the whole second (time.sleep would not stop it).
    assert max(b - a for a, b in zip(beats, beats[1:])) >= 0.9
    assert i2c.readReg(0) == 1  # only the first call hangs


# --- I2c ------------------------------------------------------------------------------


def test_i2c_buses_0_and_1_are_bus_6(mraa: Any) -> None:
    mraa._add_i2c_device(6, 0x48, {0x00: 0x19})
    for bus in (0, 1, 6):
        i2c = mraa.I2c(bus)
        assert i2c.address(0x48) == mraa.SUCCESS
        assert i2c.readReg(0x00) == 0x19


def test_i2c_register_device(mraa: Any) -> None:
    registers = {0x00: 0x12, 0x01: 0x34, 0x02: 0x56}
    mraa._add_i2c_device(6, 0x40, registers)
    i2c = mraa.I2c(6)
    assert i2c.frequency(mraa.I2C_FAST) == mraa.SUCCESS
    i2c.address(0x40)
    assert i2c.readReg(0x01) == 0x34
    assert i2c.readBytesReg(0x00, 3) == bytearray(b"\x12\x34\x56")
    assert i2c.writeReg(0x02, 0x99) == mraa.SUCCESS
    assert registers[0x02] == 0x99
    assert i2c.readReg(0x7F) == 0  # unlisted registers read 0


def test_readwordreg_returns_the_bytes_as_sent_low_byte_first(mraa: Any) -> None:
    # SMBus read word: the byte from `reg` is the low byte, the one from `reg + 1` the high
    # byte. A big-endian sensor's 0x1234 therefore reads as 0x3412; swapping is the driver's job.
    mraa._add_i2c_device(6, 0x48, {0x00: 0x12, 0x01: 0x34})
    i2c = mraa.I2c(6)
    i2c.address(0x48)
    assert i2c.readWordReg(0x00) == 0x3412


def test_writewordreg_sends_the_low_byte_first(mraa: Any) -> None:
    registers: dict[int, int] = {}
    mraa._add_i2c_device(6, 0x48, registers)
    i2c = mraa.I2c(6)
    i2c.address(0x48)
    assert i2c.writeWordReg(0x10, 0xABCD) == mraa.SUCCESS
    assert registers == {0x10: 0xCD, 0x11: 0xAB}


def test_plain_reads_and_writes_follow_the_register_pointer(mraa: Any) -> None:
    registers = {0x05: 0xAA, 0x06: 0xBB}
    mraa._add_i2c_device(6, 0x20, registers)
    i2c = mraa.I2c(6)
    i2c.address(0x20)
    assert i2c.writeByte(0x05) == mraa.SUCCESS
    assert i2c.read(2) == bytearray(b"\xaa\xbb")
    assert i2c.write(bytearray([0x05, 0x01, 0x02])) == mraa.SUCCESS
    assert (registers[0x05], registers[0x06]) == (0x01, 0x02)
    i2c.writeByte(0x06)
    assert i2c.readByte() == 0x02


def test_i2c_reads_from_a_missing_device_raise_in_two_styles(mraa: Any) -> None:
    i2c = mraa.I2c(6)
    assert i2c.address(0x50) == mraa.SUCCESS  # setting an address never checks for a device
    with pytest.raises(ValueError, match=r"^Unknown error in I2c::readByte\(\)$"):
        i2c.readByte()
    with pytest.raises(ValueError, match=r"^Unknown error in I2c::readReg\(\)$"):
        i2c.readReg(0)
    with pytest.raises(ValueError, match=r"^Unknown error in I2c::readReg\(\)$"):  # sic
        i2c.readWordReg(0)
    with pytest.raises(OSError):
        i2c.read(2)
    with pytest.raises(OSError):
        i2c.readBytesReg(0, 2)


def test_i2c_writes_to_a_missing_device_return_99(mraa: Any) -> None:
    i2c = mraa.I2c(6)
    i2c.address(0x50)
    assert i2c.writeReg(0x00, 1) == mraa.ERROR_UNSPECIFIED == 99
    assert i2c.writeByte(1) == 99
    assert i2c.writeWordReg(0x00, 1) == 99
    assert i2c.write(bytearray([0, 1])) == 99
    assert i2c.write(bytearray()) == 99


def test_i2c_fail_reads_uses_each_calls_style(mraa: Any) -> None:
    mraa._add_i2c_device(6, 0x48, {0: 1})
    i2c = mraa.I2c(1)
    i2c.address(0x48)
    mraa._fail_reads("i2c", 6)
    with pytest.raises(ValueError):
        i2c.readReg(0)
    with pytest.raises(ValueError):
        i2c.readWordReg(0)
    with pytest.raises(ValueError):
        i2c.readByte()
    with pytest.raises(OSError):
        i2c.read(1)
    with pytest.raises(OSError):
        i2c.readBytesReg(0, 1)
    assert i2c.writeReg(0, 2) == mraa.SUCCESS  # only reads fail
    mraa._fail_reads("i2c", 6, False)
    assert i2c.readReg(0) == 2


def test_i2c_address_beyond_7_bits_returns_a_code(mraa: Any) -> None:
    assert mraa.I2c(6).address(0x80) == mraa.ERROR_UNSPECIFIED


# --- argument conversion: ValueError for a list, OverflowError for a big byte ---------


def _i2c_at_0x48(mraa: Any) -> Any:
    mraa._add_i2c_device(6, 0x48, {})
    i2c = mraa.I2c(6)
    i2c.address(0x48)
    return i2c


@pytest.mark.parametrize("call", [
    pytest.param(lambda m: _i2c_at_0x48(m).write([0x01, 0x02]), id="I2c.write(list)"),
    pytest.param(lambda m: _i2c_at_0x48(m).write(b"\x01\x02"), id="I2c.write(bytes)"),
    pytest.param(lambda m: m.Spi(0).write([0x01]), id="Spi.write(list)"),
    pytest.param(lambda m: m.Uart(0).write([0x41]), id="Uart.write(list)"),
])
def test_a_list_where_a_bytearray_is_expected_raises_value_error(mraa: Any, call: Callable[[Any], Any]) -> None:
    with pytest.raises(ValueError, match="^bytearray expected$"):
        call(mraa)


@pytest.mark.parametrize("call", [
    pytest.param(lambda m: m.I2c(6).writeByte(256), id="writeByte(256)"),
    pytest.param(lambda m: m.I2c(6).writeByte(-1), id="writeByte(-1)"),
    pytest.param(lambda m: m.I2c(6).writeReg(0, 300), id="writeReg(0, 300)"),
    pytest.param(lambda m: m.I2c(6).writeReg(256, 0), id="writeReg(256, 0)"),
    pytest.param(lambda m: m.I2c(6).readReg(0x100), id="readReg(0x100)"),
    pytest.param(lambda m: m.I2c(6).address(256), id="address(256)"),
    pytest.param(lambda m: m.I2c(6).writeWordReg(0, 0x10000), id="writeWordReg(0, 0x10000)"),
    pytest.param(lambda m: m.Spi(0).writeByte(256), id="Spi.writeByte(256)"),
])
def test_byte_values_out_of_range_raise_overflow_error(mraa: Any, call: Callable[[Any], Any]) -> None:
    with pytest.raises(OverflowError):
        call(mraa)


def test_buffer_lengths_must_be_non_negative_ints(mraa: Any) -> None:
    i2c = mraa.I2c(6)
    with pytest.raises(ValueError, match="^Expecting an integer$"):
        i2c.read("2")
    with pytest.raises(ValueError, match="^Positive integer expected$"):
        i2c.read(-1)


def test_wrong_argument_types_raise_type_error(mraa: Any) -> None:
    with pytest.raises(TypeError):
        mraa.Gpio(2).write("1")
    with pytest.raises(TypeError):
        mraa.Aio("0")


# --- Spi, Uart, Pwm (minimal) ---------------------------------------------------------


def test_spi_with_nothing_attached(mraa: Any) -> None:
    spi = mraa.Spi(0)
    assert spi.mode(mraa.SPI_MODE0) == mraa.SUCCESS
    assert spi.frequency(1000000) == mraa.SUCCESS
    assert spi.write(bytearray(b"\x01\x02")) == bytearray(2)
    assert spi.writeByte(0x55) == 0
    assert spi.lsbmode(True) == mraa.ERROR_FEATURE_NOT_SUPPORTED  # the Edison cannot


def test_uart_reads_what_the_peer_sent(mraa: Any) -> None:
    uart = mraa.Uart("/dev/ttyMFD1")
    assert uart.setBaudRate(115200) == mraa.SUCCESS
    assert uart.setMode(8, mraa.UART_PARITY_NONE, 1) == mraa.SUCCESS
    assert uart.dataAvailable(0) is False
    mraa._uart_feed(b"OK\r\n")
    assert uart.dataAvailable(10) is True
    assert uart.read(2) == bytearray(b"OK")
    assert uart.readStr(10) == "\r\n"
    assert uart.writeStr("AT\r") == 3
    assert uart.write(bytearray(b"\n")) == 1
    assert mraa._uart_sent() == b"AT\r\n"
    assert uart.flush() == mraa.SUCCESS


def test_pwm_duty_cycle(mraa: Any) -> None:
    pwm = mraa.Pwm(3)
    assert pwm.period_us(2000) == mraa.SUCCESS
    assert pwm.period_us(0) == mraa.ERROR_INVALID_PARAMETER
    assert pwm.enable(True) == mraa.SUCCESS
    assert pwm.write(0.25) == mraa.SUCCESS
    assert pwm.read() == pytest.approx(0.25)
    assert pwm.pulsewidth_us(1500) == mraa.SUCCESS
    assert pwm.read() == pytest.approx(0.75)
    assert pwm.pulsewidth_us(3000) == mraa.ERROR_INVALID_RESOURCE  # longer than the period


# --- the hooks ------------------------------------------------------------------------


def test_reset_restores_a_fresh_board(mraa: Any) -> None:
    mraa._set_analog(0, 1.0)
    mraa._set_gpio(4, 1)
    mraa._fail_reads("aio", 1)
    mraa._add_i2c_device(6, 0x48, {0: 1})
    out = mraa.Gpio(6)
    out.dir(mraa.DIR_OUT_HIGH)
    mraa._reset()
    assert mraa.Aio(0).read() == 512
    assert mraa.Aio(1).read() == 512
    assert mraa.Gpio(4).read() == 0
    assert mraa.Gpio(6).readDir() == mraa.DIR_IN
    i2c = mraa.I2c(6)
    i2c.address(0x48)
    with pytest.raises(ValueError):
        i2c.readReg(0)


def test_hooks_refuse_what_no_board_can_do(mraa: Any) -> None:
    with pytest.raises(ValueError):
        mraa._set_analog(6, 0.5)
    with pytest.raises(ValueError):
        mraa._set_analog(0, 1.5)
    with pytest.raises(ValueError):
        mraa._set_gpio(20, 1)
    with pytest.raises(ValueError):
        mraa._fail_reads("spi", 0)
    with pytest.raises(ValueError):
        mraa._add_i2c_device(6, 0x80, {})


def _run_fake(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_MRAA_")}
    full_env.update(env, PYTHONPATH=str(FAKE_MRAA))
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True,
                          timeout=30, check=False)


def test_environment_variables_give_a_subprocess_its_board() -> None:
    code = """if True:
        import json, mraa
        i2c = mraa.I2c(6)
        i2c.address(0x48)
        out = {"a0": mraa.Aio(0).read(), "a1": mraa.Aio(1).read(), "a3": mraa.Aio(3).read(),
               "d4": mraa.Gpio(4).read(), "d5": mraa.Gpio(5).read(), "d7": mraa.Gpio(7).read(),
               "word": i2c.readWordReg(0), "edge": mraa.Gpio(2).edge(mraa.EDGE_BOTH)}
        try:
            mraa.Aio(2).read()
        except ValueError as exc:
            out["a2"] = str(exc)
        print(json.dumps(out))
    """
    done = _run_fake(code, FAKE_MRAA_ANALOG="0=0.5, 1=0.25", FAKE_MRAA_GPIO="4=1",
                     FAKE_MRAA_FAIL="aio:2,gpio:7,edge:2", FAKE_MRAA_I2C="0x48=0x00:0x1a,0x01:0x60")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "a0": 512, "a1": round(0.25 * 1023), "a3": 512, "d4": 1, "d5": 0, "d7": -1,
        "word": 0x601A, "edge": 1, "a2": "Unknown error in Aio::read()"}


def test_a_malformed_environment_variable_fails_the_import() -> None:
    done = _run_fake("import mraa", FAKE_MRAA_ANALOG="0:0.5")
    assert done.returncode != 0
    assert "FAKE_MRAA_ANALOG" in done.stderr
