"""The retained status payloads, the MQTT 5 properties of what the session publishes, and what a
live connection negotiated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ONLINE = b"online"
OFFLINE = b"offline"
# MQTT 5 ContentType of what we publish: consumers (and cloud rules engines) need not sniff.
JSON = "application/json"
TEXT = "text/plain"


@dataclass(frozen=True)
class ConnectionInfo:
    tls_version: Optional[str]
    cipher: Optional[str]
    nodelay: bool
    resumed: bool = False
    # The ALPN protocol the broker chose (None: none offered or none agreed).
    alpn: Optional[str] = None
    protocol: str = "3.1.1"
    # CONNACK's session-present flag: the broker had kept this client's session.
    session_present: bool = False

    def describe(self) -> str:
        if not self.tls_version:
            text = "plain MQTT"
        else:
            text = "%s %s%s" % (self.tls_version, self.cipher, ", resumed TLS session" if self.resumed else "")
        if self.alpn:
            text += ", ALPN %s" % self.alpn
        if self.protocol == "5":
            text += ", MQTT 5, %s" % ("session present" if self.session_present else "new session")
        return text


class MessageProperties:
    """MQTT 5 properties of what we publish (None on 3.1.1): the same few combinations every
    time, built once, not per reading (paho only reads them)."""

    def __init__(self, v5: bool, message_expiry: Optional[int]) -> None:
        self._v5 = v5
        self._message_expiry = message_expiry
        self._cache: Dict[Tuple[int, str, bool], Properties] = {}

    def get(self, packet_type: int, content_type: str, expires: bool) -> Optional[Properties]:
        if not self._v5:
            return None
        key = (packet_type, content_type, expires)
        properties = self._cache.get(key)
        if properties is None:
            properties = Properties(packet_type)  # type: ignore[no-untyped-call]
            properties.ContentType = content_type
            if expires and self._message_expiry is not None:
                properties.MessageExpiryInterval = self._message_expiry
            self._cache[key] = properties
        return properties

    def will(self) -> Optional[Properties]:
        return self.get(PacketTypes.WILLMESSAGE, TEXT, expires=False)

    def status(self, content_type: str) -> Optional[Properties]:
        """The retained status never expires."""
        return self.get(PacketTypes.PUBLISH, content_type, expires=False)

