"""`edison-agent watch`: subscribes to the fleet with an operator's certificate and shows one row per board.

An operator tool, never imported by `run`. It reads what the boards publish (telemetry, the
retained status and health documents) and needs no board's private key: an operator
certificate (`edison-agent pki issue-operator`) may read `edison/#` under the ACL from `pki acl`.

Its MQTT session is persistent (a fixed client id, clean_session false), so the broker queues
readings for it across its own reconnects and a broker restart (with broker persistence), and no
reading is miscounted as lost because the watcher was away; on exit it unsubscribes, so nothing
queues for it while it is not running.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, List, Optional, Tuple

from agent.config import schema as config_module
from agent.mqtt import problems, tls
from agent.tools.watch import view as watch_view
from agent.tools.watch.fleet import Fleet

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

EXIT_OK, EXIT_UNREACHABLE, EXIT_CONFIG = 0, 1, 2

log = logging.getLogger(__name__)


def add_watch_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    watch = subparsers.add_parser("watch", help="a live table of the fleet: online, readings/s, loss, spool, "
                                  "certificates (an operator's certificate, not a board's)")
    watch.add_argument("-c", "--config", type=Path, help="broker and certificates from this file's mqtt section "
                       "(the agent's config format; its tls: an operator's certificate)")
    watch.add_argument("--host", help="the broker (overrides the config's)")
    watch.add_argument("--port", type=int, help="default: the config's, else 8883 (1883 without --cafile)")
    watch.add_argument("--cafile", type=Path, help="the CA that signed the broker's certificate")
    watch.add_argument("--cert", type=Path, help="an operator's client certificate (pki issue-operator)")
    watch.add_argument("--key", type=Path, help="its private key")
    watch.add_argument("--prefix", default="edison", help="the boards' topic root (default: %(default)s)")
    watch.add_argument("--client-id", help="default: edison-watch-USER-HOST (one watcher per id)")
    watch.add_argument("--once", action="store_true", help="watch for --duration seconds, print the table, exit "
                       "(Ctrl-C or SIGTERM ends the wait early)")
    watch.add_argument("--json", action="store_true", help="with --once: print JSON")
    watch.add_argument("--duration", type=float, default=3.0, help="with --once: seconds to watch (default 3)")
    watch.add_argument("--interval", type=float, default=1.0, help="seconds between redraws (default 1)")
    watch.set_defaults(func=run_watch)


def _broker(args: argparse.Namespace) -> Tuple[str, int, Optional[ssl.SSLContext]]:
    """Raises config.ConfigError (bad -c file or flags) or problems.TLSSetupError."""
    mqtt_config = config_module.load_mqtt(args.config) if args.config else None
    host = args.host or (mqtt_config.host if mqtt_config else None)
    if not host:
        raise config_module.ConfigError(["watch: give -c FILE (the agent's config format, its mqtt section) or "
                                         "--host with --cafile, --cert and --key"])
    tls_config = mqtt_config.tls if mqtt_config else None
    if args.cafile or args.cert or args.key:
        if bool(args.cert) != bool(args.key):
            raise config_module.ConfigError(["watch: --cert and --key go together (an operator's certificate "
                                             "and its key: edison-agent pki issue-operator)"])
        if args.cafile is None and tls_config is None:
            raise config_module.ConfigError(["watch: --cert needs --cafile (the CA of the broker's certificate)"])
        ca_file = args.cafile or (tls_config.ca_file if tls_config else None)
        assert ca_file is not None
        tls_config = config_module.TLSConfig(ca_file=ca_file, cert_file=args.cert, key_file=args.key,
                                             key_password=os.environ.get(config_module.KEY_PASSWORD_ENV) or None)
    default_port = 8883 if tls_config else 1883
    port = args.port or (mqtt_config.port if mqtt_config else default_port)
    context = tls.build_context(tls_config) if tls_config else None
    return host, port, context


def _client_id(args: argparse.Namespace) -> str:
    if args.client_id:
        return str(args.client_id)
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return "edison-watch-%s-%s" % (user, socket.gethostname())


class Watcher:
    """The watcher's MQTT session: subscribes after every connect, feeds the Fleet."""

    def __init__(self, fleet: Fleet, client_id: str, context: Optional[ssl.SSLContext]) -> None:
        self.fleet = fleet
        self.problem: Optional[str] = "connecting"
        self._ever_connected = False
        self._unsubscribed = threading.Event()
        # Imported here: the parser is built for every command but `run`, and only watch needs paho.
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                                  protocol=mqtt.MQTTv311)
        if context is not None:
            self.client.tls_set_context(context)
        self.client.reconnect_delay_set(1, 5)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_unsubscribe = lambda *args: self._unsubscribed.set()

    def start(self, host: str, port: int) -> None:
        """Raises OSError or ssl.SSLError when the first connect fails; later ones are retried."""
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self.problem = "the broker refused the connection: %s" % reason_code
            return
        if self._ever_connected and not getattr(flags, "session_present", False):
            # The broker forgot our session: what was published meanwhile never reaches us.
            self.fleet.lost_continuity()
        self._ever_connected = True
        self.problem = None
        client.subscribe([(f, 1) for f in self.fleet.filters])

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        self.problem = "disconnected (%s): reconnecting" % reason_code

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.fleet.message(msg.topic, bytes(msg.payload), retained=bool(msg.retain), redelivered=bool(msg.dup))

    def stop(self) -> None:
        # Nothing queues for this client id while no watcher runs.
        if self.problem is None:
            self._unsubscribed.clear()
            self.client.unsubscribe(self.fleet.filters)
            self._unsubscribed.wait(2.0)
        self.client.disconnect()
        self.client.loop_stop()


