"""Sensor drivers, one file each; DRIVERS maps a config `type` to its class.

A driver's module is imported when its type is first looked up, not with this package: a board
runs a few of the fourteen types, and each driver module held costs the agent 20-70 KiB for as
long as it runs (docs/performance.md, "Footprint").
"""

import importlib
from collections.abc import Iterator, Mapping
from typing import Dict, Tuple, Type

from agent.hardware.sensors.base import Channel, Sensor, SensorError, Value

# type -> (its module in this package, its class)
_WHERE: Dict[str, Tuple[str, str]] = {
    "analog": ("analog", "AnalogSensor"),
    "digital": ("digital", "DigitalSensor"),
    "counter": ("counter", "CounterSensor"),
    "i2c": ("i2c", "I2cSensor"),
    "tmp102": ("tmp102", "Tmp102Sensor"),
    "bme280": ("bme280", "BME280Sensor"),
    "bh1750": ("bh1750", "Bh1750Sensor"),
    "sht31": ("sht31", "Sht31Sensor"),
    "htu21d": ("htu21d", "Htu21dSensor"),
    "grove_temperature": ("grove", "GroveTemperature"),
    "grove_light": ("grove", "GroveLight"),
    "grove_rotary": ("grove", "GroveRotary"),
    "system": ("system", "SystemSensor"),
    "wifi": ("wifi", "WifiSensor"),
}


class _Drivers(Mapping[str, Type[Sensor]]):
    """A read-only dict of the drivers whose lookups import the driver's module."""

    def __getitem__(self, kind: str) -> Type[Sensor]:
        module, name = _WHERE[kind]  # KeyError for an unknown type, as a dict
        driver: Type[Sensor] = getattr(importlib.import_module("%s.%s" % (__name__, module)), name)
        return driver

    def __contains__(self, kind: object) -> bool:
        return kind in _WHERE  # without importing the driver

    def __iter__(self) -> Iterator[str]:
        return iter(_WHERE)

    def __len__(self) -> int:
        return len(_WHERE)


DRIVERS: Mapping[str, Type[Sensor]] = _Drivers()

__all__ = ["DRIVERS", "Channel", "Sensor", "SensorError", "Value"]
