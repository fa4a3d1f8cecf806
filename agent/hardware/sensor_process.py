"""Each hardware sensor in a child process of its own, so a hung libmraa call costs only that sensor.

libmraa's Python binding holds the GIL for the whole of every call: an I2C read stuck for a
minute freezes every thread of the process that made it (the schedule, the MQTT session's
keepalive, the spool's commits, the watchdog). A thread cannot escape that; a process can. The
driver of each sensor that touches the board runs in a child, and the agent's side of it
(`ProcessSensor`) only waits on a pipe, which releases the GIL: a hung child blocks the one
worker thread waiting for it, the sampler reports the sensor as failed after its `timeout`, and
the reading comes through when the call returns.

The children are forked by multiprocessing's fork server, itself a fresh interpreter started
on first use: forking the agent itself once its threads run would copy locks held by them. The
fork server preloads the drivers and mraa, so a child starts in a fork, not an interpreter start.
A counter's interrupt thread lives in its child, next to the Gpio it watches.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from multiprocessing.connection import Connection
from typing import Any, Dict, List, Optional, Tuple

from agent.config.sensor_config import SensorConfig
from agent.hardware.board import Board, BoardError
from agent.hardware.sensors import DRIVERS, Sensor, SensorError, Value

log = logging.getLogger(__name__)

# A polite close waits this long for the child to release its pins before it is killed.
CLOSE_WAIT = 2.0

_context_lock = threading.Lock()
_context: Optional[Any] = None


def _fork_server() -> Any:
    global _context
    with _context_lock:
        if _context is None:
            context = multiprocessing.get_context("forkserver")
            # Imported once in the server, shared by every child; a module that is missing
            # (mraa off the board) is skipped by the server, and the child's import says why.
            context.set_forkserver_preload(["agent.hardware.sensor_process", "mraa"])
            _context = context
        return _context


def _serve(conn: Connection, kind: str, name: str, options: Any) -> None:
    """The child: one driver on the real board, driven by requests on `conn` until it closes."""
    # Ctrl-C in a terminal reaches the whole process group: only the agent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from agent.hardware.choose import open_board

    driver: Optional[Sensor] = None
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            # The agent is gone (or closed us): release the pins on the way out.
            request = "close"
        if request == "close":
            if driver is not None:
                try:
                    driver.close()
                except Exception:  # noqa: BLE001, S110 - the process ends now, releasing all it holds
                    pass
            break
        reply: Tuple[str, Any]
        try:
            if driver is None:
                driver = DRIVERS[kind](name, options, open_board("mraa"))
            if request == "setup":
                driver.setup()
                reply = ("ok", None)
            else:
                reply = ("ok", driver.read_all())
        except BoardError as exc:
            reply = ("board", str(exc))
        except SensorError as exc:
            reply = ("sensor", str(exc))
        except Exception as exc:  # noqa: BLE001 - a driver bug is this sensor's failure, reported as such
            reply = ("bug", "%s: %s" % (type(exc).__name__, exc))
        try:
            conn.send(reply)
        except OSError:
            break
    conn.close()


class ProcessSensor(Sensor):
    """A driver running in a child process; the sampler sees an ordinary, blocking sensor."""

    blocking = True

    def __init__(self, config: SensorConfig) -> None:
        super().__init__(config.name, config.options, board=Board())
        self._kind = config.type
        # One request at a time; close() from another thread takes it only when no read is under way.
        self._lock = threading.Lock()
        self._conn: Optional[Connection] = None
        self._process: Optional[Any] = None

    def _start(self) -> Connection:
        parent, child = multiprocessing.Pipe()
        process = _fork_server().Process(target=_serve, args=(child, self._kind, self.name, self.options),
                                         name="sensor-%s" % self.name, daemon=True)
        process.start()
        child.close()
        self._conn, self._process = parent, process
        log.debug("sensor %s: hardware process %d started", self.name, process.pid)
        return parent

    def _call(self, request: str) -> Any:
        with self._lock:
            conn = self._conn
            if conn is None:
                conn = self._start()
                if request != "setup":
                    self._ask(conn, "setup")
            return self._ask(conn, request)

    def _ask(self, conn: Connection, request: str) -> Any:
        try:
            conn.send(request)
            status, value = conn.recv()
        except (EOFError, OSError):
            code = self._forget()
            raise BoardError("sensor %s: its hardware process ended (exit code %s); a new one is started at "
                             "the next reading" % (self.name, code)) from None
        if status == "ok":
            return value
        if status == "board":
            raise BoardError(value)
        raise SensorError(value)

    def _forget(self) -> Optional[int]:
        conn, process = self._conn, self._process
        self._conn = self._process = None
        if conn is not None:
            conn.close()
        if process is None:
            return None
        process.join(CLOSE_WAIT)
        return process.exitcode  # type: ignore[no-any-return]

    def setup(self) -> None:
        self._call("setup")

    def read_all(self) -> Dict[str, Value]:
        values: Dict[str, Value] = self._call("read")
        return values

    def read(self) -> Value:
        return self.read_all()[""]

    def close(self) -> None:
        """Release the pins (the child closes its driver and exits); kill it if it does not."""
        if not self._lock.acquire(timeout=CLOSE_WAIT):
            # A read is under way, maybe hung: do not wait for it.
            self.abandon()
            return
        try:
            conn, process = self._conn, self._process
            self._conn = self._process = None
            if conn is not None:
                try:
                    conn.send("close")
                except OSError:
                    pass
                conn.close()
            if process is not None:
                process.join(CLOSE_WAIT)
                if process.is_alive():
                    process.kill()
                    process.join(CLOSE_WAIT)
        finally:
            self._lock.release()

    def abandon(self) -> None:
        """A read is still under way (a hung call): kill the child without waiting for it. The thread
        waiting on it then sees the pipe close and returns."""
        process = self._process
        if process is not None and process.is_alive():
            log.warning("sensor %s: killing its hardware process %d, whose call has not returned", self.name,
                        process.pid)
            process.kill()


def isolate(configs: Tuple[SensorConfig, ...], board: Board) -> List[Tuple[SensorConfig, Sensor]]:
    """The drivers for `configs`: on a real board, those that touch it each in a process of its own."""
    result: List[Tuple[SensorConfig, Sensor]] = []
    for cfg in configs:
        driver_type = DRIVERS[cfg.type]
        if board.isolated_calls and driver_type.uses_board:
            result.append((cfg, ProcessSensor(cfg)))
        else:
            result.append((cfg, driver_type(cfg.name, cfg.options, board)))
    return result
