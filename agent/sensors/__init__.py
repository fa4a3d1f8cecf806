"""Sensor drivers, one file each; DRIVERS maps a config `type` to its class."""

from typing import Dict, Type

from agent.sensors.analog import AnalogSensor
from agent.sensors.base import Channel, Sensor, SensorError, Value
from agent.sensors.bh1750 import Bh1750Sensor
from agent.sensors.bme280 import BME280Sensor
from agent.sensors.counter import CounterSensor
from agent.sensors.digital import DigitalSensor
from agent.sensors.grove import GroveLight, GroveRotary, GroveTemperature
from agent.sensors.htu21d import Htu21dSensor
from agent.sensors.i2c import I2cSensor
from agent.sensors.sht31 import Sht31Sensor
from agent.sensors.system import SystemSensor
from agent.sensors.tmp102 import Tmp102Sensor
from agent.sensors.wifi import WifiSensor

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
