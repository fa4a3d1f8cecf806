"""The certificate tool, checked the way the broker and the agent will use its output:
real files, real TLS handshakes over loopback sockets, and (when installed) a real
Mosquitto."""

from __future__ import annotations

import os
import ssl
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from pki_testing import ext, handshake, load, mode

from agent.tools.pki.authority import (
    Issued,
    PkiError,
    init_ca,
    issue_broker,
    issue_device,
    load_certificate_info,
)

REPO = Path(__file__).resolve().parent.parent
UTC = timezone(timedelta(0))  # datetime.UTC arrived in 3.11; ruff flags timezone.utc




# --- the CA ---------------------------------------------------------------------------


def test_ca_is_self_signed_with_the_extensions_strict_verification_needs(tmp_path: Path):
    issued = init_ca(tmp_path / "pki", name="Fleet CA", days=100)
    assert issued == Issued(tmp_path / "pki" / "ca.crt", tmp_path / "pki" / "ca.key")
    cert = load(issued.cert_file)

    basic = ext(cert, x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca
    assert basic.value.path_length == 0
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert usage.value.digital_signature
    ski = ext(cert, x509.SubjectKeyIdentifier).value
    assert ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ski.digest

    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    info = load_certificate_info(issued.cert_file)
    assert info.subject_cn == info.issuer_cn == "Fleet CA"
    assert info.is_ca
    assert info.not_after - datetime.now(UTC) > timedelta(days=99)


def test_creates_a_missing_directory_private(tmp_path: Path):
    init_ca(tmp_path / "a" / "pki")
    assert mode(tmp_path / "a" / "pki") == 0o700


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_keys_are_0600_and_certificates_0644_whatever_the_umask(tmp_path: Path, umask: int):
    old = os.umask(umask)
    try:
        ca = init_ca(tmp_path)
        broker = issue_broker(tmp_path, "localhost")
        device = issue_device(tmp_path, "edison-01", passphrase=b"sekrit")
    finally:
        os.umask(old)
    for issued in (ca, broker, device):
        assert mode(issued.key_file) == 0o600
        assert mode(issued.cert_file) == 0o644


def test_refuses_to_overwrite_and_replaces_with_force(tmp_path: Path):
    first = init_ca(tmp_path)
    before = first.cert_file.read_bytes()

    with pytest.raises(PkiError, match="ca.crt: already exists; use --force"):
        init_ca(tmp_path)
    assert first.cert_file.read_bytes() == before

    again = init_ca(tmp_path, force=True)
    assert again.cert_file.read_bytes() != before
    assert mode(again.key_file) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "ca.key"]


def test_refuses_to_overwrite_a_device_key_even_if_its_certificate_is_gone(ca_dir: Path):
    device = issue_device(ca_dir, "edison-01")
    device.cert_file.unlink()
    key = device.key_file.read_bytes()

    with pytest.raises(PkiError, match=r"edison-01\.key: already exists; use --force"):
        issue_device(ca_dir, "edison-01")
    assert device.key_file.read_bytes() == key
    assert not device.cert_file.exists()

    issue_device(ca_dir, "edison-01", force=True)
    assert device.key_file.read_bytes() != key


def test_a_symlink_planted_at_a_key_name_is_refused_and_replaced_with_force_never_written_through(
        ca_dir: Path, tmp_path: Path):
    secret = tmp_path / "secret"
    secret.write_text("someone else's file\n")
    secret.chmod(0o600)
    device = issue_device(ca_dir, "edison-01")
    device.key_file.unlink()
    device.key_file.symlink_to(secret)

    with pytest.raises(PkiError, match="already exists; use --force"):
        issue_device(ca_dir, "edison-01")
    issue_device(ca_dir, "edison-01", force=True)
    assert (secret.read_text(), mode(secret)) == ("someone else's file\n", 0o600)
    assert not device.key_file.is_symlink() and mode(device.key_file) == 0o600
    assert sorted(p.name for p in ca_dir.iterdir()) == ["ca.crt", "ca.key", "edison-01.crt", "edison-01.key"]


# --- broker certificates ---------------------------------------------------------------


