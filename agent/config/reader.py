"""Reading typed values out of a parsed YAML tree, collecting problems instead of raising.

Also what may be parsed at all: a regular file of at most MAX_FILE_BYTES, whose YAML nests at most
MAX_DEPTH levels and expands (aliases counted each time they are used) to at most MAX_NODES values.
A key's kind, default, bounds and choices come from its dataclass field (agent/config/fields.py).
"""

from __future__ import annotations

import math
import os
import stat
import typing
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import yaml

from agent.config.fields import COMPUTED, REQUIRED, Bounds, bounds_of, choices_of, default_of, field_kind
from agent.config.identifiers import brief
from agent.config.problems import FileProblem, Problem

# A board's config with a thousand sensors is ~80 KB; past this it is not a config file.
MAX_FILE_BYTES = 1024 * 1024
# The deepest a real config nests is ~10 (sensors, a sensor, channels, a channel, calibration, ...).
# The composer recurses once per level: 20,000 levels would end in a RecursionError.
MAX_DEPTH = 32
# Values after expanding every alias: ~21 per sensor, so room for 10,000 sensors. An alias bomb
# (nine aliases of nine aliases ...) is refused here, while its document is still a few hundred nodes.
MAX_NODES = 200000
# An integer key without bounds of its own is at least a C int on the board (mraa takes them).
INT_BOUNDS = (-(2 ** 31), 2 ** 31 - 1)