def run_watch(args: argparse.Namespace) -> int:
    try:
        host, port, context = _broker(args)
    except config_module.ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    except problems.TLSSetupError as exc:
        print("watch: %s" % exc, file=sys.stderr)
        return EXIT_CONFIG
    if args.json and not args.once:
        print("watch: --json goes with --once (a table redrawn in place is for people)", file=sys.stderr)
        return EXIT_CONFIG
    where = "%s:%d" % (host, port)
    fleet = Fleet(prefix=args.prefix)
    watcher = Watcher(fleet, _client_id(args), context)
    try:
        watcher.start(host, port)
    except (OSError, ssl.SSLError, ValueError) as exc:
        print("watch: %s" % problems.describe_failure(exc, host, port), file=sys.stderr)
        return EXIT_UNREACHABLE
    done = threading.Event()

    def finish(signum: int, frame: Optional[FrameType]) -> None:
        done.set()

    previous = [signal.signal(s, finish) for s in (signal.SIGINT, signal.SIGTERM)]
    try:
        if args.once:
            done.wait(max(0.0, args.duration))
            _print_once(fleet, where, args.json)
        else:
            _live(fleet, watcher, where, done, max(0.1, args.interval))
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
        watcher.stop()
    return EXIT_OK


def _print_once(fleet: Fleet, where: str, as_json: bool) -> None:
    rows = fleet.rows()
    now = time.time()
    if as_json:
        print(json.dumps({"broker": where, "time": round(now, 3), "boards": rows}, indent=1))
    else:
        print(watch_view.summary(rows, where, now))
        print("\n".join(watch_view.table(rows, now)))
    sys.stdout.flush()


def _live(fleet: Fleet, watcher: Watcher, where: str, done: threading.Event, interval: float) -> None:
    out = sys.stdout
    out.write(watch_view.ENTER)
    try:
        while not done.is_set():
            size = shutil.get_terminal_size()
            status = "connected; Ctrl-C to quit" if watcher.problem is None else watcher.problem
            lines: List[str] = watch_view.screen(fleet.rows(), where, status, time.time(), size.columns,
                                                 size.lines)
            out.write(watch_view.frame(lines))
            out.flush()
            done.wait(interval)
    finally:
        out.write(watch_view.LEAVE)
        out.flush()
