"""Sensor drivers, one file each; DRIVERS maps a config `type` to its class."""

from typing import Dict, Type

from agent.hardware.sensors.analog import AnalogSensor
from agent.hardware.sensors.base import Channel, Sensor, SensorError, Value
from agent.hardware.sensors.bh1750 import Bh1750Sensor
from agent.hardware.sensors.bme280 import BME280Sensor
from agent.hardware.sensors.counter import CounterSensor
from agent.hardware.sensors.digital import DigitalSensor
from agent.hardware.sensors.grove import GroveLight, GroveRotary, GroveTemperature
from agent.hardware.sensors.htu21d import Htu21dSensor
from agent.hardware.sensors.i2c import I2cSensor
from agent.hardware.sensors.sht31 import Sht31Sensor
from agent.hardware.sensors.system import SystemSensor
from agent.hardware.sensors.tmp102 import Tmp102Sensor
from agent.hardware.sensors.wifi import WifiSensor

DRIVERS: Dict[str, Type[Sensor]] = {
    "analog": AnalogSensor,
    "digital": DigitalSensor,
    "counter": CounterSensor,
    "i2c": I2cSensor,
    "tmp102": Tmp102Sensor,
    "bme280": BME280Sensor,
    "bh1750": Bh1750Sensor,
    "sht31": Sht31Sensor,
    "htu21d": Htu21dSensor,
    "grove_temperature": GroveTemperature,
    "grove_light": GroveLight,
    "grove_rotary": GroveRotary,
    "system": SystemSensor,
    "wifi": WifiSensor,
}

__all__ = ["DRIVERS", "Channel", "Sensor", "SensorError", "Value"]
