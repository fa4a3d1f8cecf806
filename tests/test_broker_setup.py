"""Issue 19 item 4: `pki issue-broker --broker mosquitto|rabbitmq|emqx` writes and prints what that
broker needs; `--install-dir` puts the files where the broker's own user can read them."""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator, List

import pytest

from agent.cli import main
from agent.tools.pki import authority as pki
from conftest import ROOT, Broker, Certs, agent_config


def _issue(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["pki", "issue-broker", *args]) == 0
    return capsys.readouterr().out


def test_rabbitmq_gets_its_ssl_options_cert_login_and_the_user_to_create_per_device(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki.init_ca(tmp_path)
    out = _issue(capsys, str(tmp_path), "iotgateway1", "--ip", "192.168.1.10", "--broker", "rabbitmq")
    for line in ["mqtt.listeners.ssl.default = 8883",
                 "ssl_options.cacertfile = %s/ca.crt" % tmp_path.resolve(),
                 "ssl_options.certfile = %s/iotgateway1.crt" % tmp_path.resolve(),
                 "ssl_options.keyfile = %s/iotgateway1.key" % tmp_path.resolve(),
                 "ssl_options.verify = verify_peer", "ssl_options.fail_if_no_peer_cert = true",
                 "mqtt.ssl_cert_login = true", "ssl_cert_login_from = common_name",
                 "rabbitmqctl add_user NAME \"$(openssl rand -base64 24)\"",
                 "rabbitmqctl set_topic_permissions -p / NAME amq.topic '^edison\\.NAME\\.' '^edison\\.NAME\\.cmd\\.'"]:
        assert line in out.splitlines(), out
    # Written beside the certificate as printed, to be copied over as it is.
    written = tmp_path / "iotgateway1.rabbitmq.conf"
    assert written.read_text() in out
    assert "listener 8883" not in out  # not Mosquitto's


def test_emqx_gets_an_ssl_listener_with_the_cn_as_user_name(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    pki.init_ca(tmp_path)
    out = _issue(capsys, str(tmp_path), "iotgateway1", "--broker", "emqx")
    lines = [line.strip() for line in out.splitlines()]
    for line in ["listeners.ssl.default {", "verify = verify_peer", "fail_if_no_peer_cert = true",
                 "cacertfile = \"%s/ca.crt\"" % tmp_path.resolve(), "mqtt.peer_cert_as_username = cn"]:
        assert line in lines, out
    assert (tmp_path / "iotgateway1.emqx.conf").is_file()


def _listener(out: str) -> List[str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("listener "))
    return lines[start:lines.index("", start)]


@pytest.fixture
def world_traversable_dir() -> Iterator[Path]:
    """pytest's tmp dirs sit under a 0700 directory, which the mosquitto user cannot enter."""
    path = Path(tempfile.mkdtemp(prefix="edison-broker-setup-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the key to the mosquitto group needs root")
def test_install_dir_gives_mosquitto_the_files_and_the_printed_listener_works(
        certs: Certs, world_traversable_dir: Path, capsys: pytest.CaptureFixture[str], run_agent) -> None:
    base = world_traversable_dir
    ca_dir = base / "pki"
    pki.init_ca(ca_dir)
    install = base / "certs"
    out = _issue(capsys, str(ca_dir), "localhost", "--ip", "127.0.0.1", "--install-dir", str(install))
    key = install / "localhost.key"
    assert sorted(p.name for p in install.iterdir()) == ["ca.crt", "localhost.crt", "localhost.key"]
    st = key.stat()
    assert (st.st_mode & 0o777, st.st_uid, grp.getgrgid(st.st_gid).gr_name) == (0o640, 0, "mosquitto")
    assert (install / "ca.crt").stat().st_mode & 0o777 == 0o644
    listener = _listener(out)
    assert listener[1:4] == ["cafile %s/ca.crt" % install, "certfile %s/localhost.crt" % install,
                             "keyfile %s/localhost.key" % install]
    # The printed block, as it is, in a mosquitto that drops root for its own user: it reads the
    # key through its group, and a device of this CA connects.
    device = pki.issue_device(ca_dir, "thunder10")
    work = base / "broker"
    work.mkdir()
    shutil.chown(work, user="mosquitto")
    broker = Broker(work, certs, certs.broker_cert, certs.broker_key)
    broker.conf.write_text("\n".join(["user mosquitto", "log_dest file %s" % broker.log, "log_type all",
                                      *listener]).replace("listener 8883", "listener %d 127.0.0.1"
                                                          % broker.port) + "\n")
    broker.start()
    try:
        agent = run_agent(agent_config(certs, broker.port, tls={
            "ca_file": str(install / "ca.crt"), "cert_file": str(device.cert_file), "key_file": str(device.key_file)}))
        agent.wait_for("connected to 127.0.0.1:%d" % broker.port)
    finally:
        broker.stop()


def test_an_unknown_broker_is_refused_by_the_command_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "agent", "pki", "issue-broker", str(tmp_path), "gw",
                           "--broker", "hivemq"], cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "invalid choice: 'hivemq'" in done.stderr
