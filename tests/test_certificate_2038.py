"""Certificates that expire after 19 January 2038: the last second of a signed 32-bit time_t.

The Edison is a 32-bit board. A certificate issued for more than about twelve years expires
past 2038, and any conversion through the platform's time_t overflows there. These tests run
on both word sizes (`make test` and `make test-i386`); on a 32-bit Python they are the only
thing that shows the defect.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from agent.mqtt import tls
from agent.tools.pki import authority as pki
from conftest import ROOT, Broker, Certs, Subscriber, agent_config

# 2038-01-19 03:14:07 UTC is the last second a signed 32-bit time_t holds.
Y2038 = datetime.datetime(2038, 1, 19, 3, 14, 7, tzinfo=datetime.timezone.utc)
# Issued today for 12,000 days: expires in the 2059-2060s, whatever day the suite runs.
LONG_DAYS = 12000


@pytest.fixture(scope="module")
def long_certs(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A CA, broker, device and monitor that all outlive 2038, made with the project's pki."""
    d = tmp_path_factory.mktemp("pki-2060")
    pki.init_ca(d, days=LONG_DAYS + 365)
    broker = pki.issue_broker(d, "localhost", ips=["127.0.0.1"], days=LONG_DAYS)
    device = pki.issue_device(d, "thunder10", days=LONG_DAYS)
    monitor = pki.issue_device(d, "monitor", days=LONG_DAYS)
    return dataclasses.replace(certs, dir=d, ca=d / "ca.crt", broker_cert=broker.cert_file,
                               broker_key=broker.key_file, device_cert=device.cert_file,
                               device_key=device.key_file, monitor_cert=monitor.cert_file,
                               monitor_key=monitor.key_file)


@pytest.fixture
def long_broker(tmp_path: Path, long_certs: Certs) -> Iterator[Broker]:
    b = Broker(tmp_path, long_certs, long_certs.broker_cert, long_certs.broker_key)
    b.start()
    yield b
    b.stop()


def _expiry_year(cert: Path) -> int:
    dates = tls.certificate_dates(str(cert))
    assert dates is not None
    return dates[1].year


def test_the_dates_of_a_certificate_past_2038_are_read_exactly(long_certs):
    dates = tls.certificate_dates(str(long_certs.device_cert))
    assert dates is not None
    not_before, not_after = dates
    assert not_after > Y2038
    assert not_after.tzinfo is not None and not_after.utcoffset() == datetime.timedelta(0)
    assert (not_after - not_before).days == LONG_DAYS


@pytest.mark.parametrize("text, expected", [
    ("Jan 19 03:14:08 2038 GMT", datetime.datetime(2038, 1, 19, 3, 14, 8)),
    # RFC 5280's "no well-defined expiration date".
    ("Dec 31 23:59:59 9999 GMT", datetime.datetime(9999, 12, 31, 23, 59, 59)),
    # OpenSSL pads single-digit days with a space; a GeneralizedTime may carry a fraction.
    ("Feb  9 12:00:00.25 2051 GMT", datetime.datetime(2051, 2, 9, 12, 0, 0)),
])
def test_certificate_times_past_2038_parse_to_utc(text, expected):
    assert tls.parse_cert_time(text) == expected.replace(tzinfo=datetime.timezone.utc)


def test_run_connects_with_a_certificate_past_2038_and_logs_its_expiry(long_certs, long_broker, run_agent):
    subscriber = Subscriber(long_broker, long_certs)
    try:
        time.sleep(0.3)
        agent = run_agent(agent_config(long_certs, long_broker.port))
        line = agent.wait_for(r"client certificate .* expires in \d+ days")
        assert "(%d-" % _expiry_year(long_certs.device_cert) in line
        assert subscriber.telemetry()["readings"]
        assert agent.stop() == 0
    finally:
        subscriber.close()
    assert "OverflowError" not in agent.output and "internal error" not in agent.output


def test_doctor_passes_a_setup_whose_certificates_outlive_2038(long_certs, long_broker, tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(agent_config(long_certs, long_broker.port)))
    done = subprocess.run([sys.executable, "-m", "agent", "doctor", "-c", str(path), "--json"], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    checks = {c["check"]: c for c in json.loads(done.stdout)}
    dates = checks["client certificate dates"]
    assert dates["status"] == "ok"
    assert "expires %d-" % _expiry_year(long_certs.device_cert) in dates["detail"]


def test_check_config_accepts_a_certificate_past_2038(long_certs, tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(agent_config(long_certs, 8883)))
    done = subprocess.run([sys.executable, "-m", "agent", "check-config", "-c", str(path)], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert str(long_certs.device_cert) in done.stdout


def test_status_shows_the_expiry_of_a_certificate_past_2038(long_certs, long_broker, run_agent):
    cfg = agent_config(long_certs, long_broker.port, health={"interval": 1})
    agent = run_agent(cfg)
    agent.wait_for(r"connected to 127\.0\.0\.1")
    health = Path(cfg["health"]["file"])
    deadline = time.monotonic() + 15
    while not health.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    done = subprocess.run([sys.executable, "-m", "agent", "status", "--file", str(health)], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=60)
    assert agent.stop() == 0
    assert done.returncode == 0, done.stdout + done.stderr
    year = _expiry_year(long_certs.device_cert)
    assert "%d-" % year in done.stdout
    document = json.loads(health.read_text())
    assert document["certificate"]["not_after"].startswith("%d-" % year)
    assert document["certificate"]["days_left"] > (Y2038 - datetime.datetime.now(datetime.timezone.utc)).days
