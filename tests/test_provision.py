"""Provisioning many boards: `pki issue-devices DIR OUTDIR --from devices.csv` makes one bundle per
row (config.yaml + certs/) that loads, passes check-config and connects to a real mosquitto; a bad
CSV is refused with one line per problem before anything is written."""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.config import schema as config
from agent.tools.doctor import checkup as doctor
from agent.tools.pki import authority as pki
from agent.tools.pki.cli import add_pki_parser
from conftest import ROOT, AgentProcess, Broker, Certs

TEMPLATE = ROOT / "agent" / "data" / "config.yaml"


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="edison-agent")
    add_pki_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    pki.init_ca(d, name="Fleet CA")
    pki.issue_broker(d, "localhost", ips=["127.0.0.1"])
    return d


@pytest.fixture
def fleet_broker(ca: Path, tmp_path: Path) -> Iterator[Broker]:
    broker = (ca / "localhost.crt", ca / "localhost.key")
    b = Broker(tmp_path, Certs(ca, ca / "ca.crt", *broker, *(broker * 6)), *broker)
    b.start()
    yield b
    b.stop()


def write_csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "devices.csv"
    path.write_text(text)
    return path


def contents(d: Path) -> List[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def test_three_rows_make_three_bundles_that_load_and_connect(ca: Path, fleet_broker: Broker, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]):
    csv_file = write_csv(tmp_path, "name,host\nthunder21,127.0.0.1\nthunder22,127.0.0.1\nthunder23,\n")
    out = tmp_path / "bundles"
    assert run("pki", "issue-devices", str(ca), str(out), "--from", str(csv_file),
               "--host", "127.0.0.1", "--port", str(fleet_broker.port)) == 0

    lines = capsys.readouterr().out.splitlines()
    for n, name in enumerate(("thunder21", "thunder22", "thunder23")):
        assert lines[n].startswith("issued %s: %s/%s/ (config.yaml, certs/ca.crt" % (name, out, name)), lines[n]
        assert "CN=%s, expires " % name in lines[n] and "broker 127.0.0.1:%s" % fleet_broker.port in lines[n]
    assert lines[3] == "3 devices: 3 issued; certificates recorded in %s ('edison-agent pki list %s')" % (ca, ca)
    assert "  rsync -a %s/thunder21/config.yaml %s/thunder21/certs root@thunder21:/etc/edison-agent/" % (out, out) \
        in lines

    for name in ("thunder21", "thunder22", "thunder23"):
        bundle = out / name
        assert contents(bundle) == ["certs", "certs/ca.crt", "certs/client.crt", "certs/client.key", "config.yaml"]
        assert (mode(bundle), mode(bundle / "certs/client.key"), mode(bundle / "certs/client.crt"),
                mode(bundle / "config.yaml")) == (0o700, 0o600, 0o644, 0o640)
        cfg = config.load(bundle / "config.yaml")
        assert (cfg.device_id, cfg.mqtt.client_id, cfg.mqtt.host, cfg.mqtt.port) == \
            (name, name, "127.0.0.1", fleet_broker.port)
        assert cfg.mqtt.tls is not None and cfg.mqtt.tls.key_file == bundle / "certs" / "client.key"
        # The certificate is recorded beside the CA (where list/renew/revoke look); the key is not.
        assert (ca / ("%s.crt" % name)).read_bytes() == (bundle / "certs/client.crt").read_bytes()
        assert not (ca / ("%s.key" % name)).exists()
        checks = doctor.run_checks(bundle / "config.yaml")
        assert {c.status for c in checks} == {doctor.OK}, "\n".join(c.line() for c in checks)


