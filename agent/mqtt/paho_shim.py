"""The one module that reaches into paho's and the ssl module's private parts.

paho 2.x has no public accessor for its keepalive clock, and the ssl module decodes a
certificate's dates only through a private helper (the board has no `cryptography`). Each use
is here, named, and checked by tests/test_paho_shim.py against the installed versions: a
release that moves one fails that test, not the board. setup.py admits only the paho releases
tested (`REQUIRED_CLIENT_FIELDS` says what they must have).
"""

from __future__ import annotations

import ssl
import time
from typing import Any, Dict, Optional

import paho.mqtt.client as mqtt

# What paho's loop_misc() looks at to decide a PINGREQ, and the lock it takes to change them.
REQUIRED_CLIENT_FIELDS = ("_last_msg_out", "_last_bytes_received", "_ping_t", "_msgtime_mutex")
# The ssl module's own certificate decoder; private, but present since Python 2.7.
REQUIRED_SSL_HELPER = "_test_decode_cert"

# Only if paho no longer has the keepalive timestamps: then the network thread looks at
# keepalive at a fixed step, as paho's own loop() does.
ALIVE_STEP = 15.0
# A select() that returns a hair before paho's keepalive is due would just go round again.
_LATE = 0.005


def keepalive_due(client: mqtt.Client) -> float:
    """When paho's keepalive check next has something to do (paho's own monotonic clock): a
    PINGREQ to send, or a PINGRESP (or CONNACK) that is overdue."""
    keepalive = client.keepalive
    try:
        last = min(client._last_msg_out, client._last_bytes_received)  # noqa: SLF001
        ping = client._ping_t  # noqa: SLF001
    except AttributeError:
        return time.monotonic() + min(ALIVE_STEP, keepalive / 4)
    due = last + keepalive
    if ping > 0:
        due = min(due, ping + keepalive)
    return float(due) + _LATE


def note_packet_sent(client: mqtt.Client) -> None:
    """Tell paho's keepalive that a packet just went out.

    paho 2.2 leaves its last-sent time alone when a write empties its queue, so it sent a
    PINGREQ every keepalive even to a broker that had just received a reading: a wake-up and
    two TLS records a minute, on a board that publishes every few seconds. The spec's
    keepalive counts any packet sent."""
    lock = getattr(client, "_msgtime_mutex", None)
    if lock is not None and hasattr(client, "_last_msg_out"):
        with lock:
            client._last_msg_out = mqtt.time_func()  # noqa: SLF001 - paho's own clock


def decode_certificate(path: str) -> Optional[Dict[str, Any]]:
    """The ssl module's decoding of a PEM certificate file (notBefore, notAfter, subject...);
    None when the helper is gone or the file is not a certificate."""
    helper = getattr(ssl._ssl, REQUIRED_SSL_HELPER, None)  # type: ignore[attr-defined]
    if helper is None:
        return None
    try:
        decoded = helper(path)
    except (OSError, ValueError, ssl.SSLError):
        return None
    return dict(decoded)
