"""agent/mqtt/problems.py: what goes wrong with the broker, as types; whether the session's trouble
changed is decided by type and code, never by comparing the texts logged."""

from __future__ import annotations

import ssl

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.errors import AgentError, BrokerRefusal, CertificateError
from agent.mqtt import problems


def test_a_local_tls_setup_problem_is_a_certificate_error_naming_its_key() -> None:
    error = problems.TLSSetupError("mqtt.tls.ca_file", "/etc/ca.crt holds no usable PEM CA certificate")
    assert isinstance(error, CertificateError) and isinstance(error, AgentError)
    assert error.key == "mqtt.tls.ca_file"
    assert error.line == "mqtt.tls.ca_file: /etc/ca.crt holds no usable PEM CA certificate"


def test_a_refused_connack_carries_its_reason_code_as_a_value() -> None:
    code = ReasonCode(PacketTypes.CONNACK, identifier=0x87)
    refused = problems.ConnectRefused.from_paho(code, None, v5=True)
    assert isinstance(refused.refusal, BrokerRefusal) and refused.code == 0x87
    assert refused.fields == {"MQTT_RC": "Not authorized"}
    assert str(refused).startswith("broker refused the connection (reason code 135 (0x87), not authorized")
    # On MQTT 3.1.1 paho maps return code 5 to 0x87: the line says CONNACK 5.
    v311 = problems.ConnectRefused.from_paho(code, None, v5=False)
    assert str(v311).startswith("broker refused the connection (CONNACK 5): not authorized")
    assert v311.same_state(refused) and not v311.same_state(
        problems.ConnectRefused.from_paho(ReasonCode(PacketTypes.CONNACK, identifier=0x86), None, v5=False))


def test_a_close_after_the_handshake_is_the_same_trouble_as_a_client_certificate_alert() -> None:
    alert = problems.TLSAlert("unknown ca", "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca")
    assert alert.about_our_certificate and alert.fields["TLS_ERROR"].startswith("[SSL")
    closed = problems.RejectedAfterHandshake(None)
    assert closed.same_state(alert)
    assert str(closed) == problems.REJECTED_AFTER_HANDSHAKE
    # Not the other way round, and not after an alert about the TLS versions.
    assert not alert.same_state(closed)
    assert not closed.same_state(problems.TLSAlert("protocol version", "tlsv1 alert protocol version"))
    assert closed.same_state(problems.RejectedAfterHandshake("EOF"))


def test_the_same_connect_failure_twice_is_one_state_and_another_kind_is_a_new_one() -> None:
    refused = problems.ConnectFailed(ConnectionRefusedError(111, "Connection refused"), "gw")
    assert refused.same_state(problems.ConnectFailed(ConnectionRefusedError(111, "Connection refused"), "gw"))
    assert not refused.same_state(problems.ConnectFailed(TimeoutError("timed out"), "gw"))
    assert not refused.same_state(None)
    # With mqtt.hosts, the same failure at the next broker is a new line.
    assert not refused.same_state(problems.ConnectFailed(ConnectionRefusedError(111, "Connection refused"), "gw2"))
    verify = problems.ConnectFailed(ssl.SSLError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] verify failed"), "gw")
    assert "CERTIFICATE_VERIFY_FAILED" in verify.fields["TLS_ERROR"]
    assert str(refused).startswith("connection refused by gw")


def test_alerts_are_named_whatever_the_spelling() -> None:
    assert problems.alert_of("SSLV3_ALERT_CERTIFICATE_REVOKED") == "certificate revoked"
    assert problems.describe_alert("tlsv1 alert unknown ca") in problems.CLIENT_CERT_REFUSALS
    assert problems.alert_of("connection reset") is None
