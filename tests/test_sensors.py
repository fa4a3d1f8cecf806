"""Drivers read real-shaped hardware (the fake libmraa binding); the sampler keeps time and isolates faults."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from agent.hardware.board import BoardError, MraaBoard
from agent.hardware.sensors import DRIVERS, Sensor, SensorError, system
from agent.hardware.sensors.analog import AnalogOptions
from agent.hardware.sensors.digital import DigitalOptions
from agent.hardware.sensors.system import SystemOptions
from conftest import FAKE_MRAA, Subscriber, agent_config


def make(kind: str, options: Any, board: Any, name: str = "s") -> Sensor:
    sensor = DRIVERS[kind](name, options, board)
    sensor.setup()
    return sensor


def test_analog_scales_the_10_bit_count_by_default(mraa):
    mraa._set_analog(0, 0.25)
    sensor = make("analog", AnalogOptions(pin=0, scale=0.5, offset=-50), MraaBoard(mraa))
    assert sensor.read() == round(0.25 * 1023) * 0.5 - 50


def test_analog_reads_12_bits_when_asked(mraa):
    mraa._set_analog(1, 0.25)
    sensor = make("analog", AnalogOptions(pin=1, bits=12), MraaBoard(mraa))
    assert sensor.read() == round(0.25 * 4095)


def test_analog_pin_that_does_not_exist_names_the_pin_and_mraas_reason(mraa):
    with pytest.raises(BoardError, match=r"analog pin A9: cannot open: Invalid AIO pin specified"):
        make("analog", AnalogOptions(pin=9), MraaBoard(mraa))


def test_analog_read_failure_is_a_board_error(mraa):
    sensor = make("analog", AnalogOptions(pin=2), MraaBoard(mraa))
    mraa._fail_reads("aio", 2)
    with pytest.raises(BoardError, match="analog pin A2: read failed"):
        sensor.read()


def test_digital_reads_the_level_and_can_invert_it(mraa):
    mraa._set_gpio(4, 1)
    board = MraaBoard(mraa)
    assert make("digital", DigitalOptions(pin=4), board).read() == 1
    assert make("digital", DigitalOptions(pin=4, active_low=True), board).read() == 0


def test_digital_read_failure_returned_as_a_code_is_a_board_error(mraa):
    sensor = make("digital", DigitalOptions(pin=7), MraaBoard(mraa))
    mraa._fail_reads("gpio", 7)
    with pytest.raises(BoardError, match="GPIO 7: read failed"):
        sensor.read()


def test_digital_pin_that_does_not_exist_is_a_board_error(mraa):
    with pytest.raises(BoardError, match="GPIO 99: cannot open"):
        make("digital", DigitalOptions(pin=99), MraaBoard(mraa))


def test_board_names_the_platform(mraa):
    assert MraaBoard(mraa).name == "Intel Edison (mraa v2.2.0)"


def test_system_cpu_temperature_comes_from_the_first_thermal_zone(tmp_path, monkeypatch):
    (tmp_path / "thermal_zone0").mkdir()
    (tmp_path / "thermal_zone0" / "temp").write_text("45500\n")
    monkeypatch.setattr(system, "THERMAL", tmp_path)
    assert make("system", SystemOptions(metric="cpu_temperature"), None).read() == 45.5


def test_system_cpu_temperature_without_a_thermal_zone_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(system, "THERMAL", tmp_path)
    with pytest.raises(SensorError, match="no readable thermal zone"):
        make("system", SystemOptions(metric="cpu_temperature"), None).read()


@pytest.mark.parametrize("metric", ["load1", "mem_available", "disk_free", "uptime"])
def test_system_metrics_read_this_linux(metric):
    assert make("system", SystemOptions(metric=metric), None).read() >= 0


def test_the_agent_on_mraa_publishes_what_the_pins_read_with_quality_when_not_good(certs, broker, run_agent):
    watcher = Subscriber(broker, certs)
    threading.Event().wait(0.3)
    cfg = agent_config(certs, broker.port, board="mraa", sensors=[
        {"name": "temperature", "type": "analog", "pin": 0, "interval": 0.5, "scale": 0.5, "offset": -50},
        {"name": "door", "type": "digital", "pin": 4, "interval": 0.5},
        {"name": "humid", "type": "analog", "pin": 2, "interval": 0.5, "range": [0, 100]},
        {"name": "broken", "type": "analog", "pin": 1, "interval": 0.5, "error_after": 1},
        # Not plugged in at boot: the agent starts anyway, says so, and keeps trying.
        {"name": "room", "type": "bme280", "interval": 0.5, "error_after": 1},
    ])
    agent = run_agent(cfg, env={"PYTHONPATH": str(FAKE_MRAA), "FAKE_MRAA_ANALOG": "0=0.25,2=0.5",
                                "FAKE_MRAA_GPIO": "4=1", "FAKE_MRAA_FAIL": "aio:1"})
    try:
        readings: Dict[str, Dict[str, Any]] = {}
        while len(readings) < 7:
            # Sensors read in the same wake-up share a message.
            for reading in watcher.telemetry()["readings"]:
                readings.setdefault(reading["sensor"], reading)
    finally:
        watcher.close()
    assert readings["temperature"]["value"] == 256 * 0.5 - 50
    assert "quality" not in readings["temperature"]
    assert readings["door"]["value"] == 1
    assert readings["humid"]["value"] == 512 and readings["humid"]["quality"] == "out_of_range"
    broken = readings["broken"]
    assert broken["value"] is None and broken["quality"] == "error"
    assert "analog pin A1: read failed" in broken["error"]
    for value in ("temperature", "humidity", "pressure"):
        missing = readings["room." + value]
        assert missing["quality"] == "error" and "I2C bus 6 device 0x76" in missing["error"]
    agent.wait_for(r"sensor room: I2C bus 6 device 0x76: .* \(retrying\)")
    agent.wait_for(r"device thunder10 on Intel Edison \(mraa v2.2.0\)")
    assert agent.stop() == 0


def test_the_fake_is_the_only_mraa_here():
    # The agent's own `auto` board must fall back to simulation on a machine without libmraa.
    assert not (Path(__file__).parent.parent / "agent" / "mraa.py").exists()


class NotifySocket:
    """What systemd listens on: a datagram socket; each message kept with the time it arrived."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: List[Tuple[float, str]] = []

    def collect(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def with_key(self, key: str) -> List[Tuple[float, str]]:
        return [(t, m) for t, m in self.messages if any(line.startswith(key) for line in m.splitlines())]

    def close(self) -> None:
        self.sock.close()


# How long the fake's I2C bus holds the GIL: the 60 s, shortened; the mechanism is the same.
HANG = 9.0


def test_a_hung_gil_holding_call_costs_only_its_own_sensor(certs, broker, run_agent, tmp_path):
    """libmraa holds the GIL during a call: a bus stuck for HANG seconds must not stop the other
    sensors, the session or the watchdog; the hung sensor reports an error after its timeout and
    reads again by itself once the call returns."""
    notify = NotifySocket(tmp_path / "notify")
    watcher = Subscriber(broker, certs)
    threading.Event().wait(0.3)
    cfg = agent_config(certs, broker.port, board="mraa", health={"interval": 1}, sensors=[
        {"name": "fast", "type": "analog", "pin": 0, "interval": 1},
        {"name": "bus", "type": "i2c", "address": 0x40, "register": 0x10, "interval": 1, "timeout": 2,
         "error_after": 3},
    ])
    agent = run_agent(cfg, env={"PYTHONPATH": str(FAKE_MRAA), "FAKE_MRAA_I2C": "0x40=0x10:0x01,0x11:0x02",
                                "FAKE_MRAA_HANG": "i2c:6=%g" % HANG,
                                "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"})
    listening = threading.Event()

    def listen() -> None:
        # Timestamps at arrival: read as they come, not from the socket's backlog at the end.
        while not listening.is_set():
            notify.collect(0.3)

    listener = threading.Thread(target=listen)
    listener.start()
    try:
        fast: List[Dict[str, Any]] = []
        bus: List[Dict[str, Any]] = []
        # Until the bus sensor has read again after its hang (or far past when it should have).
        deadline = time.monotonic() + HANG + 30
        while not (bus and bus[-1].get("value") is not None) and time.monotonic() < deadline:
            for reading in watcher.telemetry(timeout=HANG + 30)["readings"]:
                (fast if reading["sensor"] == "fast" else bus).append(reading)
    finally:
        listening.set()
        listener.join()
        watcher.close()
        notify.close()
    assert [r["quality"] for r in bus[:-1]] and all(r["quality"] == "error" for r in bus[:-1]), bus
    assert "has not returned after" in bus[0]["error"]
    assert bus[-1]["value"] == 0x0102, "the sensor reads again, by itself, when the call returns"
    # The hang showed in the log when it happened, not only when it ended.
    agent.wait_for(r"sensor bus: read has not returned after")
    agent.wait_for(r"sensor bus: the hung read returned after")
    # The other sensor kept its 1 s schedule through the whole hang, and its readings were
    # delivered: no gap near HANG (generous bounds: this machine is shared).
    stamps = [r["ts"] for r in fast]
    assert stamps[-1] - stamps[0] >= HANG - 2, "readings of the fast sensor cover the hang"
    assert max(b - a for a, b in zip(stamps, stamps[1:])) < 3.0
    pings = [t for t, _ in notify.with_key("WATCHDOG=1")]
    assert len(pings) >= HANG and max(b - a for a, b in zip(pings, pings[1:])) < 3.0
    assert agent.stop() == 0


def test_the_agent_stops_promptly_while_a_call_is_hung(certs, broker, run_agent):
    # A call that holds the GIL for minutes must not hold up SIGTERM: the hung hardware process
    # is killed, not waited for, and what was sampled is delivered.
    cfg = agent_config(certs, broker.port, board="mraa", sensors=[
        {"name": "fast", "type": "analog", "pin": 0, "interval": 0.5},
        {"name": "bus", "type": "i2c", "address": 0x40, "register": 0x10, "interval": 0.5, "timeout": 1}])
    agent = run_agent(cfg, env={"PYTHONPATH": str(FAKE_MRAA), "FAKE_MRAA_I2C": "0x40=0x10:0x01,0x11:0x02",
                                "FAKE_MRAA_HANG": "i2c:6=600"})
    agent.wait_for(r"sensor bus: read has not returned after", timeout=30)
    agent.wait_for(r"connected to")
    started = time.monotonic()
    assert agent.stop(timeout=30) == 0
    assert time.monotonic() - started < 20, "stopping waited for the hung call"
    agent.wait_for(r"sensor bus: killing its hardware process")


def _grandchildren(pid: int) -> List[int]:
    """The agent's hardware processes: children of its fork server, itself a child of the agent."""
    def children(of: int) -> List[int]:
        # Per thread: the fork server was started by whichever sensor thread came first.
        return [int(p) for task in Path("/proc/%d/task" % of).glob("*/children") for p in task.read_text().split()]

    return [grandchild for child in children(pid) for grandchild in children(child)]


def test_a_hardware_process_that_dies_is_replaced_at_the_next_reading(certs, broker, run_agent):
    watcher = Subscriber(broker, certs)
    threading.Event().wait(0.3)
    cfg = agent_config(certs, broker.port, board="mraa", sensors=[
        {"name": "temperature", "type": "analog", "pin": 0, "interval": 0.3}])
    agent = run_agent(cfg, env={"PYTHONPATH": str(FAKE_MRAA), "FAKE_MRAA_ANALOG": "0=0.25"})
    try:
        assert watcher.telemetry()["readings"][0]["value"] == 256
        [hardware] = _grandchildren(agent.proc.pid)
        os.kill(hardware, signal.SIGKILL)
        agent.wait_for(r"sensor temperature: .*its hardware process ended \(exit code -9\)")
        mark = len(agent.lines)
        agent.wait_for(r"sensor temperature: reading again", after=mark)
        assert watcher.telemetry()["readings"][0]["value"] == 256
        assert _grandchildren(agent.proc.pid) != [hardware]
    finally:
        watcher.close()
    assert agent.stop() == 0
