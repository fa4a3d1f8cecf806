"""Measured MQTT clients for bench/run.py, each run as its own process so its CPU is its own.

    python bench/clients.py MODE --port P --ca CA --cert CERT --key KEY [options]

Every mode prints one JSON object on stdout. CPU is taken from getrusage(RUSAGE_SELF)
(process, all threads) or time.thread_time() (single-threaded modes) around the measured
part only: interpreter start-up and imports are not counted.

modes:
  burst      one TLS session, loop_start(), N QoS 1 publishes, wait for every PUBACK (1c)
  paced      the same, paced at --rate messages/s for --seconds (1c at the agent's rate)
  reconnect  per message: connect + TLS handshake + CONNACK, publish QoS 1, PUBACK, disconnect (1d)
  connect    connection cost per variant (--variants), interleaved; wall and CPU to CONNACK
  idle       a minimal paho TLS client: connect, loop_start(), do nothing (footprint)
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import paho.mqtt.client as mqtt
import procstat  # bench/procstat.py: this script's own directory is on sys.path
from paho.mqtt.enums import CallbackAPIVersion

PAYLOAD = b"x" * 150
TOPIC = "bench/floor"


def switches_self() -> int:
    """Voluntary context switches of every live thread of this process (wake-ups after a wait)."""
    return sum(procstat.switches_by_thread("self").values())


def cpu_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class ResumingContext(ssl.SSLContext):
    """paho calls wrap_socket() without session=: add the saved one (what the agent would need)."""

    saved: Optional[ssl.SSLSession] = None
    resume = False

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        if self.resume and self.saved is not None and kwargs.get("session") is None:
            kwargs["session"] = self.saved
        return super().wrap_socket(sock, *args, **kwargs)


def context(args: argparse.Namespace, ca: str, cert: str, key: str, tls12: bool = False) -> ResumingContext:
    ctx = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(cert, key)
    return ctx


def nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def new_client(ctx: ssl.SSLContext, client_id: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    c.tls_set_context(ctx)
    c.on_socket_open = nodelay
    c.max_inflight_messages_set(20)
    return c


def connect_sync(c: mqtt.Client, host: str, port: int) -> None:
    """connect() (TCP + TLS handshake) then loop() until CONNACK, on this thread."""
    done = threading.Event()
    c.on_connect = lambda *a: done.set()
    c.connect(host, port, keepalive=60)
    while not done.is_set():
        if c.loop(timeout=1.0) != 0:
            raise SystemExit("connection lost before CONNACK")


def mode_burst(args: argparse.Namespace) -> Dict[str, Any]:
    ctx = context(args, args.ca, args.cert, args.key)
    c = new_client(ctx, "bench-burst")
    acked = 0
    all_acked = threading.Event()

    def on_publish(*a: Any) -> None:
        nonlocal acked
        acked += 1
        if acked >= args.count:
            all_acked.set()

    c.on_publish = on_publish
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.connect(args.host, args.port)
    c.loop_start()
    connected.wait(10)
    cpu0, t0, v0 = cpu_self(), time.monotonic(), switches_self()
    if args.rate:
        period = 1.0 / args.rate
        n = int(args.rate * args.seconds)
        all_acked.clear()
        args.count = n
        nxt = time.monotonic()
        for _ in range(n):
            c.publish(TOPIC, PAYLOAD, qos=1)
            nxt += period
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    else:
        for _ in range(args.count):
            c.publish(TOPIC, PAYLOAD, qos=1)
    all_acked.wait(60)
    cpu1, t1, v1 = cpu_self(), time.monotonic(), switches_self()
    c.disconnect()
    c.loop_stop()
    return {"cpu_s": cpu1 - cpu0, "wall_s": t1 - t0, "acked": acked, "wakeups": v1 - v0}


def mode_reconnect(args: argparse.Namespace) -> Dict[str, Any]:
    ctx = context(args, args.ca, args.cert, args.key)
    c = new_client(ctx, "bench-reconnect")
    acked = [0]
    c.on_publish = lambda *a: acked.__setitem__(0, acked[0] + 1)
    cpu0, t0 = cpu_self(), time.monotonic()
    for _ in range(args.count):
        connect_sync(c, args.host, args.port)
        want = acked[0] + 1
        c.publish(TOPIC, PAYLOAD, qos=1)
        while acked[0] < want:
            if c.loop(timeout=1.0) != 0:
                raise SystemExit("lost before PUBACK")
        c.disconnect()
        c.loop(timeout=0.01)
    cpu1, t1 = cpu_self(), time.monotonic()
    return {"cpu_s": cpu1 - cpu0, "wall_s": t1 - t0, "acked": acked[0]}


def mode_connect(args: argparse.Namespace) -> Dict[str, Any]:
    """Each variant: (name, port, ca, cert, key, tls12, resume). Interleaved, one connect each per pass."""
    variants = json.loads(args.variants)
    # (variant, its context or None for plain MQTT, the client); Any: the agent's ClientContext or the bench's own.
    state: List[Tuple[Dict[str, Any], Any, mqtt.Client]] = []
    for v in variants:
        if v.get("agent"):
            # The agent's own context (agent/mqtt/tls.py), with its remember_session() after CONNACK.
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
            from agent.config.schema import TLSConfig
            from agent.mqtt.tls import build_context
            actx = build_context(TLSConfig(ca_file=Path(v["ca"]), cert_file=Path(v["cert"]),
                                           key_file=Path(v["key"]), min_version="1.2"))
            state.append((v, actx, new_client(actx, "bench-conn-%s" % v["name"])))
            continue
        if v.get("plain"):
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-conn-%s" % v["name"],
                            protocol=mqtt.MQTTv311)
            c.on_socket_open = nodelay
            state.append((v, None, c))
            continue
        ctx = context(args, v["ca"], v["cert"], v["key"], tls12=v["tls12"])
        ctx.resume = v["resume"]
        state.append((v, ctx, new_client(ctx, "bench-conn-%s" % v["name"])))
    out: Dict[str, Dict[str, List[Any]]] = {v["name"]: {"wall": [], "cpu": [], "reused": [], "version": []}
                                           for v in variants}
    for i in range(args.count + 1):
        for v, ctx, c in state:
            t0, cpu0 = time.perf_counter(), time.thread_time()
            connect_sync(c, args.host, v["port"])
            cpu1, t1 = time.thread_time(), time.perf_counter()
            sock: Any = c.socket()
            if v.get("agent"):
                if v["resume"]:
                    ctx.remember_session(sock)
            elif ctx is not None:
                # After CONNACK the TLS 1.3 ticket has been read: save the session for the next connect.
                ctx.saved = sock.session
            if i > 0:  # the first pass warms caches and gets the first ticket
                r = out[v["name"]]
                r["wall"].append(t1 - t0)
                r["cpu"].append(cpu1 - cpu0)
                r["reused"].append(bool(sock.session_reused) if ctx is not None else False)
                r["version"].append(sock.version() if ctx is not None else "none")
            c.disconnect()
            c.loop(timeout=0.01)
    return out


def mode_idle(args: argparse.Namespace) -> Dict[str, Any]:
    ctx = context(args, args.ca, args.cert, args.key)
    c = new_client(ctx, "bench-idle")
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.connect(args.host, args.port)
    c.loop_start()
    connected.wait(10)
    print(json.dumps({"ready": True}), flush=True)
    # Idle until stdin closes (the bench measures this process from outside).
    sys.stdin.read()
    c.disconnect()
    c.loop_stop()
    return {}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["burst", "paced", "reconnect", "connect", "idle"])
    p.add_argument("--host", default="localhost")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--ca", default="")
    p.add_argument("--cert", default="")
    p.add_argument("--key", default="")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--rate", type=float, default=0.0)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--variants", default="[]")
    args = p.parse_args()
    fn = {"burst": mode_burst, "paced": mode_burst, "reconnect": mode_reconnect,
          "connect": mode_connect, "idle": mode_idle}[args.mode]
    print(json.dumps(fn(args)), flush=True)


if __name__ == "__main__":
    main()
