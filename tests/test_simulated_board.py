"""On `board: simulated` every driver runs its real code against a plausible part."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

from agent.config import schema as config
from agent.hardware import board, choose
from agent.hardware.sensors import DRIVERS
from agent.hardware.sensors.base import Value
from agent.hardware.simulated import SimulatedBoard
from conftest import ROOT, agent_config

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
    def temperatures() -> List[Value]:
        board = SimulatedBoard()
        driver = DRIVERS["tmp102"]("t", DRIVERS["tmp102"].Options(), board)
        driver.setup()
        return [driver.read() for _ in range(5)]

    assert temperatures() == temperatures()


# --- never simulated data by accident ----------------------------------------------------------


def _no_mraa_env(tmp_path: Path) -> Dict[str, str]:
    # An `import mraa` that fails the way a venv without --system-site-packages makes it fail.
    shadow = tmp_path / "no-mraa"
    shadow.mkdir()
    (shadow / "mraa.py").write_text("raise ImportError(\"No module named '_mraa'\")\n")
    return {"PYTHONPATH": str(shadow)}


def test_board_mraa_without_mraa_exits_2_with_the_import_error_and_the_fix(tmp_path, certs):
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(agent_config(certs, 1883, board="mraa")))
    env = dict(os.environ, **_no_mraa_env(tmp_path))
    result = subprocess.run([sys.executable, "-m", "agent", "run", "-c", str(path)], cwd=str(ROOT), env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "No module named '_mraa'" in result.stderr
    assert "--system-site-packages" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("name", "text"), [
    ("sys/devices/virtual/dmi/id/board_name", "SALT BAY\n"),
    ("proc/cpuinfo", "processor\t: 0\nmodel name\t: Genuine Intel(R) CPU 4000 @ 500MHz\n"),
])
def test_auto_never_picks_the_simulated_board_on_an_edison(tmp_path, monkeypatch, name, text):
    monkeypatch.setattr(sys, "path", [str(tmp_path / "no-mraa")] + sys.path)
    _no_mraa_env(tmp_path)
    monkeypatch.delitem(sys.modules, "mraa", raising=False)
    (tmp_path / name).parent.mkdir(parents=True)
    (tmp_path / name).write_text(text)
    with pytest.raises(board.BoardUnavailable, match=r"Intel Edison.*No module named '_mraa'.*system-site-packages"):
        choose.open_board("auto", root=tmp_path)
    assert choose.running_on_edison(tmp_path)


def test_auto_off_an_edison_falls_back_to_the_simulated_board_and_says_why(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(sys, "path", [str(tmp_path / "no-mraa")] + sys.path)
    _no_mraa_env(tmp_path)
    monkeypatch.delitem(sys.modules, "mraa", raising=False)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text("model name\t: AMD EPYC 7B13\n")
    chosen = choose.open_board("auto", root=tmp_path)
    assert chosen.simulated
    assert "No module named '_mraa'" in caplog.text and "made up" in caplog.text


def test_a_simulated_board_is_said_in_the_status_the_health_document_and_the_log(certs, broker, subscriber,
                                                                                 run_agent, tmp_path):
    agent = run_agent(agent_config(certs, broker.port, health={"interval": 1}))
    agent.wait_for(r"board: simulated: every reading is made up")
    assert subscriber.online()["board"] == "simulated"
    health = json.loads(subscriber.next("edison/thunder10/health"))
    assert health["board"]["simulated"] is True
    assert agent.stop() == 0


def test_the_shipped_config_asks_for_mraa():
    for shipped in (ROOT / "config" / "config.yaml", ROOT / "agent" / "data" / "config.yaml"):
        assert yaml.safe_load(shipped.read_text())["board"] == "mraa"
