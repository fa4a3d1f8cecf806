"""What a valid device id, sensor name, command id and MQTT topic is: one definition, used by the
config loader and by everything that arrives over MQTT (agent/service/commands.py).

Each check returns None for a good value, or the problem in words (without quoting the value, which
may be megabytes or hold a NUL: the caller names it with `brief`). MQTT's own rules (3.1.1 section
4.7, 5.0 section 4.7): a topic is 1-65535 bytes of UTF-8 without U+0000; `+` and `#` are wildcards,
allowed in a subscription's filter only; topics SHOULD NOT hold control characters.
"""

from __future__ import annotations

import re
from typing import Optional

# The length field of an MQTT string is two bytes.
MAX_TOPIC_BYTES = 65535
# A device id is the default client id and a level of every topic. AWS IoT Core thing names and
# Azure IoT Hub device ids stop at 128 characters; 64 also fits Linux's HOST_NAME_MAX (the default
# comes from the hostname) and keeps a log line readable.
MAX_DEVICE_ID = 64
# A sensor (or channel) name travels in every reading and every log line about the sensor.
MAX_SENSOR_NAME = 128
# A unit travels in every reading: "degC", "%RH", "hPa", "m/s^2".
MAX_UNIT = 32
# A command id is echoed as the last level of the reply topic and in the log line of each command.
MAX_COMMAND_ID = 64

# MQTT 3.1.1 (3.1.3.1): a broker MUST accept client ids of these characters, and may refuse others.
# `-` and `_` are as safe; `.` and `/` are not: RabbitMQ's MQTT plugin maps `.` and `/` between topic
# and routing-key separators, so an id holding one lands in the wrong place.
_DEVICE_ID = re.compile(r"[A-Za-z0-9_-]+\Z")
_COMMAND_ID = re.compile(r"[A-Za-z0-9._:-]+\Z")
# C0 controls, DEL and C1 controls: MQTT says a topic SHOULD NOT hold them, a log line splits at them.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def device_id_problem(value: str) -> Optional[str]:
    if not value:
        return "is empty"
    if len(value) > MAX_DEVICE_ID:
        return "is %d characters long; at most %d" % (len(value), MAX_DEVICE_ID)
    if not _DEVICE_ID.match(value):
        return ("may hold only letters, digits, '-' and '_' (it is the client id and a topic level; RabbitMQ "
                "maps '.' and '/' to other separators): use %r" % suggest_device_id(value))
    return None


def suggest_device_id(value: str) -> str:
    """The nearest valid id, for the error message."""
    return (re.sub(r"[^A-Za-z0-9_-]+", "-", value).strip("-") or "edison")[:MAX_DEVICE_ID]


def sensor_name_problem(value: str) -> Optional[str]:
    """A sensor's or a channel's name: printable, no topic separators or wildcards, no spaces."""
    if not value:
        return "is empty"
    if len(value) > MAX_SENSOR_NAME:
        return "is %d characters long; at most %d" % (len(value), MAX_SENSOR_NAME)
    if _CONTROL.search(value) or _not_utf8(value):
        return "holds a control character or is not UTF-8 text"
    if any(c in value for c in "/+#") or any(c.isspace() for c in value):
        return "may not contain '/', '+', '#' or spaces"
    return None


def unit_problem(value: str) -> Optional[str]:
    if len(value) > MAX_UNIT:
        return "is %d characters long; a unit is at most %d" % (len(value), MAX_UNIT)
    if _CONTROL.search(value) or _not_utf8(value):
        return "holds a control character or is not UTF-8 text"
    return None


def command_id_problem(value: str) -> Optional[str]:
    """A command's `id`, echoed as the last level of its reply topic."""
    if not value or len(value) > MAX_COMMAND_ID or not _COMMAND_ID.match(value):
        return ("must be 1-%d letters, digits, '.', ':', '-' or '_': it is the last level of the reply topic"
                % MAX_COMMAND_ID)
    return None


def topic_problem(value: str, wildcards: bool = False) -> Optional[str]:
    """A topic to publish to (wildcards=False) or a subscription's filter (wildcards=True)."""
    if not value:
        return "is empty"
    if _not_utf8(value):
        return "is not UTF-8 text"
    if len(value.encode("utf-8")) > MAX_TOPIC_BYTES:
        return "is %d bytes long; MQTT allows %d" % (len(value.encode("utf-8")), MAX_TOPIC_BYTES)
    if _CONTROL.search(value):
        return "holds a control character (U+0000 is refused by every broker)"
    if not wildcards:
        if "+" in value or "#" in value:
            return "holds '+' or '#', which are wildcards: a topic to publish to may hold neither"
        return None
    levels = value.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return "'#' must be a level of its own and the last one"
        if "+" in level and level != "+":
            return "'+' must be a level of its own"
    return None


def matches(topic_filter: str, topic: str) -> bool:
    """Whether a subscription to `topic_filter` receives messages published to `topic`."""
    wanted, levels = topic_filter.split("/"), topic.split("/")
    for index, level in enumerate(wanted):
        if level == "#":
            # `a/#` also matches `a` itself; a filter starting with a wildcard never matches `$...`.
            return not (index == 0 and topic.startswith("$"))
        if index >= len(levels):
            return False
        if level == "+":
            if index == 0 and topic.startswith("$"):
                return False
            continue
        if level != levels[index]:
            return False
    return len(wanted) == len(levels)


def brief(value: object, limit: int = 40) -> str:
    """A value for a message: at most `limit` characters of it, never its whole (maybe huge) repr."""
    if isinstance(value, str):
        shown = repr(value[:limit])
        return shown + ("... (%d characters)" % len(value) if len(value) > limit else "")
    if isinstance(value, (bytes, bytearray)):
        return repr(bytes(value[:limit])) + ("..." if len(value) > limit else "")
    if isinstance(value, dict):
        return "a mapping of %d keys" % len(value)
    if isinstance(value, (list, tuple)):
        return "a list of %d items" % len(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** limit:
        # str() of an integer past 4300 digits raises on Python 3.11+.
        return "an integer of about %d digits" % (value.bit_length() * 3 // 10)
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _not_utf8(value: str) -> bool:
    # A JSON or YAML string may hold lone surrogates ("\ud800"), which have no UTF-8 form.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
