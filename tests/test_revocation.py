"""Revoking a device: `pki revoke` and `pki crl` make DIR/crl.pem, a real mosquitto with `crlfile`
refuses the revoked device (and only it), and `doctor` says so in plain words."""

from __future__ import annotations

import argparse
import signal
import socket
import ssl
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator, List

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from tls12_only import doctor_without_tls13

from agent.mqtt import wire as mqtt_wire
from agent.tools.doctor import checkup as doctor
from agent.tools.pki import authority as pki
from agent.tools.pki import revocation
from agent.tools.pki.cli import add_pki_parser
from conftest import AgentProcess, Broker, Certs

UTC = timezone(timedelta(0))
REVOKED = "the broker says this device's certificate is revoked"


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="edison-agent")
    add_pki_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    """A CA with a broker certificate for 127.0.0.1 and two devices, alpha and beta."""
    d = tmp_path / "pki"
    pki.init_ca(d, name="Fleet CA")
    pki.issue_broker(d, "localhost", ips=["127.0.0.1"])
    pki.issue_device(d, "alpha")
    pki.issue_device(d, "beta")
    return d


def fleet_certs(d: Path) -> Certs:
    broker = (d / "localhost.crt", d / "localhost.key")
    return Certs(d, d / "ca.crt", *broker, *(broker * 6))


@pytest.fixture
def crl_broker(fleet: Path, tmp_path: Path) -> Iterator[Broker]:
    """mosquitto with `crlfile` DIR/crl.pem, an empty CRL to begin with (it will not start without one)."""
    revocation.refresh(fleet)
    b = Broker(tmp_path, fleet_certs(fleet), fleet / "localhost.crt", fleet / "localhost.key",
               crlfile=fleet / "crl.pem")
    b.start()
    yield b
    b.stop()


def device_config(d: Path, name: str, port: int, tmp_path: Path) -> Path:
    cfg = {"device": {"id": name},
           "mqtt": {"host": "127.0.0.1", "port": port, "reconnect": {"min_delay": 0.2, "max_delay": 0.5},
                    "tls": {"ca_file": str(d / "ca.crt"), "cert_file": str(d / ("%s.crt" % name)),
                            "key_file": str(d / ("%s.key" % name))}},
           "board": "simulated", "state_dir": str(tmp_path / "state"),
           "sensors": [{"name": "t", "type": "analog", "pin": 0, "interval": 1}]}
    path = tmp_path / ("%s.yaml" % name)
    path.write_text(yaml.safe_dump(cfg))
    return path


def doctor_checks(d: Path, name: str, port: int, tmp_path: Path, tls13: bool = True) -> List[doctor.Check]:
    """doctor's checks; tls13=False: run where OpenSSL has no TLS 1.3 (tests/tls12_only.py)."""
    config = device_config(d, name, port, tmp_path)
    return doctor.run_checks(config) if tls13 else doctor_without_tls13(config, tmp_path)


def live(checks: List[doctor.Check]) -> str:
    """The first failing live check's line, or 'ok'."""
    for c in checks:
        if c.check in ("tls handshake", "mqtt connect") and c.status == doctor.PROBLEM:
            return c.line()
    assert any(c.check == "mqtt connect" and c.status == doctor.OK for c in checks), \
        "\n".join(c.line() for c in checks)
    return "ok"


def reload(broker: Broker) -> None:
    """SIGHUP, as `systemctl reload mosquitto` sends it; returns once mosquitto has reloaded."""
    before = broker.log.read_text().count("Reloading config")
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while broker.log.read_text().count("Reloading config") == before:
        assert time.monotonic() < deadline, "mosquitto did not log its reload"
        time.sleep(0.05)


# --- against mosquitto -------------------------------------------------------------------


