"""Reading typed values out of a parsed YAML tree, collecting problems instead of raising."""

from __future__ import annotations

import difflib
import os
import typing
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import yaml


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a config typo must not vanish."""


def _construct_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode) -> Dict[Any, Any]:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, "duplicate key %r" % (key,), key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)

MISSING = object()


class Reader:
    """Reads typed values out of the YAML tree, collecting problems instead of raising."""

    def __init__(self, label: str, base_dir: Path) -> None:
        self.label = label
        self.base_dir = base_dir
        self.problems: List[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append("%s: %s: %s" % (self.label, path, message))

    def section(self, value: Any, path: str, known: typing.Iterable[str]) -> Dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(path, "expected a mapping of keys, got %s" % kind_of(value))
            return {}
        known = tuple(known)
        for key in value:
            if key not in known:
                self.problem(join(path, str(key)), "unknown key (known keys: %s)" % ", ".join(known))
        return value

    def value(self, section: Mapping[str, Any], key: str, path: str, kind: type,
              default: Any = MISSING, choices: Optional[typing.Sequence[Any]] = None,
              minimum: Optional[float] = None, maximum: Optional[float] = None) -> Any:
        where = join(path, key)
        raw = section.get(key)
        if raw is None:
            if default is MISSING:
                self.problem(where, "required %s is missing" % kind.__name__)
            return None if default is MISSING else default
        value = _coerce(raw, kind)
        if value is None:
            self.problem(where, "expected %s, got %s %r" % (_kind_name(kind), kind_of(raw), raw))
            return None if default is MISSING else default
        if choices is not None and value not in choices:
            names = [str(c) for c in choices]
            close = difflib.get_close_matches(str(raw), names, n=1)
            hint = "; did you mean %r?" % close[0] if close else ""
            self.problem(where, "%r is not one of: %s%s" % (raw, ", ".join(names), hint))
            return None if default is MISSING else default
        if minimum is not None and value < minimum:
            self.problem(where, "%s is below the minimum %s" % (raw, minimum))
        if maximum is not None and value > maximum:
            self.problem(where, "%s is above the maximum %s" % (raw, maximum))
        return value

    def numbers(self, section: Mapping[str, Any], key: str, path: str, min_count: int = 1,
                max_count: Optional[int] = None) -> Optional[List[float]]:
        where = join(path, key)
        raw = section.get(key)
        if not isinstance(raw, list) or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in raw):
            self.problem(where, "expected a list of numbers like [0, 1.5], got %s %r" % (kind_of(raw), raw))
            return None
        if len(raw) < min_count or (max_count is not None and len(raw) > max_count):
            count = str(min_count) if max_count == min_count else "at least %d" % min_count
            self.problem(where, "expected %s numbers, got %d" % (count, len(raw)))
            return None
        return [float(x) for x in raw]

    def file(self, section: Mapping[str, Any], key: str, path: str, required: bool) -> Optional[Path]:
        raw = self.value(section, key, path, str, default=MISSING if required else None)
        if not raw:
            return None
        resolved = Path(os.path.expanduser(raw))
        if not resolved.is_absolute():
            resolved = self.base_dir / resolved
        where = join(path, key)
        if not resolved.exists():
            self.problem(where, "file not found: %s" % resolved)
        elif not resolved.is_file():
            self.problem(where, "not a regular file: %s" % resolved)
        elif not os.access(resolved, os.R_OK):
            self.problem(where, "not readable by this user: %s (check its owner and mode)" % resolved)
        return resolved


def join(path: str, key: str) -> str:
    return "%s.%s" % (path, key) if path else key


def kind_of(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _kind_name(kind: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[kind]


def _coerce(raw: Any, kind: type) -> Any:
    # YAML booleans are ints to Python; `port: yes` must not pass as port 1.
    if kind is bool:
        return raw if isinstance(raw, bool) else None
    if isinstance(raw, bool):
        return None
    if kind is float and isinstance(raw, (int, float)):
        return float(raw)
    if kind is int and isinstance(raw, int):
        return raw
    if kind is str and isinstance(raw, (str, int, float)):
        return str(raw)
    return None


def is_topic_safe(value: str) -> bool:
    """Names that become MQTT topic levels: no separators, wildcards or spaces."""
    return bool(value) and not any(c in value for c in "/+# \t")
