"""agent/mqtt/paho_shim.py against the installed paho and ssl: a release that moves what the shim
reads fails here, not on a board whose network thread would then wake every 15 s."""

from __future__ import annotations

import re
import ssl
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Tuple

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import schema as config
from agent.mqtt import paho_shim, tls
from agent.mqtt.tls import build_context
from conftest import Broker, Certs, agent_config

ROOT = Path(__file__).resolve().parent.parent


def _version(text: str) -> Tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_the_installed_paho_has_every_field_the_shim_reads() -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="shim")
    for name in paho_shim.REQUIRED_CLIENT_FIELDS:
        assert hasattr(client, name), "paho %s has no %s: agent/mqtt/paho_shim.py needs a new way" % (
            metadata.version("paho-mqtt"), name)
    assert isinstance(client._last_msg_out, float)  # noqa: SLF001 - what the shim relies on
    assert isinstance(client._ping_t, float)  # noqa: SLF001
    assert hasattr(client._msgtime_mutex, "acquire")  # noqa: SLF001
    # paho's keepalive clock is the one the shim writes with.
    assert callable(mqtt.time_func)


def test_the_installed_ssl_module_has_the_certificate_decoder(certs: Certs) -> None:
    assert hasattr(ssl._ssl, paho_shim.REQUIRED_SSL_HELPER)  # type: ignore[attr-defined]
    decoded = paho_shim.decode_certificate(str(certs.device_cert))
    assert decoded is not None
    assert "notBefore" in decoded and "notAfter" in decoded
    assert tls.certificate_dates(str(certs.device_cert)) is not None


def test_a_file_that_is_no_certificate_decodes_to_none(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    assert paho_shim.decode_certificate(str(junk)) is None
    assert paho_shim.decode_certificate(str(tmp_path / "missing.pem")) is None


def test_setup_py_admits_only_the_tested_paho_release() -> None:
    text = (ROOT / "setup.py").read_text()
    match = re.search(r'"paho-mqtt>=([\d.]+),<([\d.]+)"', text)
    assert match is not None, "setup.py should bound paho-mqtt on both sides"
    low, high = _version(match.group(1)), _version(match.group(2))
    installed = _version(metadata.version("paho-mqtt"))
    assert low <= installed < high
    # Not a whole major version: a minor release may move the private fields.
    assert high[:2] <= (low[0], low[1] + 1)


def test_keepalive_follows_a_written_packet_on_a_real_connection(certs: Certs, broker: Broker,
                                                                  tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(agent_config(certs, broker.port)))
    cfg = config.load(path)
    assert cfg.mqtt.tls is not None
    connected = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="shim-test")
    client.tls_set_context(build_context(cfg.mqtt.tls))
    client.on_connect = lambda *args: connected.set()
    client.connect("127.0.0.1", broker.port, keepalive=60)
    try:
        deadline = time.monotonic() + 15
        while not connected.is_set() and time.monotonic() < deadline:
            client.loop(0.1)
        assert connected.is_set()
        # paho's clock is monotonic: the next ping is about one keepalive ahead, never behind.
        assert time.monotonic() < paho_shim.keepalive_due(client) <= time.monotonic() + 61
        # Half a minute of silence both ways: the ping is due in half a minute.
        quiet_since = mqtt.time_func() - 30
        client._last_msg_out = client._last_bytes_received = quiet_since  # noqa: SLF001 - paho's fields
        assert abs(paho_shim.keepalive_due(client) - (quiet_since + 60)) < 0.1
        # A packet written now (and a byte heard now) puts the ping a whole keepalive ahead.
        paho_shim.note_packet_sent(client)
        client._last_bytes_received = mqtt.time_func()  # noqa: SLF001
        assert paho_shim.keepalive_due(client) >= quiet_since + 89
    finally:
        client.disconnect()
