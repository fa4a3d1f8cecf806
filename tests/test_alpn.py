"""ALPN and SNI against a TLS front end like AWS IoT Core's on port 443: it takes MQTT only from a client
that offers ALPN x-amzn-mqtt-ca, terminates TLS and hands the bytes to a plain mosquitto behind it."""

from __future__ import annotations

import select
import socket
import ssl
import threading
from pathlib import Path
from typing import Iterator, List, Optional

import pytest
import yaml

from agent.tools.doctor import checkup as doctor
from conftest import Broker, Certs, agent_config

AWS_ALPN = "x-amzn-mqtt-ca"


class TLSFrontEnd:
    """Requires ALPN `alpn` and a client certificate from our CA; records the SNI of every ClientHello."""

    def __init__(self, certs: Certs, backend_port: int, cert: Path, key: Path, alpn: str = AWS_ALPN) -> None:
        self.backend_port = backend_port
        self.alpn = alpn
        self.server_names: List[Optional[str]] = []
        self.refused: List[Optional[str]] = []
        self.accepted = threading.Event()
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.ctx.load_verify_locations(str(certs.ca))
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.set_alpn_protocols([alpn])
        self.ctx.sni_callback = lambda sock, name, ctx: self.server_names.append(name)
        self.listener = socket.create_server(("127.0.0.1", 0))
        # accept() wakes up to see `_closing`: closing a socket does not interrupt another thread's accept().
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self._closing = threading.Event()
        self._threads: List[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                raw, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(raw,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(10)
        try:
            tls = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        with tls:
            chosen = tls.selected_alpn_protocol()
            if chosen != self.alpn:
                # AWS IoT Core on 443 without the right ALPN name: not MQTT with a certificate. Hang up.
                self.refused.append(chosen)
                return
            self.accepted.set()
            with socket.create_connection(("127.0.0.1", self.backend_port), timeout=10) as backend:
                self._pump(tls, backend)

    def _pump(self, tls: ssl.SSLSocket, backend: socket.socket) -> None:
        # One thread per connection reads and writes both sides: an SSLSocket is not for two threads at once.
        while not self._closing.is_set():
            ready = [tls] if tls.pending() else select.select([tls, backend], [], [], 0.2)[0]
            for sock in ready:
                try:
                    data = sock.recv(65536)
                except (ssl.SSLError, OSError):
                    return
                if not data:
                    return
                (backend if sock is tls else tls).sendall(data)

    def close(self) -> None:
        self._closing.set()
        self._accepter.join(5)
        self.listener.close()
        for thread in self._threads:
            thread.join(5)


@pytest.fixture
def plain_broker(tmp_path: Path, certs: Certs) -> Iterator[Broker]:
    b = Broker(tmp_path, certs, certs.broker_cert, certs.broker_key, tls=False)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def front_end(plain_broker: Broker, certs: Certs) -> Iterator[TLSFrontEnd]:
    f = TLSFrontEnd(certs, plain_broker.port, certs.broker_cert, certs.broker_key)
    yield f
    f.close()


def test_the_front_end_accepts_the_agent_only_when_it_offers_the_alpn_name(front_end, certs, run_agent):
    without = run_agent(agent_config(certs, front_end.port))
    without.wait_for("broker closed the connection after the TLS handshake")
    assert front_end.refused and front_end.refused[0] is None
    assert not front_end.accepted.is_set()
    without.stop()

    with_alpn = run_agent(agent_config(certs, front_end.port, tls={"alpn": [AWS_ALPN]}))
    # The CONNACK comes from the mosquitto behind the front end; the log names the agreed protocol.
    line = with_alpn.wait_for("connected to 127.0.0.1:%d" % front_end.port)
    assert line.endswith(", ALPN %s" % AWS_ALPN)
    assert with_alpn.stop() == 0


def test_a_wrong_alpn_name_is_refused_like_none(front_end, certs, run_agent):
    agent = run_agent(agent_config(certs, front_end.port, tls={"alpn": ["mqtt"]}))
    agent.wait_for("broker closed the connection after the TLS handshake")
    assert not front_end.accepted.is_set()


@pytest.fixture
def named_front_end(plain_broker: Broker, certs: Certs) -> Iterator[TLSFrontEnd]:
    """A front end whose certificate names only 'iotgateway1' (no address), reached at 127.0.0.1."""
    f = TLSFrontEnd(certs, plain_broker.port, certs.wrong_host_cert, certs.wrong_host_key)
    yield f
    f.close()


def test_server_name_is_sent_as_sni_and_checked_in_the_certificate(named_front_end, certs, run_agent):
    cfg = agent_config(certs, named_front_end.port, tls={"alpn": [AWS_ALPN], "server_name": "iotgateway1"})
    agent = run_agent(cfg)
    agent.wait_for("connected to 127.0.0.1:%d, .*ALPN %s" % (named_front_end.port, AWS_ALPN))
    assert named_front_end.server_names[0] == "iotgateway1"
    assert agent.stop() == 0


def test_without_server_name_the_certificate_is_checked_against_the_host(named_front_end, certs, run_agent):
    agent = run_agent(agent_config(certs, named_front_end.port, tls={"alpn": [AWS_ALPN]}))
    line = agent.wait_for("the broker's certificate is not valid for '127.0.0.1'")
    assert "IP address mismatch" in line
    # An address is never sent as SNI.
    assert named_front_end.server_names and named_front_end.server_names[0] is None
    assert not named_front_end.accepted.is_set()


def test_doctor_offers_the_alpn_name_and_shows_what_was_agreed(front_end, certs, tmp_path):
    path = tmp_path / "doctor.yaml"
    path.write_text(yaml.safe_dump(agent_config(certs, front_end.port, tls={"alpn": [AWS_ALPN]})))
    checks = {c.check: c for c in doctor.run_checks(path)}
    assert checks["tls handshake"].status == doctor.OK
    assert checks["tls handshake"].detail.endswith(", ALPN %s" % AWS_ALPN)
    assert checks["mqtt connect"].status == doctor.OK, checks["mqtt connect"]