def test_a_revoked_device_is_refused_after_a_reload_and_the_others_still_connect(
        fleet: Path, crl_broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert live(doctor_checks(fleet, "alpha", crl_broker.port, tmp_path)) == "ok"

    assert run("pki", "revoke", str(fleet), "alpha", "--reason", "keyCompromise") == 0
    assert "crlfile %s/crl.pem" % fleet.resolve() in capsys.readouterr().out.splitlines()
    reload(crl_broker)

    # TLS 1.3 (the refusal comes after the handshake) and TLS 1.2 (it ends the handshake).
    for tls13 in (True, False):
        line = live(doctor_checks(fleet, "alpha", crl_broker.port, tmp_path, tls13=tls13))
        assert line.startswith("PROBLEM") and REVOKED in line, line
        assert "fix: issue this device a new certificate ('edison-agent pki issue-device --force DIR alpha'" in line
    assert live(doctor_checks(fleet, "beta", crl_broker.port, tmp_path)) == "ok"


def test_a_connection_open_before_the_reload_stays_open(fleet: Path, crl_broker: Broker):
    # What the printed advice rests on: a reload refuses the next connection, not the current one
    # (a restart is what cuts a connected device off).
    ctx = ssl.create_default_context(cafile=str(fleet / "ca.crt"))
    ctx.load_cert_chain(fleet / "alpha.crt", fleet / "alpha.key")
    with socket.create_connection(("127.0.0.1", crl_broker.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(mqtt_wire.connect_packet("alpha", 60))
        assert sock.recv(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted
        revocation.revoke(fleet, "alpha")
        reload(crl_broker)
        sock.sendall(b"\xc0\x00")  # PINGREQ
        assert sock.recv(2) == b"\xd0\x00"  # PINGRESP
    assert REVOKED in live(doctor_checks(fleet, "alpha", crl_broker.port, crl_broker.workdir))


def test_the_agent_logs_the_revocation_in_plain_words(fleet: Path, crl_broker: Broker, tmp_path: Path):
    revocation.revoke(fleet, "alpha")
    reload(crl_broker)
    agent = AgentProcess(device_config(fleet, "alpha", crl_broker.port, tmp_path))
    try:
        # Under TLS 1.3 an attempt may see only the close; a later one reads the alert.
        line = agent.wait_for("certificate is revoked", timeout=60)
    finally:
        agent.close()
    assert "ERROR" in line and REVOKED in line and "pki issue-device --force DIR NAME" in line, line


def test_a_device_reissued_after_revocation_connects_again(fleet: Path, crl_broker: Broker, tmp_path: Path):
    revocation.revoke(fleet, "alpha")
    reload(crl_broker)
    assert REVOKED in live(doctor_checks(fleet, "alpha", crl_broker.port, tmp_path))
    pki.issue_device(fleet, "alpha", force=True)  # a new serial, not on the list
    assert live(doctor_checks(fleet, "alpha", crl_broker.port, tmp_path)) == "ok"


def test_a_broker_requiring_tls_1_3_gets_no_tls_version_verdict_for_a_revoked_device(fleet: Path, tmp_path: Path):
    # doctor's TLS 1.2 second opinion fails there with "protocol version": not the reason for the close.
    revocation.revoke(fleet, "alpha")
    b = Broker(tmp_path, fleet_certs(fleet), fleet / "localhost.crt", fleet / "localhost.key",
               crlfile=fleet / "crl.pem")
    b.conf.write_text(b.conf.read_text().replace("tls_version tlsv1.2", "tls_version tlsv1.3"))
    b.start()
    try:
        line = live(doctor_checks(fleet, "alpha", b.port, tmp_path))
    finally:
        b.stop()
    assert REVOKED in line or "probably rejected the client certificate (unknown CA, revoked" in line, line
    assert "share no TLS version" not in line, line


def test_an_expired_crl_makes_mosquitto_refuse_every_device(fleet: Path, tmp_path: Path):
    # Why `pki crl` must run before nextUpdate: OpenSSL then rejects every client certificate.
    ca = x509.load_pem_x509_certificate((fleet / "ca.crt").read_bytes())
    key = load_pem_private_key((fleet / "ca.key").read_bytes(), password=None)
    now = datetime.now(UTC)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
           .last_update(now - timedelta(days=2)).next_update(now - timedelta(days=1))
           .add_extension(x509.CRLNumber(1), critical=False)
           .sign(key, hashes.SHA256()))  # type: ignore[arg-type]
    (fleet / "crl.pem").write_bytes(crl.public_bytes(Encoding.PEM))
    b = Broker(tmp_path, fleet_certs(fleet), fleet / "localhost.crt", fleet / "localhost.key",
               crlfile=fleet / "crl.pem")
    b.start()
    try:
        line = live(doctor_checks(fleet, "beta", b.port, tmp_path, tls13=False))
    finally:
        b.stop()
    assert line.startswith("PROBLEM") and "the broker's CRL is past its nextUpdate" in line, line


# --- the CRL itself --------------------------------------------------------------------------


def load_crl(d: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl((d / "crl.pem").read_bytes())


def serial(d: Path, name: str) -> int:
    return x509.load_pem_x509_certificate((d / ("%s.crt" % name)).read_bytes()).serial_number


def test_the_crl_is_signed_by_the_ca_and_lists_the_serial_with_its_reason(fleet: Path):
    done = revocation.revoke(fleet, "alpha", reason="keyCompromise")
    crl = load_crl(fleet)
    ca = x509.load_pem_x509_certificate((fleet / "ca.crt").read_bytes())
    assert crl.issuer == ca.subject
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    entry = crl.get_revoked_certificate_by_serial_number(serial(fleet, "alpha"))
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.key_compromise
    assert crl.get_revoked_certificate_by_serial_number(serial(fleet, "beta")) is None
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski
    assert timedelta(days=29) < done.crl.next_update - datetime.now(UTC) <= timedelta(days=30)
    assert oct((fleet / "crl.pem").stat().st_mode & 0o777) == "0o644"


def test_revoking_twice_changes_nothing_and_says_so(fleet: Path, capsys: pytest.CaptureFixture[str]):
    assert run("pki", "revoke", str(fleet), "alpha") == 0
    before = (fleet / "crl.pem").read_bytes()
    capsys.readouterr()
    assert run("pki", "revoke", str(fleet), "alpha") == 0
    out = capsys.readouterr().out
    assert out.startswith("alpha (") and "was already revoked on" in out and "crl.pem is unchanged" in out, out
    assert (fleet / "crl.pem").read_bytes() == before


def test_a_second_revocation_keeps_the_first_and_numbers_the_crl_up(fleet: Path):
    revocation.revoke(fleet, "alpha")
    second = revocation.revoke(fleet, "beta", reason="superseded")
    assert second.crl.number == 2
    assert second.crl.serials == {serial(fleet, "alpha"), serial(fleet, "beta")}


@pytest.mark.parametrize("argv", [["crl"], ["revoke", "--refresh"]])
def test_refresh_bumps_next_update_and_number_and_keeps_the_entries(fleet: Path, argv: List[str],
                                                                    capsys: pytest.CaptureFixture[str]):
    first = revocation.revoke(fleet, "alpha", days=1)
    assert run("pki", argv[0], str(fleet), *argv[1:], "--days", "60") == 0
    crl = load_crl(fleet)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == first.crl.number + 1
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - first.crl.next_update > timedelta(days=58)
    assert [e.serial_number for e in crl] == [serial(fleet, "alpha")]
    out = capsys.readouterr().out
    assert "wrote %s/crl.pem: CRL number 2, 1 revoked, next update" % fleet in out
    assert "edison-agent pki crl %s" % fleet in out  # the reminder to refresh it again


def test_list_shows_revoked_certificates_and_the_crl(fleet: Path, capsys: pytest.CaptureFixture[str]):
    revocation.revoke(fleet, "alpha")
    assert run("pki", "list", str(fleet)) == 0
    lines = capsys.readouterr().out.splitlines()
    alpha = next(line for line in lines if line.startswith("alpha.crt:"))
    beta = next(line for line in lines if line.startswith("beta.crt:"))
    assert "(REVOKED)" in alpha, alpha
    assert "REVOKED" not in beta and "days left" in beta, beta
    assert lines[-1].startswith("crl.pem: CRL number 1, 1 revoked, next update"), lines[-1]


@pytest.mark.parametrize(("argv", "message"), [
    (["nosuch"], "nosuch.crt: no such certificate; 'edison-agent pki list"),
    (["ca"], "ca.crt: is the CA; a CA cannot revoke itself"),
    (["../alpha"], "device name '../alpha': use letters, digits"),
    (["alpha", "--refresh"], "--refresh revokes nothing: drop NAME"),
    ([], "give the NAME of the device to revoke"),
])
def test_revoke_refuses_with_one_line(fleet: Path, argv: List[str], message: str,
                                      capsys: pytest.CaptureFixture[str]):
    assert run("pki", "revoke", str(fleet), *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("edison-agent pki: ") and message in err and err.count("\n") == 1, err
    assert not (fleet / "crl.pem").exists()


def test_a_certificate_from_another_ca_cannot_be_revoked_here(fleet: Path, tmp_path: Path):
    other = tmp_path / "other"
    pki.init_ca(other)
    stranger = pki.issue_device(other, "gamma")
    (fleet / "gamma.crt").write_bytes(stranger.cert_file.read_bytes())
    with pytest.raises(pki.PkiError, match="gamma.crt: was not issued by .*ca.crt"):
        revocation.revoke(fleet, "gamma")


def test_a_crl_from_a_replaced_ca_is_refused_rather_than_extended(fleet: Path):
    revocation.revoke(fleet, "alpha")
    pki.init_ca(fleet, force=True)
    with pytest.raises(pki.PkiError, match=r"crl.pem: not signed by .*ca.crt \(was the CA replaced\?\)"):
        revocation.refresh(fleet)


def test_the_mosquitto_listener_gains_a_crlfile_line(fleet: Path):
    block = pki.mosquitto_listener(fleet / "ca.crt", fleet / "localhost.crt", fleet / "localhost.key",
                                   crlfile=fleet / "crl.pem").splitlines()
    assert block[-1] == "crlfile %s" % (fleet / 'crl.pem').resolve()
    assert not any(line.startswith("crlfile") for line in pki.mosquitto_listener(
        fleet / "ca.crt", fleet / "localhost.crt", fleet / "localhost.key").splitlines())
