"""A tiny MQTT 3.1.1-only broker over mutual TLS, for the two behaviours Mosquitto cannot be set to
show (issue 19): RabbitMQ 3.x closes the connection on an MQTT 5 CONNECT instead of answering it,
and closes it on a PUBLISH to a topic the user may not write. It answers CONNECT (level 4), QoS 1
PUBLISH, SUBSCRIBE, PINGREQ and DISCONNECT; nothing else. Not a broker for anything but that."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path
from typing import AbstractSet, List, Tuple

from agent.mqtt.wire import read_packet


def _topic_of(packet: bytes) -> Tuple[str, int]:
    """A PUBLISH's topic and the offset just past it."""
    header = 1 + next(i for i, b in enumerate(packet[1:5], 1) if not b & 0x80)
    length = int.from_bytes(packet[header:header + 2], "big")
    return packet[header + 2:header + 2 + length].decode(), header + 2 + length


class MQTT311Broker:
    def __init__(self, ca: Path, cert: Path, key: Path, refused_topics: AbstractSet[str] = frozenset(),
                 connack: int = 0) -> None:
        self.refused_topics = set(refused_topics)
        # The CONNACK return code for a 3.1.1 CONNECT: 4 is RabbitMQ's answer for a CN with no user.
        self.connack = connack
        self.connect_levels: List[int] = []
        # (topic, payload, retained)
        self.published: List[Tuple[str, bytes, bool]] = []
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(str(cert), str(key))
        self._ctx.load_verify_locations(str(ca))
        self._ctx.verify_mode = ssl.CERT_REQUIRED
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            with self._ctx.wrap_socket(raw, server_side=True) as sock:
                sock.settimeout(30)
                self._session(sock)
        except (OSError, ValueError, StopIteration):
            pass
        finally:
            raw.close()

    def _session(self, sock: ssl.SSLSocket) -> None:
        connect = read_packet(sock)
        header = 1 + next(i for i, b in enumerate(connect[1:5], 1) if not b & 0x80)
        level = connect[header + 6]
        with self._lock:
            self.connect_levels.append(level)
        if connect[0] != 0x10 or level != 4:
            return  # RabbitMQ 3.x on an MQTT 5 CONNECT: the connection just ends
        sock.sendall(b"\x20\x02\x00" + bytes([self.connack]))
        if self.connack:
            return
        while True:
            packet = read_packet(sock)
            if not packet or packet[0] == 0xE0:
                return
            kind = packet[0] & 0xF0
            if kind == 0x30:
                topic, end = _topic_of(packet)
                if topic in self.refused_topics:
                    return  # RabbitMQ: a publish the user's topic permissions refuse ends the connection
                qos = (packet[0] >> 1) & 3
                with self._lock:
                    self.published.append((topic, packet[end + 2 if qos else end:], bool(packet[0] & 1)))
                if qos:
                    sock.sendall(b"\x40\x02" + packet[end:end + 2])
            elif kind == 0x80:
                header = 1 + next(i for i, b in enumerate(packet[1:5], 1) if not b & 0x80)
                sock.sendall(b"\x90\x03" + packet[header:header + 2] + b"\x01")
            elif kind == 0xC0:
                sock.sendall(b"\xd0\x00")