def test_broker_certificate_names_the_host_and_its_addresses(ca_dir: Path):
    broker = issue_broker(ca_dir, "localhost", ips=["127.0.0.1"])
    assert broker.cert_file == ca_dir / "localhost.crt"
    info = load_certificate_info(broker.cert_file)
    assert info.sans == ("DNS:localhost", "IP:127.0.0.1")
    assert info.subject_cn == "localhost"
    assert info.issuer_cn == "Test CA"
    assert not info.is_ca
    cert = load(broker.cert_file)
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    cert.verify_directly_issued_by(load(ca_dir / "ca.crt"))


def test_broker_named_by_an_address_gets_an_ip_san_not_a_dns_one(ca_dir: Path):
    broker = issue_broker(ca_dir, "127.0.0.1", ips=["127.0.0.1", "::1"])
    assert load_certificate_info(broker.cert_file).sans == ("IP:127.0.0.1", "IP:::1")


def test_broker_rejects_an_address_that_is_not_one(ca_dir: Path):
    with pytest.raises(PkiError, match="--ip 300.1.1.1: not an IP address"):
        issue_broker(ca_dir, "localhost", ips=["300.1.1.1"])
    assert not (ca_dir / "localhost.key").exists()


# --- device certificates ---------------------------------------------------------------


def test_device_certificate_is_a_client_certificate_for_its_name(ca_dir: Path):
    device = issue_device(ca_dir, "edison-01")
    cert = load(device.cert_file)
    info = load_certificate_info(device.cert_file)
    assert (info.subject_cn, info.sans, info.is_ca) == ("edison-01", ("DNS:edison-01",), False)
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    assert ext(cert, x509.BasicConstraints).critical
    ca_ski = ext(load(ca_dir / "ca.crt"), x509.SubjectKeyIdentifier).value.digest
    assert ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski
    assert load(device.cert_file).serial_number != load(
        issue_device(ca_dir, "edison-02").cert_file).serial_number


def test_device_certificate_can_be_written_away_from_the_ca(ca_dir: Path, tmp_path: Path):
    device = issue_device(tmp_path / "board", "edison-01", ca_directory=ca_dir)
    assert device.key_file == tmp_path / "board" / "edison-01.key"
    assert not (tmp_path / "board" / "ca.key").exists()
    load(device.cert_file).verify_directly_issued_by(load(ca_dir / "ca.crt"))


def test_expired_certificate_on_request(ca_dir: Path):
    ten_days_ago = datetime.now(UTC) - timedelta(days=10)
    device = issue_device(ca_dir, "old", not_before=ten_days_ago, days=1)
    info = load_certificate_info(device.cert_file)
    assert info.not_after == (ten_days_ago + timedelta(days=1)).replace(microsecond=0)
    assert info.not_after < datetime.now(UTC)


