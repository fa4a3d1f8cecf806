"""The schema's vocabulary: each config field declares, once, its YAML key, default, bounds and choices.

A section's dataclass field is the one place a key is written (`setting(...)`): the reader takes the
known keys, the kind, the default, the bounds and the choices from it; docs/configuration.md is held
to it by tests/test_docs.py; doctor and the overlay read the loaded config or these declarations.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# A key the config must give (mqtt.host, mqtt.tls.ca_file, a sensor's name and type).
REQUIRED: Any = _Marker("REQUIRED")
# A default the reader works out (from device.id, state_dir, the environment); `shown` says how.
COMPUTED: Any = _Marker("COMPUTED")
_SAME: Any = _Marker("SAME")


@dataclass(frozen=True)
class Bounds:
    """The range a numeric setting must be in, inclusive; None: unbounded on that side (but finite)."""

    minimum: Optional[float] = None
    maximum: Optional[float] = None
    # Replaces "is below the minimum N" where the key has more to say.
    too_low: Optional[str] = None

    def problem(self, shown: str, value: float) -> Optional[str]:
        if isinstance(value, float) and not math.isfinite(value):
            return "%s is not a finite number: give %s" % (shown, self.text())
        if self.minimum is not None and value < self.minimum:
            if self.too_low:
                return "%s: %s" % (value, self.too_low)
            return "%s is below the minimum %s" % (shown, self.minimum)
        if self.maximum is not None and value > self.maximum:
            return "%s is above the maximum %s" % (shown, self.maximum)
        return None

    def text(self) -> str:
        """As docs/configuration.md states it: `0.1-3600`, `at least 1`, `at most 300`."""
        low = None if self.minimum is None else number_text(self.minimum)
        high = None if self.maximum is None else number_text(self.maximum)
        if low is not None and high is not None:
            return "%s-%s" % (low, high)
        if low is not None:
            return "at least %s" % low
        return "at most %s" % high if high is not None else "a finite number"


def number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def declared(default: Any = REQUIRED, minimum: Optional[float] = None, maximum: Optional[float] = None, *,
             too_low: Optional[str] = None, choices: Optional[Sequence[Any]] = None, key: Optional[str] = None,
             shown: Optional[str] = None) -> Dict[str, Any]:
    """A config key's declaration, as a field's metadata: `default` is the config's (REQUIRED, COMPUTED
    or a value); `key` the YAML key path when it is not the field's name; `shown` the reference's
    words for a COMPUTED default. For a field the dataclass itself requires (one before others without
    a default): `port: int = dataclasses.field(metadata=declared(8883, 1, 65535))`."""
    metadata: Dict[str, Any] = {"default": default}
    if minimum is not None or maximum is not None:
        metadata["bounds"] = Bounds(minimum, maximum, too_low)
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if key is not None:
        metadata["key"] = key
    if shown is not None:
        metadata["shown"] = shown
    return metadata


def setting(default: Any, minimum: Optional[float] = None, maximum: Optional[float] = None, *,
            too_low: Optional[str] = None, choices: Optional[Sequence[Any]] = None, key: Optional[str] = None,
            shown: Optional[str] = None, init: Any = _SAME, repr: bool = True) -> Any:
    """A field read from config.yaml, with the config's default as the dataclass's too (or `init`, where
    the two differ: a COMPUTED default, or a value only a hand-built config has)."""
    metadata = declared(default, minimum, maximum, too_low=too_low, choices=choices, key=key, shown=shown)
    return dataclasses.field(default=default if init is _SAME else init, metadata=metadata, repr=repr)


# The metadata of a field the loader fills in that is no key of config.yaml (where a value came from, ...).
DERIVED: Dict[str, Any] = {"derived": True}


def derived(default: Any, compare: bool = True) -> Any:
    """A field with a default that is no key of config.yaml."""
    return dataclasses.field(default=default, metadata=DERIVED, compare=compare)


def _field(cls: type, name: str) -> "dataclasses.Field[Any]":
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    raise KeyError("%s has no field %s" % (cls.__name__, name))


@functools.cache
def bounds_of(cls: type, name: str) -> Optional[Bounds]:
    found = _field(cls, name).metadata.get("bounds")
    return found if isinstance(found, Bounds) else None


def choices_of(cls: type, name: str) -> Optional[Tuple[Any, ...]]:
    return typing.cast(Optional[Tuple[Any, ...]], _field(cls, name).metadata.get("choices"))


def default_of(cls: type, name: str) -> Any:
    """The config's default: a value, REQUIRED or COMPUTED."""
    field = _field(cls, name)
    if "default" in field.metadata:
        return field.metadata["default"]
    return REQUIRED if field.default is dataclasses.MISSING else field.default


def shown_default(cls: type, name: str) -> str:
    """The default as docs/configuration.md's second column begins: `8883`, `"1.2"`, `true`, none, required."""
    field = _field(cls, name)
    if "shown" in field.metadata:
        return str(field.metadata["shown"])
    default = default_of(cls, name)
    if default is REQUIRED:
        return "required"
    if default is None or default == ():
        return "none"
    if isinstance(default, bool):
        return "`%s`" % str(default).lower()
    if isinstance(default, (int, float)):
        return "`%s`" % number_text(default)
    return "`%s`" % default


@functools.cache
def field_kind(cls: type, name: str) -> type:
    """The field's type with Optional[...] taken off: int, float, str, bool, Path, a section's dataclass."""
    kind = typing.get_type_hints(cls)[name]
    if typing.get_origin(kind) is typing.Union:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    return typing.cast(type, kind)


def key_paths(cls: type) -> List[Tuple[str, str]]:
    """(YAML key path, field name) for each field read from config.yaml, in declaration order."""
    return [(str(f.metadata.get("key", f.name)), f.name) for f in dataclasses.fields(cls)
            if not f.metadata.get("derived")]


@functools.cache
def keys_of(cls: type, under: str = "") -> Tuple[str, ...]:
    """The keys a section (or, with `under`, a mapping inside it: `device`) may hold, in order."""
    prefix = under + "." if under else ""
    keys: List[str] = []
    for path, _ in key_paths(cls):
        if path.startswith(prefix):
            first = path[len(prefix):].split(".")[0]
            if first not in keys:
                keys.append(first)
    return tuple(keys)


def is_section(cls: type, name: str) -> bool:
    """Whether the field holds a section of its own (mqtt, mqtt.tls, spool, ...), not a value."""
    return dataclasses.is_dataclass(field_kind(cls, name))
