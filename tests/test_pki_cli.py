"""`edison-agent pki ...`: the command line's output and exit codes, list, renew and PKCS#12, the
packaging (the agent imports without cryptography), and the tool's files with a real Mosquitto."""

from __future__ import annotations

import argparse
import ssl
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from pki_testing import ext, load, mode

from agent.tools.pki.authority import (
    init_ca,
    issue_broker,
    issue_device,
    load_certificate_info,
)
from agent.tools.pki.cli import add_pki_parser

REPO = Path(__file__).resolve().parent.parent
UTC = timezone(timedelta(0))  # datetime.UTC arrived in 3.11; ruff flags timezone.utc




# --- the command line ------------------------------------------------------------------


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="edison-agent")
    add_pki_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_makes_a_ca_a_broker_and_a_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    pki = tmp_path / "pki"
    assert run("pki", "init-ca", str(pki), "--name", "Fleet CA") == 0
    assert run("pki", "issue-broker", str(pki), "mqtt.local", "--ip", "10.0.0.2",
               "--ip", "127.0.0.1") == 0
    assert run("pki", "issue-device", str(pki), "edison-01", "--days", "30") == 0

    out = capsys.readouterr().out
    expires = load_certificate_info(pki / "edison-01.crt").not_after
    assert "wrote %s/edison-01.crt (expires %s)\n" % (pki, expires.strftime("%Y-%m-%d")) in out
    for name in ("ca", "mqtt.local", "edison-01"):
        assert "wrote %s/%s.crt (expires " % (pki, name) in out
        assert "wrote %s/%s.key" % (pki, name) in out
    assert load_certificate_info(pki / "ca.crt").subject_cn == "Fleet CA"
    assert load_certificate_info(pki / "mqtt.local.crt").sans == (
        "DNS:mqtt.local", "IP:10.0.0.2", "IP:127.0.0.1")
    assert expires - datetime.now(UTC) < timedelta(days=30)


def test_cli_issue_broker_prints_a_mosquitto_listener(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    init_ca(tmp_path)
    monkeypatch.chdir(tmp_path)  # a relative DIR must come out as absolute paths
    assert run("pki", "issue-broker", ".", "localhost") == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("listener 8883")
    block = lines[start:lines.index("", start)]
    assert block == [
        "listener 8883",
        "cafile %s/ca.crt" % tmp_path.resolve(),
        "certfile %s/localhost.crt" % tmp_path.resolve(),
        "keyfile %s/localhost.key" % tmp_path.resolve(),
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.2",
        "set_tcp_nodelay true",
    ]


def test_cli_without_a_ca_fails_with_one_line(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]):
    assert run("pki", "issue-device", str(tmp_path), "edison-01") == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("edison-agent pki: %s/ca.crt: no CA here; "
                            "run 'edison-agent pki init-ca %s' first\n" % (tmp_path, tmp_path))


def test_cli_refuses_to_overwrite_and_says_use_force(ca_dir: Path,
                                                     capsys: pytest.CaptureFixture[str]):
    assert run("pki", "init-ca", str(ca_dir)) == 2
    assert "ca.crt: already exists; use --force" in capsys.readouterr().err
    assert run("pki", "init-ca", str(ca_dir), "--force") == 0