def test_without_a_ca_says_how_to_make_one(tmp_path: Path):
    with pytest.raises(PkiError) as caught:
        issue_device(tmp_path, "edison-01")
    assert str(caught.value) == (
        "%s/ca.crt: no CA here; run 'edison-agent pki init-ca %s' first" % (tmp_path, tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["../escape", "a/b", "", "-x", "ca", "x y"])
def test_device_names_must_be_safe_file_names(ca_dir: Path, name: str):
    with pytest.raises(PkiError):
        issue_device(ca_dir, name)
    assert sorted(p.name for p in ca_dir.iterdir()) == ["ca.crt", "ca.key"]


def test_days_must_be_positive(ca_dir: Path):
    with pytest.raises(PkiError, match="--days 0: must be at least 1"):
        issue_device(ca_dir, "edison-01", days=0)


# --- the certificates in a handshake ---------------------------------------------------


def test_mutual_tls_handshake_and_the_broker_sees_the_device_name(ca_dir: Path):
    broker = issue_broker(ca_dir, "localhost", ips=["127.0.0.1"])
    device = issue_device(ca_dir, "edison-01")
    result = handshake(ca_dir / "ca.crt", broker, device)
    assert (result.server_error, result.client_error) == (None, None)
    assert result.client_cn == "edison-01"


def test_handshake_by_address_matches_the_ip_san(ca_dir: Path):
    broker = issue_broker(ca_dir, "127.0.0.1")
    result = handshake(ca_dir / "ca.crt", broker, issue_device(ca_dir, "edison-01"),
                       server_hostname="127.0.0.1")
    assert result.client_cn == "edison-01"


def test_handshake_fails_for_the_wrong_hostname(ca_dir: Path):
    broker = issue_broker(ca_dir, "broker.example")
    result = handshake(ca_dir / "ca.crt", broker, issue_device(ca_dir, "edison-01"))
    assert isinstance(result.client_error, ssl.SSLCertVerificationError)
    assert "Hostname mismatch" in str(result.client_error)
    assert result.client_cn is None


def test_broker_refuses_a_device_without_a_certificate(ca_dir: Path):
    result = handshake(ca_dir / "ca.crt", issue_broker(ca_dir, "localhost"), None)
    assert isinstance(result.server_error, ssl.SSLError)
    assert result.client_error is not None
    assert result.client_cn is None


def test_broker_refuses_a_device_from_another_ca(ca_dir: Path, tmp_path: Path):
    other = tmp_path / "other"
    init_ca(other, name="Someone else's CA")
    stranger = issue_device(other, "edison-01")
    result = handshake(ca_dir / "ca.crt", issue_broker(ca_dir, "localhost"), stranger)
    assert isinstance(result.server_error, ssl.SSLCertVerificationError)
    assert result.client_cn is None


def test_device_refuses_a_broker_from_another_ca(ca_dir: Path, tmp_path: Path):
    init_ca(tmp_path / "other")
    result = handshake(ca_dir / "ca.crt", issue_broker(ca_dir, "localhost"),
                       issue_device(ca_dir, "edison-01"), client_ca=tmp_path / "other/ca.crt")
    assert isinstance(result.client_error, ssl.SSLCertVerificationError)


def test_broker_refuses_an_expired_device_certificate(ca_dir: Path):
    expired = issue_device(ca_dir, "old", days=1,
                           not_before=datetime.now(UTC) - timedelta(days=10))
    result = handshake(ca_dir / "ca.crt", issue_broker(ca_dir, "localhost"), expired)
    assert isinstance(result.server_error, ssl.SSLCertVerificationError)
    assert "expired" in str(result.server_error)
    assert result.client_cn is None


def test_encrypted_device_key_needs_its_passphrase(ca_dir: Path):
    device = issue_device(ca_dir, "edison-01", passphrase=b"correct horse")
    assert device.key_file.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")

    ctx = ssl.create_default_context()
    ctx.load_cert_chain(device.cert_file, device.key_file, password=b"correct horse")
    with pytest.raises(ssl.SSLError):
        ctx.load_cert_chain(device.cert_file, device.key_file, password=b"battery staple")

    result = handshake(ca_dir / "ca.crt", issue_broker(ca_dir, "localhost"), device,
                       password=b"correct horse")
    assert result.client_cn == "edison-01"


# --- key types, encrypted CA, directory modes ------------------------------------------


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa2048", "ed25519"])
def test_every_key_type_makes_a_working_mutual_tls_pair(tmp_path: Path, key_type: str):
    d = tmp_path / "pki"
    init_ca(d, key_type=key_type)
    broker = issue_broker(d, "localhost", key_type=key_type)
    device = issue_device(d, "thunder10", key_type=key_type)
    result = handshake(d / "ca.crt", broker, device)
    assert result.server_error is None and result.client_error is None
    assert result.client_cn == "thunder10"


def test_unknown_key_type_is_refused(ca_dir: Path):
    with pytest.raises(PkiError, match="--key-type dsa: use one of ec-p256"):
        issue_device(ca_dir, "thunder10", key_type="dsa")


def test_an_encrypted_ca_key_needs_its_passphrase_to_issue(tmp_path: Path):
    d = tmp_path / "pki"
    init_ca(d, passphrase=b"ca secret")
    assert b"ENCRYPTED" in (d / "ca.key").read_bytes()
    with pytest.raises(PkiError, match="passphrase-protected; give --ca-passphrase-file"):
        issue_device(d, "thunder10")
    with pytest.raises(PkiError, match="wrong CA passphrase"):
        issue_device(d, "thunder10", ca_passphrase=b"not it")
    issue_device(d, "thunder10", ca_passphrase=b"ca secret")


def test_refuses_a_world_readable_directory_for_keys(tmp_path: Path):
    d = tmp_path / "open"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    with pytest.raises(PkiError, match="readable by every user .*chmod 700"):
        init_ca(d)
    assert not (d / "ca.key").exists()
