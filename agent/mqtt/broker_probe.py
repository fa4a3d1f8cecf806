"""Connections below paho, for diagnosis only: does a broker that closed on our MQTT 5 CONNECT
answer an MQTT 3.1.1 one? Shared by the session (once, when an MQTT 5 connect is closed before
CONNACK) and `edison-agent doctor`, so both say the same words."""

from __future__ import annotations

import socket
import ssl
from typing import Optional

from agent.mqtt.wire import connack_code, connect_packet, read_packet

# The issue's words; `4` is MQTT 3.1.1's protocol level, which config.py takes as well as "3.1.1".
SPEAKS_311_ONLY = ("this broker speaks MQTT 3.1.1 only: set mqtt.protocol: 4 (MQTT 3.1.1, the default); it closed "
                   "the connection on our MQTT 5 CONNECT and answered an MQTT 3.1.1 one")
TIMEOUT = 10.0
_UNACCEPTABLE_PROTOCOL = 1
_DISCONNECT = b"\xe0\x00"


def open_connection(host: str, port: int, ctx: Optional[ssl.SSLContext], timeout: float = TIMEOUT) -> socket.socket:
    """TCP, then TLS with `ctx` (SNI and the name checked: `host`, or the context's server_name)."""
    raw = socket.create_connection((host, port), timeout=timeout)
    if ctx is None:
        return raw
    try:
        return ctx.wrap_socket(raw, server_hostname=host)
    except BaseException:
        raw.close()
        raise


def answers_mqtt311(host: str, port: int, ctx: Optional[ssl.SSLContext], client_id: str, keepalive: int,
                    username: Optional[str] = None, password: Optional[str] = None,
                    timeout: float = TIMEOUT) -> bool:
    """True if the broker answers an MQTT 3.1.1 CONNECT with a CONNACK that is not "unacceptable
    protocol version": it parsed it. Any refusal code counts (the protocol is not what it refused);
    an accepted probe is ended with DISCONNECT at once, so no Last Will is involved."""
    try:
        sock = open_connection(host, port, ctx, timeout)
    except (OSError, ValueError):
        return False
    try:
        sock.sendall(connect_packet(client_id, keepalive, "3.1.1", username, password))
        code = connack_code(read_packet(sock))
        if code == 0:
            sock.sendall(_DISCONNECT)
        return code is not None and code != _UNACCEPTABLE_PROTOCOL
    except OSError:
        return False
    finally:
        sock.close()