def test_cli_passphrase_comes_from_the_first_line_of_a_file(
        ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    secret = tmp_path / "passphrase"
    secret.write_bytes(b"correct horse\r\nnot this line\n")
    assert run("pki", "issue-device", str(ca_dir), "edison-01",
               "--passphrase-file", str(secret)) == 0
    assert "edison-01.key (mode 0600, encrypted)" in capsys.readouterr().out
    ssl.create_default_context().load_cert_chain(
        ca_dir / "edison-01.crt", ca_dir / "edison-01.key", password=b"correct horse")


@pytest.mark.parametrize(("content", "message"), [
    (b"\nsecond line\n", "the first line is empty"),
    (None, "cannot read the passphrase file"),
])
def test_cli_rejects_a_bad_passphrase_file(ca_dir: Path, tmp_path: Path, content: Optional[bytes],
                                           message: str, capsys: pytest.CaptureFixture[str]):
    secret = tmp_path / "passphrase"
    if content is not None:
        secret.write_bytes(content)
    assert run("pki", "issue-device", str(ca_dir), "edison-01",
               "--passphrase-file", str(secret)) == 2
    err = capsys.readouterr().err
    assert err.startswith("edison-agent pki: %s: %s" % (secret, message))
    assert err.count("\n") == 1
    assert not (ca_dir / "edison-01.key").exists()


# --- packaging ------------------------------------------------------------------------


def test_the_agent_imports_without_cryptography():
    code = ("import sys; sys.modules['cryptography'] = None\n"
            "import agent.tools.pki.authority as pki\n"
            "try:\n"
            "    pki.init_ca('unused')\n"
            "except pki.PkiError as exc:\n"
            "    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert out == ("the pki commands need the 'cryptography' package: "
                   "pip install 'edison-agent[pki]'\n")


@pytest.mark.skipif(not (REPO / "agent" / "cli.py").exists(), reason="agent/cli.py not written yet")
def test_python_m_agent_pki_init_ca(tmp_path: Path):
    done = subprocess.run([sys.executable, "-m", "agent", "pki", "init-ca", str(tmp_path / "p")],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert load_certificate_info(tmp_path / "p" / "ca.crt").is_ca


# --- list, renew, PKCS#12, with mosquitto -----------------------------------------------


def test_list_shows_subjects_sans_expiry_and_issuer(ca_dir: Path, capsys: pytest.CaptureFixture[str]):
    issue_broker(ca_dir, "localhost", ips=["127.0.0.1"])
    issue_device(ca_dir, "thunder10", days=10)
    assert run("pki", "list", str(ca_dir)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ca.crt: CA CN=Test CA")
    assert "localhost.crt: broker CN=localhost, SANs DNS:localhost, IP:127.0.0.1" in out[1]
    assert "thunder10.crt: device CN=thunder10" in out[2] and "(9 days left), issued by CN=Test CA" in out[2]


def test_renew_makes_a_new_key_and_keeps_name_sans_and_use(ca_dir: Path):
    old = issue_broker(ca_dir, "localhost", ips=["127.0.0.1"], days=20)
    old_key = old.key_file.read_bytes()
    assert run("pki", "renew", str(ca_dir), "localhost", "--days", "400") == 0
    assert old.key_file.read_bytes() != old_key
    info = load_certificate_info(old.cert_file)
    assert info.sans == ("DNS:localhost", "IP:127.0.0.1")
    assert ExtendedKeyUsageOID.SERVER_AUTH in ext(load(old.cert_file), x509.ExtendedKeyUsage).value
    assert (info.not_after - datetime.now(UTC)).days >= 399
    assert mode(old.key_file) == 0o600


def test_p12_bundle_holds_key_certificate_and_ca(ca_dir: Path, tmp_path: Path):
    from cryptography.hazmat.primitives.serialization import pkcs12

    pass_file = tmp_path / "p"
    pass_file.write_text("bundle secret\n")
    assert run("pki", "issue-device", str(ca_dir), "thunder10", "--p12", "--passphrase-file", str(pass_file)) == 0
    p12 = ca_dir / "thunder10.p12"
    assert mode(p12) == 0o600
    key, cert, extra = pkcs12.load_key_and_certificates(p12.read_bytes(), b"bundle secret")
    assert key is not None and cert is not None
    assert cert == load(ca_dir / "thunder10.crt")
    assert [c.subject for c in extra] == [load(ca_dir / "ca.crt").subject]


@pytest.mark.skipif(sys.platform != "linux", reason="needs mosquitto")
def test_certificates_from_this_tool_work_with_mosquitto_pub(tmp_path: Path):
    import conftest

    d = tmp_path / "pki"
    init_ca(d)
    broker_pair = issue_broker(d, "localhost", ips=["127.0.0.1"])
    device = issue_device(d, "thunder10")
    certs = conftest.Certs(d, d / "ca.crt", broker_pair.cert_file, broker_pair.key_file, *([device.cert_file,
                           device.key_file] * 6))
    b = conftest.Broker(tmp_path, certs, broker_pair.cert_file, broker_pair.key_file)
    b.start()
    try:
        done = subprocess.run(["mosquitto_pub", "-h", "localhost", "-p", str(b.port), "--cafile", str(d / "ca.crt"),
                               "--cert", str(device.cert_file), "--key", str(device.key_file), "-t", "edison/x",
                               "-m", "hello", "-q", "1"], capture_output=True, text=True, timeout=15)
    finally:
        b.stop()
    assert done.returncode == 0, done.stderr
    assert "thunder10" in b.log.read_text()
