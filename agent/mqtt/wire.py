"""The few MQTT packets `edison-agent doctor` (and the session's one-off protocol probe) speak by
hand, below paho, so that they can say exactly where a connection stops: CONNECT out, one whole
packet in, a CONNACK's ReasonString, a QoS 1 PUBLISH and its PUBACK."""

from __future__ import annotations

import socket
from typing import Optional


def _varint(size: int) -> bytes:
    out = b""
    while True:
        byte, size = size % 128, size // 128
        out += bytes([byte | (0x80 if size else 0)])
        if not size:
            return out


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


def connect_packet(client_id: str, keepalive: int, protocol: str = "3.1.1",
                   username: Optional[str] = None, password: Optional[str] = None) -> bytes:
    """CONNECT with a clean session/start and no Last Will; MQTT 5's with no properties."""
    # MQTT 3.1.1 allows a password only with a user name (section 3.1.2.9).
    if username is None:
        password = None
    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    v5 = protocol == "5"
    body = (b"\x00\x04MQTT" + bytes([5 if v5 else 4, flags]) + keepalive.to_bytes(2, "big")
            + (b"\x00" if v5 else b"") + _string(client_id) + (_string(username) if username is not None else b"")
            + (_string(password) if password is not None else b""))
    return b"\x10" + _varint(len(body)) + body


def publish_packet(topic: str, payload: bytes, packet_id: int, protocol: str = "3.1.1") -> bytes:
    """A QoS 1, not retained PUBLISH (MQTT 5's with no properties)."""
    body = _string(topic) + packet_id.to_bytes(2, "big") + (b"\x00" if protocol == "5" else b"") + payload
    return b"\x32" + _varint(len(body)) + body


def puback_reason(packet: bytes, packet_id: int) -> Optional[int]:
    """The reason code of `packet` if it is the PUBACK for `packet_id` (0 when it has none, as in
    MQTT 3.1.1 and MQTT 5's short form), else None."""
    if len(packet) < 4 or packet[0] != 0x40 or int.from_bytes(packet[2:4], "big") != packet_id:
        return None
    return packet[4] if len(packet) > 4 and packet[1] > 2 else 0


def connack_code(packet: bytes) -> Optional[int]:
    """A CONNACK's return (3.1.1) or reason (5) code; None if `packet` is no CONNACK."""
    if len(packet) < 4 or packet[0] != 0x20:
        return None
    header = 1 + next((i for i, b in enumerate(packet[1:5], 1) if not b & 0x80), 1)
    return packet[header + 1] if len(packet) > header + 1 else None


# CONNACK property identifiers and how long their values are (MQTT 5, section 3.2.2.3):
# -1 a UTF-8 string or binary data, -2 a string pair, else a fixed size in bytes.
_CONNACK_PROPERTIES = {0x11: 4, 0x12: -1, 0x13: 2, 0x15: -1, 0x16: -1, 0x1A: -1, 0x1C: -1, 0x1F: -1,
                       0x21: 2, 0x22: 2, 0x24: 1, 0x25: 1, 0x26: -2, 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1}
REASON_STRING = 0x1F


def reason_string(properties: bytes) -> Optional[str]:
    """The ReasonString among a CONNACK's properties; None if absent or the block is not understood."""
    i = 0
    while i < len(properties):
        ident = properties[i]
        size = _CONNACK_PROPERTIES.get(ident)
        i += 1
        if size is None:
            return None
        if size > 0:
            i += size
            continue
        for _ in range(-size):
            length = int.from_bytes(properties[i:i + 2], "big")
            if ident == REASON_STRING:
                return properties[i + 2:i + 2 + length].decode("utf-8", errors="replace")
            i += 2 + length
    return None


def read_packet(sock: socket.socket) -> bytes:
    """One MQTT packet (its fixed header included), or what arrived before the connection closed."""
    data = b""

    def more(count: int) -> bool:
        nonlocal data
        want = len(data) + count
        while len(data) < want:
            chunk = sock.recv(want - len(data))
            if not chunk:
                return False
            data += chunk
        return True

    if not more(1):
        return data
    remaining, shift = 0, 0
    while True:
        if not more(1):
            return data
        remaining |= (data[-1] & 0x7F) << shift
        shift += 7
        if not data[-1] & 0x80 or shift > 21:
            break
    more(remaining)
    return data
