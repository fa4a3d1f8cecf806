"""On `board: simulated` every driver runs its real code against a plausible part."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict

import pytest
import yaml

from agent import config
from agent.sensors import DRIVERS
from agent.simulated import SimulatedBoard

# One sensor of each board-attached type, and what a room should read.
EXAMPLES: Dict[str, Any] = {
    "analog": ({"pin": 0, "scale": 0.4883, "offset": -50}, {"": (15, 28)}),
    "digital": ({"pin": 4}, {"": (0, 1)}),
    "counter": ({"pin": 7, "report": "count"}, {"": (0, 100)}),
    "i2c": ({"address": 0x10, "register": 0, "length": 2}, {"": (0, 0xFFFF)}),
    "tmp102": ({}, {"": (15, 28)}),
    "bme280": ({}, {"temperature": (15, 28), "humidity": (30, 60), "pressure": (990, 1030)}),
    "bh1750": ({}, {"": (0, 2000)}),
    "sht31": ({}, {"temperature": (15, 28), "humidity": (30, 60)}),
    "htu21d": ({}, {"temperature": (15, 28), "humidity": (30, 60)}),
    "grove_temperature": ({"pin": 1}, {"": (15, 28)}),
    "grove_light": ({"pin": 2}, {"": (0, 1023)}),
    "grove_rotary": ({"pin": 3}, {"": (0, 300)}),
}


def test_every_board_attached_driver_has_an_example():
    assert set(EXAMPLES) == set(DRIVERS) - {"system", "wifi"}


def build(kind: str, options: Dict[str, Any], tmp_path: Path):
    sensor = dict(options, name="s", type=kind)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"mqtt": {"host": "localhost"}, "board": "simulated", "state_dir": "state",
                                           "sensors": [sensor]}))
    cfg = config.load(path).sensors[0]
    return DRIVERS[kind](cfg.name, cfg.options, SimulatedBoard())


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_each_driver_reads_plausible_values_from_its_simulated_part(kind, tmp_path):
    options, expected = EXAMPLES[kind]
    driver = build(kind, options, tmp_path)
    driver.setup()
    if kind == "counter":
        time.sleep(0.5)
    values = driver.read_all()
    assert set(values) == set(expected)
    for key, (low, high) in expected.items():
        assert low <= values[key] <= high, (key, values[key])
    driver.close()


def test_the_simulated_parts_repeat_for_the_same_seed():
    def temperatures() -> list:
        board = SimulatedBoard()
        driver = DRIVERS["tmp102"]("t", DRIVERS["tmp102"].Options(), board)
        driver.setup()
        return [driver.read() for _ in range(5)]

    assert temperatures() == temperatures()
