"""What a cloud IoT service accepts that a Mosquitto would not mind: `check-config` warnings per mqtt.target.

Warnings, not errors: a service's limits change, and an account can raise some of them. Each rule
cites the page it comes from. Wildcards in publish topics and QoS 2 are refused for every target
by the config loader already.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

from agent.config.checks import warnings_for as config_warnings
from agent.config.sections import AZURE_TOPIC, AgentConfig
from agent.sampling.reading import OUT_OF_RANGE, Reading, encode_telemetry

KIB = 1024
AWS_ALPN = "x-amzn-mqtt-ca"
AZURE_API_VERSION = "2021-04-12"


def estimated_payload(cfg: AgentConfig, readings: Optional[int] = None) -> int:
    """Bytes of the largest telemetry message this config can produce: batch.max_readings (or
    `readings`) readings of its longest sensor name and unit, each with a long value and an
    out-of-range flag. Error readings may carry a longer message; this is an estimate, not a bound."""
    names = [c.name for s in cfg.sensors for c in s.channels] or ["sensor"]
    units = [c.unit or "" for s in cfg.sensors for c in s.channels] or [""]
    worst = Reading(seq=10 ** 12, ts=4102444800.123, sensor=max(names, key=len), value=-123456.789012,
                    unit=max(units, key=len) or None, quality=OUT_OF_RANGE)
    count = cfg.batch.max_readings if readings is None else readings
    return len(encode_telemetry(cfg.device_id, [worst] * count))


def _payload_warning(cfg: AgentConfig, limit_kib: int, service: str) -> List[str]:
    size = estimated_payload(cfg)
    if size <= limit_kib * KIB:
        return []
    envelope = estimated_payload(cfg, 0)
    # Each reading after the first adds itself and a comma.
    per_reading = estimated_payload(cfg, 2) - estimated_payload(cfg, 1)
    fitting = max(1, (limit_kib * KIB - envelope + 1) // per_reading)
    return ["a telemetry message may reach ~%d KiB (batch.max_readings %d x ~%d bytes) and %s refuses messages "
            "over %d KiB: set batch.max_readings to %d or less" % (size // KIB, cfg.batch.max_readings, per_reading,
                                                                 service, limit_kib, fitting)]


def aws_iot(cfg: AgentConfig) -> List[str]:
    """AWS IoT Core's rules for an X.509 device."""
    m = cfg.mqtt
    warnings: List[str] = []
    # Policies use the thing-name policy variable, matched against the client id:
    # https://docs.aws.amazon.com/iot/latest/developerguide/thing-policy-variables.html
    if m.client_id != cfg.device_id:
        warnings.append("mqtt.client_id %r is not device.id %r: AWS IoT Core policies expect the client id to be "
                        "the thing name (iot:Connection.Thing.ThingName): set device.id to the thing name and "
                        "remove mqtt.client_id" % (m.client_id, cfg.device_id))
    # Payload 128 KB, topic 256 bytes with at most 7 slashes, keep alive 30-1200 s:
    # https://docs.aws.amazon.com/general/latest/gr/iot-core.html#message-broker-limits
    warnings += _payload_warning(cfg, 128, "AWS IoT Core")
    for key, topic in (("mqtt.topic", m.topic), ("mqtt.status_topic", m.status_topic),
                       ("mqtt.health_topic", m.health_topic)):
        if len(topic.encode("utf-8")) > 256:
            warnings.append("%s is %d bytes: AWS IoT Core refuses topics longer than 256 bytes"
                            % (key, len(topic.encode("utf-8"))))
        if topic.count("/") > 7:
            warnings.append("%s %r has %d '/': AWS IoT Core allows at most 7 in a topic"
                            % (key, topic, topic.count("/")))
    if not 30 <= m.keepalive <= 1200:
        warnings.append("mqtt.keepalive %d is outside AWS IoT Core's 30-1200 s: it uses the nearest bound instead"
                        % m.keepalive)
    # Port 8883, or 443 with ALPN x-amzn-mqtt-ca, for MQTT with an X.509 client certificate:
    # https://docs.aws.amazon.com/iot/latest/developerguide/protocols.html
    alpn = m.tls.alpn if m.tls is not None else ()
    if m.tls is None or m.tls.cert_file is None:
        warnings.append("AWS IoT Core accepts MQTT only over TLS with a client certificate: set mqtt.tls with "
                        "cert_file and key_file (the thing's certificate) and ca_file (Amazon Root CA 1)")
    if m.port == 443 and AWS_ALPN not in alpn:
        warnings.append("mqtt.port 443 needs mqtt.tls.alpn: [%s]: without it AWS IoT Core expects HTTPS or "
                        "WebSockets on that port, not MQTT with a certificate" % AWS_ALPN)
    elif m.port not in (8883, 443):
        warnings.append("mqtt.port %d: AWS IoT Core takes MQTT on 8883, or on 443 with mqtt.tls.alpn: [%s]"
                        % (m.port, AWS_ALPN))
    # Retained messages are supported, so the status topic's online/offline contract holds;
    # QoS 2 is not, and the loader allows only 0 and 1:
    # https://docs.aws.amazon.com/iot/latest/developerguide/mqtt.html#mqtt-differences
    return warnings


