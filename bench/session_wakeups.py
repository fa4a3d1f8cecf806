"""Wake-ups of the session's network thread per acknowledged reading, counted by the kernel.

    python bench/session_wakeups.py [--readings N] [--pace S]

One reading (QoS 1) at a time, from this thread, at a sensor's pace (the network thread is back
in select() between them): the network thread should wake about once a reading, for the PUBACK.
This figure was a test (tests/test_session_idle.py, "<= 15 wake-ups for 10 readings") until a
loaded machine showed 23: it is a cost, and costs belong here, not in the suite.
"""

from __future__ import annotations

import argparse
import getpass
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from run import free_port, switches_by_thread, wait_listening  # noqa: E402

from agent.config import schema as config  # noqa: E402
from agent.mqtt import tls  # noqa: E402
from agent.mqtt.session import Session  # noqa: E402
from agent.tools.pki import authority as pki  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readings", type=int, default=50)
    p.add_argument("--pace", type=float, default=0.1, help="seconds between readings")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pki.init_ca(work)
        broker = pki.issue_broker(work, "localhost", ips=["127.0.0.1"])
        device = pki.issue_device(work, "thunder10")
        port = free_port()
        conf = work / "mosquitto.conf"
        conf.write_text("user %s\npersistence false\n%s\n" % (getpass.getuser(), pki.mosquitto_listener(
            work / "ca.crt", broker.cert_file, broker.key_file, port=port, address="127.0.0.1")))
        proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_listening(port, proc)
            path = work / "agent.yaml"
            path.write_text(yaml.safe_dump({
                "device": {"id": "thunder10"}, "board": "simulated", "state_dir": str(work / "state"),
                "mqtt": {"host": "127.0.0.1", "port": port, "keepalive": 60,
                         "tls": {"ca_file": str(work / "ca.crt"), "cert_file": str(device.cert_file),
                                 "key_file": str(device.key_file)}},
                "sensors": [{"name": "t", "type": "analog", "pin": 0, "interval": 1}]}))
            cfg = config.load(path)
            assert cfg.mqtt.tls is not None
            session = Session(cfg.mqtt, tls.build_context(cfg.mqtt.tls))
            session.start()
            try:
                if not session.wait_connected(15):
                    print("not connected", file=sys.stderr)
                    return 1
                time.sleep(0.5)  # the online status is out and acknowledged
                # The session names its network thread; the kernel counts its sleeps.
                tid = next(t.native_id for t in threading.enumerate() if t.name == "mqtt-session")
                assert tid is not None  # a started thread has one
                before = switches_by_thread(os.getpid())[tid]
                for _ in range(args.readings):
                    acked = threading.Event()
                    session.publish("edison/thunder10/telemetry", b"x", qos=1, on_ack=acked.set)
                    acked.wait(10)
                    time.sleep(args.pace)
                woke = switches_by_thread(os.getpid())[tid] - before
            finally:
                session.stop(5)
        finally:
            proc.terminate()
            proc.wait(5)
    print("network-thread wake-ups per acknowledged reading: %.2f (%d for %d readings, %.2f s apart)"
          % (woke / args.readings, woke, args.readings, args.pace))
    return 0


if __name__ == "__main__":
    sys.exit(main())