def read_text(path: Path, limit: int = MAX_FILE_BYTES, what: str = "config file") -> str:
    """The file's text, if it is a regular UTF-8 file of at most `limit` bytes; raises FileProblem.

    Opened non-blocking: a FIFO would otherwise wait for a writer forever, and /dev/zero never ends."""
    try:
        fd = os.open(str(path), os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise FileProblem("cannot read the %s: %s" % (what, exc.strerror or exc)) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise FileProblem("the %s is %s, not a regular file: give the path of a YAML file"
                              % (what, _file_kind(mode)))
        chunks: List[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise FileProblem("cannot read the %s: %s" % (what, exc.strerror or exc)) from None
    finally:
        os.close(fd)
    if size > limit:
        raise FileProblem("the %s is larger than %d KiB: is it the right file?" % (what, limit // 1024))
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileProblem("not UTF-8 text (byte %d): save it as UTF-8" % exc.start) from None


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate and unhashable keys, deep nesting and alias bombs.

    PyYAML keeps the last of two equal keys silently; a config typo must not vanish."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0
        # id(node) -> (values after expanding aliases, depth after expanding aliases), for every
        # finished node: an alias adds what its anchor measured, without expanding anything.
        self._measured: Dict[int, Tuple[int, int]] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            node = super().compose_node(parent, index)
            if id(node) not in self._measured:
                raise yaml.composer.ComposerError(None, None, "an alias inside its own anchor (a recursive "
                                                  "structure) is not allowed", mark)
            return node
        mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, "nested deeper than %d levels" % MAX_DEPTH, mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        size = 1 + sum(self._measured[id(c)][0] for c in children)
        depth = 1 + max((self._measured[id(c)][1] for c in children), default=0)
        if size > MAX_NODES:
            raise yaml.composer.ComposerError(None, None, "expands to more than %d values (aliases counted each "
                                              "time they are used): not a config file" % MAX_NODES, mark)
        if depth > MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, "nested deeper than %d levels once aliases are "
                                              "expanded" % MAX_DEPTH, mark)
        self._measured[id(node)] = (size, depth)
        return node


def _construct_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode) -> Dict[Any, Any]:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a key may not be a list or a mapping", key_node.start_mark
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, "duplicate key %s" % brief(key), key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def parse_yaml(text: str) -> Any:
    """The document, through UniqueKeyLoader; every failure is a yaml.YAMLError."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        raise
    except (ValueError, OverflowError, RecursionError, TypeError) as exc:
        # A value PyYAML's constructors choke on: an integer past 4300 digits, `2024-13-45` read
        # as a date, ... ; Python's message names the problem, not the place.
        raise yaml.YAMLError(str(exc).splitlines()[0][:120]) from None


MISSING = object()


class Reader:
    """Reads typed values out of the YAML tree, collecting problems instead of raising."""

    def __init__(self, label: str, base_dir: Path) -> None:
        self.label = label
        self.base_dir = base_dir
        self.problems: List[Problem] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(Problem("%s: %s: %s" % (self.label, path, message), path))

    def section(self, value: Any, path: str, known: typing.Iterable[str]) -> Dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(path, "expected a mapping of keys, got %s" % kind_of(value))
            return {}
        known = tuple(known)
        for key in value:
            if key not in known:
                # A key is quoted like a value when it is long or holds what would split the line.
                name = str(key) if isinstance(key, (str, int)) and len(str(key)) <= 40 \
                    and str(key).isprintable() else brief(key)
                self.problem(join(path, name), "unknown key (known keys: %s)" % ", ".join(known))
        return value

    def value(self, section: Mapping[str, Any], key: str, path: str, kind: type,
              default: Any = MISSING, choices: Optional[typing.Sequence[Any]] = None,
              minimum: Optional[float] = None, maximum: Optional[float] = None,
              bounds: Optional[Bounds] = None) -> Any:
        """The value of `key` as `kind`; a number must be finite and within `bounds` (or minimum/maximum)."""
        where = join(path, key)
        raw = section.get(key)
        if raw is None:
            if default is MISSING:
                self.problem(where, "required %s is missing" % kind.__name__)
            return None if default is MISSING else default
        value = _coerce(raw, kind)
        if value is None:
            self.problem(where, "expected %s, got %s %s" % (_kind_name(kind), kind_of(raw), brief(raw)))
            return None if default is MISSING else default
        if isinstance(value, str) and "\x00" in value:
            # No path, name, host or topic may hold one, and os.stat() raises on it.
            self.problem(where, "%s holds U+0000 (a NUL character)" % brief(value))
            return None if default is MISSING else default
        if choices is not None and value not in choices:
            names = [str(c) for c in choices]
            # Imported on this error path only: difflib is ~140 KiB the agent would otherwise hold for good.
            import difflib

            close = difflib.get_close_matches(str(raw)[:100], names, n=1)
            hint = "; did you mean %r?" % close[0] if close else ""
            self.problem(where, "%s is not one of: %s%s" % (brief(raw), ", ".join(names), hint))
            return None if default is MISSING else default
        if kind in (int, float):
            if bounds is None:
                bounds = Bounds(minimum, maximum) if minimum is not None or maximum is not None else \
                    Bounds(*INT_BOUNDS) if kind is int else Bounds()
            problem = bounds.problem(brief(raw), value)
            if problem is not None:
                self.problem(where, problem)
                # Never let NaN, infinity or an out-of-range number through, even with problems reported.
                return None if default is MISSING else default
        return value

    def setting(self, section: Mapping[str, Any], cls: type, key: str, path: str, default: Any = MISSING) -> Any:
        """A key read by its dataclass field: the kind from its type; the default, bounds and choices
        from the field (`default` only where a target changes it, as Azure IoT Hub's topics)."""
        if default is MISSING:
            default = default_of(cls, key)
            if default is COMPUTED:
                raise TypeError("%s.%s: its default is worked out by the loader: give it" % (cls.__name__, key))
            default = MISSING if default is REQUIRED else default
        return self.value(section, key, path, field_kind(cls, key), default=default,
                          choices=choices_of(cls, key), bounds=bounds_of(cls, key) or Bounds())

    def numbers(self, section: Mapping[str, Any], key: str, path: str, min_count: int = 1,
                max_count: Optional[int] = None) -> Optional[List[float]]:
        where = join(path, key)
        raw = section.get(key)
        if not isinstance(raw, list) or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in raw):
            self.problem(where, "expected a list of numbers like [0, 1.5], got %s %s" % (kind_of(raw), brief(raw)))
            return None
        if len(raw) < min_count or (max_count is not None and len(raw) > max_count):
            count = (str(min_count) if max_count == min_count else "at least %d" % min_count if max_count is None
                     else "%d-%d" % (min_count, max_count))
            self.problem(where, "expected %s numbers, got %d" % (count, len(raw)))
            return None
        try:
            values = [float(x) for x in raw]
        except OverflowError:
            values = [math.inf]
        if not all(math.isfinite(x) for x in values):
            self.problem(where, "every number must be finite (no .nan, .inf or integers past 1e308)")
            return None
        return values

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
    # Integers past 1e308 have no float: they are out of every range, like infinity.
    # YAML booleans are ints to Python; `port: yes` must not pass as port 1.
    if kind is bool:
        return raw if isinstance(raw, bool) else None
    if isinstance(raw, bool):
        return None
    if kind is float and isinstance(raw, (int, float)):
        try:
            return float(raw)
        except OverflowError:
            return math.inf if raw > 0 else -math.inf
    if kind is int and isinstance(raw, int):
        return raw
    if kind is str and isinstance(raw, str):
        return raw
    if kind is str and isinstance(raw, (int, float)):
        # `id: 1234`, a YAML integer, is meant as a name; str() of a 5000-digit integer raises.
        return str(raw) if abs(raw) < 10 ** 30 else None
    return None
