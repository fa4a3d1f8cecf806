"""The agent's two peers in `make bench-peers` (bench/peers.py): mqtt-io and collectd, their
generated configs (kept in bench/peers-configs/) and their processes.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import List

from rig import Env

BENCH = Path(__file__).resolve().parent
PEERS_VENV = BENCH / ".peers-venv"
CONFIGS = BENCH / "peers-configs"
MQTT_IO_PREFIX = "peers/mqtt-io"
COLLECTD_PREFIX = "peers/collectd"


def mqtt_io_python() -> Path:
    return PEERS_VENV / "bin" / "python"


def mqtt_io_config(env: Env, sensors: int, interval: int, path: Path, stock_log: bool = False) -> Path:
    import yaml
    ec = env.ec
    cfg = {
        "mqtt": {"host": "localhost", "port": env.broker.port, "client_id": "bench-mqtt-io",
                 "topic_prefix": MQTT_IO_PREFIX,
                 "tls": {"enabled": True, "ca_certs": str(ec["ca"]), "certfile": str(ec["device_cert"]),
                         "keyfile": str(ec["device_key"])}},
        "sensor_modules": [{"name": "sim", "module": "mock"}],
        "sensor_inputs": [{"name": "s%03d" % i, "module": "sim", "interval": interval} for i in range(sensors)],
    }
    if not stock_log:
        # Its default logs every reading at INFO; the agent logs none, so neither does mqtt-io
        # here (which only makes mqtt-io cheaper: the comparison is not tilted against it).
        cfg["logging"] = {"version": 1,
                          "handlers": {"console": {"class": "logging.StreamHandler", "level": "WARNING"}},
                          "loggers": {"mqtt_io": {"level": "WARNING", "handlers": ["console"]}}}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def collectd_config(env: Env, sensors: int, interval: int, d: Path) -> Path:
    """collectd.conf and the table file it reads; stock thread counts and queue settings."""
    ec = env.ec
    d.mkdir(parents=True, exist_ok=True)
    table = d / "sensors.txt"
    # One row per simulated sensor: name, value (what a driver would leave in /sys).
    table.write_text("".join("s%03d %.2f\n" % (i, 20 + i / 100) for i in range(sensors)))
    conf = d / "collectd.conf"
    conf.write_text("\n".join([
        'Hostname "bench"',
        "FQDNLookup false",
        'BaseDir "%s"' % d,
        'PIDFile "%s"' % (d / "collectd.pid"),
        'PluginDir "/usr/lib/collectd"',
        'TypesDB "/usr/share/collectd/types.db"',
        "Interval %d" % interval,
        "LoadPlugin table",
        "LoadPlugin mqtt",
        "<Plugin table>",
        '  <Table "%s">' % table,
        '    Plugin "sim"',
        '    Instance "w1"',
        '    Separator " "',
        "    <Result>",
        "      Type gauge",
        "      InstancesFrom 0",
        "      ValuesFrom 1",
        "    </Result>",
        "  </Table>",
        "</Plugin>",
        "<Plugin mqtt>",
        '  <Publish "bench">',
        '    Host "localhost"',
        '    Port "%d"' % env.broker.port,
        '    ClientId "bench-collectd"',
        "    QoS 1",
        '    Prefix "%s"' % COLLECTD_PREFIX,
        "    Retain false",
        '    CACert "%s"' % ec["ca"],
        '    CertificateFile "%s"' % ec["device_cert"],
        '    CertificateKeyFile "%s"' % ec["device_key"],
        "  </Publish>",
        "</Plugin>",
        "",
    ]))
    return conf


class PeerProc:
    def __init__(self, name: str, argv: List[str], log: Path) -> None:
        self.name, self.log_path = name, log
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=str(log.parent))
        self.pid = self.proc.pid

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise SystemExit("bench-peers: %s exited (%s):\n%s"
                             % (self.name, self.proc.returncode, self.log_path.read_text()[-3000:]))

    def stop(self) -> None:
        # SIGTERM is what systemd sends both; mqtt-io handles it like SIGINT.
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def start_peer(env: Env, name: str, sensors: int, interval: int, tag: str, stock_log: bool = False) -> PeerProc:
    d = env.work / ("%s-%s" % (name, tag))
    d.mkdir(parents=True, exist_ok=True)
    if name == "mqtt-io":
        cfg = mqtt_io_config(env, sensors, interval, d / "mqtt-io.yml", stock_log)
        argv = [str(mqtt_io_python()), "-m", "mqtt_io", str(cfg)]
    else:
        cfg = collectd_config(env, sensors, interval, d)
        argv = ["collectd", "-f", "-C", str(cfg)]
    keep = CONFIGS / ("%s-%s%s" % (name, tag, cfg.suffix))
    keep.write_text(cfg.read_text())
    return PeerProc(name, argv, d / "log.txt")