def azure_iot_hub(cfg: AgentConfig) -> List[str]:
    """Azure IoT Hub's MQTT device endpoint, which is not a general broker.

    Topics, user name, QoS, retain, ports and the 256 KB message size:
    https://learn.microsoft.com/azure/iot/iot-mqtt-connect-to-iot-hub
    """
    m = cfg.mqtt
    warnings: List[str] = []
    events = AZURE_TOPIC.format(device_id=cfg.device_id)
    if m.client_id != cfg.device_id:
        warnings.append("mqtt.client_id %r is not device.id %r: IoT Hub requires the client id to be the device id "
                        "registered in the hub: set device.id to it and remove mqtt.client_id"
                        % (m.client_id, cfg.device_id))
    # A property bag may follow the events topic (devices/{id}/messages/events/{property_bag}).
    if not m.topic.startswith(events):
        warnings.append("mqtt.topic %r: IoT Hub takes device-to-cloud messages only on %r and closes the "
                        "connection on any other topic: remove mqtt.topic (the target's default is that topic)"
                        % (m.topic, events))
    if not m.status_topic.startswith(events):
        warnings.append("mqtt.status_topic %r: IoT Hub refuses it (only %r is allowed, for the Last Will too): "
                        "set mqtt.status_topic: %r, so status arrives as device-to-cloud messages"
                        % (m.status_topic, events, AZURE_TOPIC + "kind=status"))
    if m.health_topic and not m.health_topic.startswith(events):
        warnings.append("mqtt.health_topic %r: IoT Hub refuses it (only %r is allowed): set mqtt.health_topic: %r"
                        % (m.health_topic, events, AZURE_TOPIC + "kind=health"))
    # The agent always retains its status; IoT Hub keeps no retained message:
    warnings.append("IoT Hub does not support retained messages: the status topic's contract (a retained "
                    "'online', 'offline' as the Last Will) cannot hold there; watch the hub's device "
                    "connected/disconnected events for a device's state instead")
    expected = "%s/%s/?api-version=" % (m.host, cfg.device_id)
    if m.username is None or not m.username.startswith(expected):
        warnings.append("mqtt.username %r: IoT Hub expects '{host}/{device_id}/?api-version=%s' (%s%s): remove "
                        "mqtt.username (the target's default is that format)"
                        % (m.username, AZURE_API_VERSION, expected, AZURE_API_VERSION))
    warnings += _payload_warning(cfg, 256, "IoT Hub")
    # MQTT 5 was a preview on preview-mode hubs only, and is deprecated:
    # https://learn.microsoft.com/azure/iot/iot-mqtt-5-preview
    if m.protocol == "5":
        warnings.append("mqtt.protocol 5: IoT Hub speaks MQTT 3.1.1 (its MQTT 5 support was a preview, now "
                        "deprecated): set mqtt.protocol: \"3.1.1\"")
    if m.port == 443:
        warnings.append("mqtt.port 443: IoT Hub serves MQTT on 443 only over WebSockets, which this agent does "
                        "not speak: use 8883")
    elif m.port != 8883:
        warnings.append("mqtt.port %d: IoT Hub takes MQTT on 8883" % m.port)
    if m.tls is None or m.tls.cert_file is None:
        warnings.append("IoT Hub accepts no connection without TLS, and this agent authenticates with an X.509 "
                        "certificate: set mqtt.tls with cert_file and key_file (the device's certificate)")
    return warnings


def generic(cfg: AgentConfig) -> List[str]:
    return []


RULES: Dict[str, Callable[[AgentConfig], List[str]]] = {
    "generic": generic,
    "aws-iot": aws_iot,
    "azure-iot-hub": azure_iot_hub,
}


def warnings_for(cfg: AgentConfig) -> List[str]:
    """What check-config prints and the daemon logs at start as `warning:` lines: what the config allows
    but probably does not mean, then the target service's documented limits it breaks."""
    return config_warnings(cfg) + RULES[cfg.mqtt.target](cfg)
