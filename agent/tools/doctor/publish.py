"""`edison-agent doctor`'s publish checks: each topic the agent publishes to gets one QoS 1 publish,
and the broker's answer is the verdict (a PUBACK, an MQTT 5 PUBACK reason code, or the connection
closed, as RabbitMQ does for a topic its permissions refuse).

The probe is never retained, so it cannot replace a device's retained status or health document,
and it says what it is: {"device": ID, "probe": true, "readings": []}. A consumer sees it on the
live topic once and can ignore it by its "probe" key (docs/troubleshooting.md says so)."""

from __future__ import annotations

import json
import socket
import ssl
from typing import List, Optional, Tuple

from agent.mqtt import broker_probe, problems
from agent.mqtt.wire import connack_code, connect_packet, puback_reason, publish_packet, read_packet
from agent.tools.doctor.files import OK, PROBLEM, SKIPPED, Check, Target

_DISCONNECT = b"\xe0\x00"
# How to let a device publish to a topic, on the brokers the agent is used with.
ALLOW_TOPIC = ("let this identity publish to %s: Mosquitto acl_file ('edison-agent pki acl'), RabbitMQ "
               "topic permissions on amq.topic (routing key with '.' for '/': 'rabbitmqctl "
               "set_topic_permissions'), EMQX authorization rules, AWS IoT policy iot:Publish")


def probe_payload(device_id: str) -> bytes:
    return json.dumps({"device": device_id, "probe": True, "readings": []}, separators=(",", ":")).encode()


def publish_checks(t: Target, sock: socket.socket, ctx: Optional[ssl.SSLContext], checks: List[Check]) -> None:
    """One check per topic in t.topics, on `sock` (past its CONNACK); a refusal that closes the
    connection is followed by a new one for the next topic. Ends with DISCONNECT (no Last Will)."""
    current: Optional[socket.socket] = sock
    for packet_id, (name, topic) in enumerate(t.topics, 1):
        if current is None:
            current = _connect_again(t, ctx)
            if current is None:
                checks.append(Check("publish " + name, SKIPPED, "%s not tried: the broker did not accept a new "
                                    "connection after the last refusal" % topic))
                continue
        check, open_still = _publish_one(t, current, name, topic, packet_id)
        checks.append(check)
        if not open_still:
            if current is not sock:
                current.close()
            current = None
    if current is not None:
        try:
            current.sendall(_DISCONNECT)
        except OSError:
            pass
        if current is not sock:
            current.close()


def _publish_one(t: Target, sock: socket.socket, name: str, topic: str, packet_id: int) -> Tuple[Check, bool]:
    """The verdict for one topic, and whether the connection is still open."""
    what = "publish " + name
    try:
        sock.sendall(publish_packet(topic, probe_payload(t.client_id), packet_id, t.protocol))
        while True:
            reply = read_packet(sock)
            if len(reply) < 2:
                break
            code = puback_reason(reply, packet_id)
            if code is not None:
                return _verdict(t, what, topic, code), True
    except socket.timeout:
        return Check(what, PROBLEM, "no PUBACK for a QoS 1 publish to %s within %g s" % (topic, broker_probe.TIMEOUT),
                     "check the broker's log"), False
    except OSError:
        pass
    return Check(what, PROBLEM, "the broker closed the connection right after our QoS 1 publish to %s: it "
                 "probably refused the topic (ACL, topic permission)" % topic, ALLOW_TOPIC % topic), False


def _verdict(t: Target, what: str, topic: str, code: int) -> Check:
    if code >= 0x80:
        return Check(what, PROBLEM, "the broker refused our publish to %s (MQTT 5 PUBACK %s)"
                     % (topic, problems.describe_reason_code(code)), ALLOW_TOPIC % topic)
    if t.protocol == "5":
        return Check(what, OK, "%s accepted (PUBACK %s)" % (topic, problems.describe_reason_code(code)))
    # Mosquitto acknowledges a 3.1.1 publish its ACL drops; only MQTT 5's PUBACK carries the refusal.
    return Check(what, OK, "%s accepted (an MQTT 3.1.1 PUBACK: Mosquitto sends one even for a publish its "
                 "ACL drops, where MQTT 5's PUBACK would carry the refusal)" % topic)


def _connect_again(t: Target, ctx: Optional[ssl.SSLContext]) -> Optional[socket.socket]:
    assert t.host is not None
    try:
        sock = broker_probe.open_connection(t.host, t.port, ctx)
    except (OSError, ValueError):
        return None
    try:
        sock.settimeout(broker_probe.TIMEOUT)
        sock.sendall(connect_packet(t.client_id, t.keepalive, t.protocol, t.username, t.mqtt_password))
        if connack_code(read_packet(sock)) == 0:
            return sock
    except OSError:
        pass
    sock.close()
    return None