def test_a_bundle_passes_check_config_and_runs_the_agent(ca: Path, fleet_broker: Broker, tmp_path: Path) -> None:
    template = tmp_path / "template.yaml"
    tree = yaml.safe_load(TEMPLATE.read_text())
    tree.update(board="simulated", state_dir=str(tmp_path / "state"))
    template.write_text(yaml.safe_dump(tree))
    csv_file = write_csv(tmp_path, "name,port\nthunder31,%d\n" % fleet_broker.port)
    out = tmp_path / "bundles"
    assert run("pki", "issue-devices", str(ca), str(out), "--from", str(csv_file), "--template", str(template),
               "--host", "127.0.0.1") == 0
    path = out / "thunder31" / "config.yaml"

    done = subprocess.run([sys.executable, "-m", "agent", "check-config", "-c", str(path)], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("%s: valid\n  device     thunder31\n" % path), done.stdout

    agent = AgentProcess(path)
    try:
        agent.wait_for(r"connected to 127\.0\.0\.1:%d" % fleet_broker.port, timeout=60)
    finally:
        agent.close()
    assert "as thunder31" in fleet_broker.log.read_text()


def test_columns_override_the_defaults_per_device(ca: Path, tmp_path: Path):
    csv_file = write_csv(tmp_path, " name , host , port , key_type , days \n"
                                   "thunder41 , gw1.example , 8884 , ed25519 , 10 \n"
                                   "thunder42,,,,\n")
    out = tmp_path / "bundles"
    assert run("pki", "issue-devices", str(ca), str(out), "--from", str(csv_file), "--days", "100") == 0
    first = yaml.safe_load((out / "thunder41/config.yaml").read_text())["mqtt"]
    second = yaml.safe_load((out / "thunder42/config.yaml").read_text())["mqtt"]
    assert (first["host"], first["port"]) == ("gw1.example", 8884)
    assert (second["host"], second["port"]) == ("iotgateway1", 8883)  # the shipped template's
    cert = x509.load_pem_x509_certificate((out / "thunder41/certs/client.crt").read_bytes())
    assert isinstance(cert.public_key(), ed25519.Ed25519PublicKey)
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 10
    other = x509.load_pem_x509_certificate((out / "thunder42/certs/client.crt").read_bytes())
    assert (other.not_valid_after_utc - other.not_valid_before_utc).days == 100


def test_existing_bundles_are_skipped_and_replaced_with_force(ca: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "bundles"
    csv_file = write_csv(tmp_path, "name\nthunder51\n")
    assert run("pki", "issue-devices", str(ca), str(out), "--from", str(csv_file)) == 0
    key = (out / "thunder51/certs/client.key").read_bytes()
    write_csv(tmp_path, "name\nthunder51\nthunder52\n")  # a row added to the same file
    capsys.readouterr()

    assert run("pki", "issue-devices", str(ca), str(out), "--from", str(csv_file)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("skipped thunder51: %s/thunder51 and %s/thunder51.crt already exist; "
                               "--force issues a new certificate and bundle" % (out, ca)), lines[0]
    assert lines[1].startswith("issued thunder52: ")
    assert lines[2].startswith("2 devices: 1 issued, 1 skipped;")
    assert (out / "thunder51/certs/client.key").read_bytes() == key

    assert run("pki", "issue-devices", str(ca), str(out), "--from", str(csv_file), "--force") == 0
    assert capsys.readouterr().out.startswith("replaced thunder51: ")
    assert (out / "thunder51/certs/client.key").read_bytes() != key
    assert (ca / "thunder51.crt").read_bytes() == (out / "thunder51/certs/client.crt").read_bytes()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no staging left behind


@pytest.mark.parametrize(("text", "errors"), [
    ("host,port\n127.0.0.1,8883\n", ["line 1: no 'name' column"]),
    ("name,hots\nthunder61,x\n", ["line 1: unknown column 'hots' (did you mean 'host'?)"]),
    ("name\nthunder61\nthunder62\nthunder61\n", ["line 4: name 'thunder61' is already on line 2"]),
    ("name\nthunder61\n../etc\n", ["line 3: name '../etc': use letters, digits"]),
    ("name,port\nthunder61,8883\n,\n", ["line 3: empty row; remove it"]),
    ("name,port\n,8883\n", ["line 2: name is empty"]),
    ("name,port,days\nthunder61,http,-1\n", ["line 2: port 'http': must be a whole number from 1 to 65535",
                                              "line 2: days '-1': must be a whole number"]),
    ("", ["empty; the first line must be a header"]),
])
def test_a_bad_csv_is_refused_with_one_line_per_problem_and_nothing_written(
        ca: Path, tmp_path: Path, text: str, errors: List[str], capsys: pytest.CaptureFixture[str]):
    csv_file = write_csv(tmp_path, text)
    out = tmp_path / "bundles"
    before = contents(ca)
    assert run("pki", "issue-devices", str(ca), str(out), "--from", str(csv_file)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.splitlines()
    assert len(err) == len(errors), captured.err
    for line, expected in zip(err, errors):
        assert line.startswith("edison-agent pki: %s: " % csv_file) and expected in line, line
    assert not out.exists()
    assert contents(ca) == before


def test_a_missing_ca_or_template_is_refused_before_anything_is_written(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]):
    csv_file = write_csv(tmp_path, "name\nthunder71\n")
    out = tmp_path / "bundles"
    assert run("pki", "issue-devices", str(tmp_path / "nope"), str(out), "--from", str(csv_file)) == 2
    assert "no CA here; run 'edison-agent pki init-ca" in capsys.readouterr().err
    assert run("pki", "issue-devices", str(tmp_path), str(out), "--from", str(csv_file),
               "--template", str(tmp_path / "missing.yaml")) == 2
    assert "missing.yaml: cannot read the template" in capsys.readouterr().err
    assert not out.exists()


def test_a_template_that_makes_an_invalid_config_leaves_no_bundle(ca: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]):
    template = tmp_path / "template.yaml"
    template.write_text("mqtt: {host: localhost, qos: 7}\nsensors: []\n")
    csv_file = write_csv(tmp_path, "name\nthunder81\n")
    out = tmp_path / "bundles"
    assert run("pki", "issue-devices", str(ca), str(out), "--from", str(csv_file), "--template", str(template)) == 2
    err = capsys.readouterr().err
    assert "%s/thunder81/config.yaml: mqtt.qos:" % out in err, err
    assert os.listdir(out) == []
    assert not (ca / "thunder81.crt").exists()
