"""The `sensors:` list: common keys, processing, per-channel overrides and each driver's own options."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from agent.config import identifiers
from agent.config.fields import DERIVED, REQUIRED, declared, default_of, keys_of, setting
from agent.config.identifiers import brief
from agent.config.reader import MISSING, Reader, join, kind_of
from agent.hardware import sensors
from agent.sampling.processing import Calibration, Deadband, Filter, Processing

# A sensor's or a value's processing keys: Processing's fields (agent/sampling/processing.py).
PROCESSING_KEYS = tuple(f.name for f in dataclasses.fields(Processing))


@dataclass(frozen=True)
class ChannelConfig:
    # The value's key in the driver's channels (temperature, humidity, ...); "" for a sensor of one value.
    key: str = dataclasses.field(metadata=DERIVED)
    # The name readings of this channel are published under.
    name: str = dataclasses.field(metadata=declared(REQUIRED))
    unit: Optional[str] = dataclasses.field(metadata=declared(None, shown="the driver's"))
    processing: Processing = dataclasses.field(metadata=DERIVED)


@dataclass(frozen=True)
class SensorConfig:
    name: str = dataclasses.field(metadata=declared(REQUIRED))
    # The driver: a key of agent/hardware/sensors' DRIVERS.
    type: str = dataclasses.field(metadata=declared(REQUIRED))
    interval: float = dataclasses.field(metadata=declared(10.0, minimum=0.01, maximum=86400))
    # The driver's own options dataclass (see agent/sensors): typed, validated; its keys are the sensor's.
    options: Any = dataclasses.field(metadata=DERIVED)
    # From `channels:`, the per-value overrides.
    channels: Tuple[ChannelConfig, ...] = dataclasses.field(metadata=declared(None))
    # Seconds after start of the first reading, so sensors on one interval do not fire together.
    phase: float = setting(0.0, minimum=0.0, maximum=86400)
    # A read still running after this long counts as failed (a hung bus, a stuck driver).
    timeout: float = setting(10.0, minimum=0.01, maximum=3600)
    # Consecutive failures before one reading with quality "error" is published.
    error_after: int = setting(3, minimum=1, maximum=1000)
    oversample: int = setting(1, minimum=1, maximum=100)


# Keys every sensor may have (a sensor of one value takes its value's unit and processing); the rest
# belong to its driver's Options. A value under `channels:` has its own name, unit and processing.
SENSOR_KEYS = keys_of(SensorConfig) + tuple(k for k in keys_of(ChannelConfig) if k != "name") + PROCESSING_KEYS
CHANNEL_KEYS = keys_of(ChannelConfig) + PROCESSING_KEYS


def parse_sensors(r: Reader, raw: Any) -> Tuple[SensorConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        r.problem("sensors", "expected a list of sensors (each starting with '- name: ...'), got %s" % kind_of(raw))
        return ()
    result: List[SensorConfig] = []
    names: Dict[str, str] = {}
    for index, item in enumerate(raw):
        path = "sensors[%d]" % index
        if not isinstance(item, dict):
            r.problem(path, "expected a mapping (name:, type:, ...), got %s" % kind_of(item))
            continue
        name = r.value(item, "name", path, str)
        if name is not None and identifiers.sensor_name_problem(name) is None:
            path = "sensors[%d](%s)" % (index, name)
        config = _sensor(r, item, path, name)
        if config is None:
            continue
        for channel in config.channels:
            if channel.name in names:
                r.problem(path + ".name", "duplicate sensor name %s (also %s)"
                          % (brief(channel.name), names[channel.name]))
            names[channel.name] = path
        result.append(config)
    return tuple(result)


def _sensor(r: Reader, item: Mapping[str, Any], path: str, name: Optional[str]) -> Optional[SensorConfig]:
    before = len(r.problems)
    problem = identifiers.sensor_name_problem(name) if name is not None else None
    if problem is not None:
        r.problem(path + ".name", "%s %s" % (brief(name), problem))
    kind = r.value(item, "type", path, str, choices=tuple(sorted(sensors.DRIVERS)))
    interval = r.setting(item, SensorConfig, "interval", path)
    phase = r.setting(item, SensorConfig, "phase", path)
    timeout = r.setting(item, SensorConfig, "timeout", path)
    error_after = r.setting(item, SensorConfig, "error_after", path)
    oversample = r.setting(item, SensorConfig, "oversample", path)
    unit = _unit(r, item, path, None)
    processing = _processing(r, item, path)
    if kind is None:
        r.section(item, path, SENSOR_KEYS + tuple(_all_option_names()))
        return None
    driver = sensors.DRIVERS[kind]
    options = _options(r, item, path, driver.Options)
    option_problems = driver.check_options(options) if options is not None else []
    for key, message in option_problems:
        r.problem(join(path, key), message)
    if oversample and oversample > 1 and not driver.can_oversample:
        r.problem(path + ".oversample", "a %s sensor cannot be oversampled (reading it twice splits its count)"
                  % kind)
    if options is None or option_problems or name is None or len(r.problems) > before:
        return None
    channels = _channels(r, item, path, name, driver.channels(options), unit, processing)
    if len(r.problems) > before:
        return None
    return SensorConfig(name=name, type=kind, interval=interval, options=options, channels=channels,
                        phase=phase, timeout=timeout, error_after=error_after, oversample=oversample)


def _unit(r: Reader, item: Mapping[str, Any], path: str, default: Optional[str]) -> Optional[str]:
    unit: Optional[str] = r.value(item, "unit", path, str, default=default)
    problem = identifiers.unit_problem(unit) if unit is not None and "unit" in item else None
    if problem is not None:
        r.problem(path + ".unit", "%s %s" % (brief(unit), problem))
        return default
    return unit


def _all_option_names() -> List[str]:
    return [f.name for d in sensors.DRIVERS.values() for f in dataclasses.fields(d.Options)]


def _channels(r: Reader, item: Mapping[str, Any], path: str, name: str, declared: Tuple[sensors.Channel, ...],
              unit: Optional[str], processing: Processing) -> Tuple[ChannelConfig, ...]:
    keys = [c.key for c in declared]
    if declared == () or keys == [""]:
        if "channels" in item:
            r.problem(path + ".channels", "this sensor has one value: put name, unit and processing on the sensor")
        default_unit = declared[0].unit if declared else None
        return (ChannelConfig("", name, unit if unit is not None else default_unit, processing),)
    if unit is not None:
        r.problem(path + ".unit", "this sensor has several values (%s): set a unit per value under channels"
                  % ", ".join(keys))
    overrides = r.section(item.get("channels"), path + ".channels", keys)
    result = []
    for channel in declared:
        where = "%s.channels.%s" % (path, channel.key)
        c = r.section(overrides.get(channel.key), where, CHANNEL_KEYS)
        channel_name = r.value(c, "name", where, str, default="%s.%s" % (name, channel.key))
        problem = identifiers.sensor_name_problem(channel_name) if channel_name is not None else None
        if problem is not None:
            r.problem(where + ".name", "%s %s" % (brief(channel_name), problem))
        channel_unit = _unit(r, c, where, channel.unit)
        own = _processing(r, c, where)
        # A value's own processing keys replace the sensor's, key by key.
        merged = Processing(**{k: getattr(own, k) if k in c else getattr(processing, k)
                               for k in PROCESSING_KEYS})
        result.append(ChannelConfig(channel.key, channel_name or channel.key, channel_unit, merged))
    return tuple(result)


def _processing(r: Reader, item: Mapping[str, Any], path: str) -> Processing:
    return Processing(calibration=_calibration(r, item.get("calibration"), path + ".calibration"),
                      filter=_filter(r, item.get("filter"), path + ".filter"),
                      deadband=_deadband(r, item.get("deadband"), path + ".deadband"),
                      range=_range(r, item, path))


def _calibration(r: Reader, raw: Any, path: str) -> Optional[Calibration]:
    if raw is None:
        return None
    c = r.section(raw, path, keys_of(Calibration))
    if "polynomial" in c:
        if "scale" in c or "offset" in c:
            r.problem(path, "give either scale/offset or polynomial, not both")
        # Evaluated at every reading: a degree past 15 is a mistake, not a calibration.
        coefficients = r.numbers(c, "polynomial", path, min_count=1, max_count=16)
        return Calibration(polynomial=tuple(coefficients)) if coefficients else None
    return Calibration(scale=r.value(c, "scale", path, float, default=default_of(Calibration, "scale")),
                       offset=r.value(c, "offset", path, float, default=default_of(Calibration, "offset")))


def _filter(r: Reader, raw: Any, path: str) -> Optional[Filter]:
    if raw is None:
        return None
    f = r.section(raw, path, ("median", "mean"))
    if len(f) != 1:
        r.problem(path, "give one of median: N or mean: N")
        return None
    kind = next(iter(f))
    if kind not in ("median", "mean"):
        return None  # reported as an unknown key by section()
    size = r.value(f, kind, path, int, minimum=1, maximum=1000)
    return Filter(kind, size) if size is not None else None


def _deadband(r: Reader, raw: Any, path: str) -> Optional[Deadband]:
    if raw is None:
        return None
    d = r.section(raw, path, keys_of(Deadband))
    return Deadband(abs=r.value(d, "abs", path, float, default=None, minimum=0.0),
                    pct=r.value(d, "pct", path, float, default=None, minimum=0.0),
                    max_silence=r.value(d, "max_silence", path, float, default=default_of(Deadband, "max_silence"),
                                        minimum=0.01, maximum=86400))


def _range(r: Reader, item: Mapping[str, Any], path: str) -> Optional[Tuple[float, float]]:
    if item.get("range") is None:
        return None
    bounds = r.numbers(item, "range", path, min_count=2, max_count=2)
    if bounds is None:
        return None
    if bounds[0] > bounds[1]:
        r.problem(path + ".range", "[%g, %g]: the minimum comes first" % (bounds[0], bounds[1]))
        return None
    return bounds[0], bounds[1]


def _options(r: Reader, item: Mapping[str, Any], path: str, options_type: type) -> Any:
    """Builds a driver's options dataclass from the sensor's remaining keys, by the field types."""
    fields = dataclasses.fields(options_type)
    r.section(item, path, SENSOR_KEYS + tuple(f.name for f in fields))
    hints = typing.get_type_hints(options_type)
    values: Dict[str, Any] = {}
    before = len(r.problems)
    for f in fields:
        kind = hints[f.name]
        if typing.get_origin(kind) is typing.Union:
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        default = f.default if f.default is not dataclasses.MISSING else MISSING
        values[f.name] = r.value(item, f.name, path, kind, default=default)
    if len(r.problems) > before:
        return None
    return options_type(**values)
