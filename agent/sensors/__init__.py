"""Sensor drivers, one file each; DRIVERS maps a config `type` to its class."""

from typing import Dict, Type

from agent.sensors.analog import AnalogSensor
from agent.sensors.base import Channel, Sensor, SensorError, Value
from agent.sensors.digital import DigitalSensor
from agent.sensors.system import SystemSensor

DRIVERS: Dict[str, Type[Sensor]] = {
    "analog": AnalogSensor,
    "digital": DigitalSensor,
    "system": SystemSensor,
}

__all__ = ["DRIVERS", "Channel", "Sensor", "SensorError", "Value"]
