"""Wires config, board, sensors, sampler, spool, uplink and session; owns signals, reload and shutdown."""

from __future__ import annotations

import datetime
import hashlib
import logging
import signal
import ssl
import threading
import time
from pathlib import Path
from types import FrameType
from typing import List, Optional, Tuple

from agent import config as config_module
from agent import tls
from agent.board import Board, BoardUnavailable, open_board
from agent.config import AgentConfig, MQTTConfig
from agent.health import Health
from agent.notify import Notifier
from agent.reading import Sample
from agent.sampler import Sampler
from agent.sensor_config import SensorConfig
from agent.sensors import DRIVERS, Sensor
from agent.session import Session
from agent.spool import Spool
from agent.uplink import Uplink

log = logging.getLogger(__name__)

# How often the status line is refreshed when systemd listens but has no watchdog for us.
STATUS_INTERVAL = 10.0


class Agent:
    """Everything `edison-agent run` starts, built from a validated config."""

    def __init__(self, config: AgentConfig, ssl_context: Optional[ssl.SSLContext], board: Board,
                 notifier: Notifier) -> None:
        self.config = config
        self.board = board
        self.notifier = notifier
        self.stop_event = threading.Event()
        self._stopping = False
        self._reload_requested = False
        self._tls_fingerprint = _fingerprint(config.mqtt)
        sc = config.spool
        self.spool = Spool(sc.path, sc.max_bytes, sc.max_age, sc.commit_interval) if sc else Spool()
        self.session = Session(config.mqtt, ssl_context, on_io=self._pump)
        self.uplink = self._new_uplink(config, self.session)
        self.sampler = Sampler(_drivers(config.sensors, board), self._record)
        self.health = Health(self.session, self.spool, self.uplink, notifier)

    def _new_uplink(self, config: AgentConfig, session: Session) -> Uplink:
        m = config.mqtt
        return Uplink(self.spool, session, config.device_id, m.topic, m.qos, window=m.inflight, batch=config.batch)

    def _record(self, sample: Sample) -> None:
        self.spool.append(sample)
        self.uplink.pump()

    def _pump(self) -> None:
        self.uplink.pump()

    def run(self) -> int:
        self.session.start()
        self.notifier.ready(self.health.status_line())
        while True:
            # The sampler's publishes are written just before it sleeps (Session.defer_writes).
            session = self.session
            session.defer_writes(True)
            try:
                self.sampler.run(self.stop_event, on_tick=self.health.tick, tick_interval=self._tick_interval(),
                                 before_sleep=session.flush)
            finally:
                session.defer_writes(False)
            if self._stopping or not self._reload_requested:
                break
            self._reload_requested = False
            self.stop_event.clear()
            self.reload()
        self.notifier.stopping("stopping: delivering what is in flight")
        self.sampler.close()
        return self.shutdown()

    def _tick_interval(self) -> Optional[float]:
        if self.notifier.watchdog_interval:
            return min(self.notifier.watchdog_interval, STATUS_INTERVAL)
        return STATUS_INTERVAL if self.notifier.enabled else None

    def shutdown(self) -> int:
        deadline = time.monotonic() + self.config.shutdown_timeout
        if not self.uplink.drain(self.config.shutdown_timeout * 0.6):
            if self.spool.stats().durable:
                log.warning("stopping with %d readings not yet acknowledged: they stay in the spool and are "
                            "sent first at the next start", self.spool.depth)
            else:
                log.warning("stopping with %d readings not acknowledged, and the spool is in memory only: "
                            "they are lost", self.spool.depth)
        self.session.stop(max(0.5, deadline - time.monotonic()))
        self.spool.close()
        log.info("stopped: %d readings delivered", self.uplink.delivered)
        return 0

    def request_stop(self, signum: int, frame: Optional[FrameType]) -> None:
        log.info("%s received: delivering what is in flight, then going offline", signal.Signals(signum).name)
        self._stopping = True
        self.stop_event.set()

    def request_reload(self, signum: int, frame: Optional[FrameType]) -> None:
        log.info("SIGHUP received: reloading %s", self.config.path)
        self._reload_requested = True
        self.stop_event.set()

    def reload(self) -> None:
        """Apply a new config; an invalid one is rejected with its errors and the running one stays."""
        self.notifier.reloading()
        try:
            new = config_module.load(self.config.path)
            ssl_context = tls.build_context(new.mqtt.tls) if new.mqtt.tls else None
            board = self.board if new.board == self.config.board else open_board(new.board)
        except config_module.ConfigError as exc:
            problems = exc.problems
        except (tls.TLSSetupError, BoardUnavailable) as exc:
            problems = ["%s: %s" % (self.config.path, exc)]
        else:
            problems = []
        if problems:
            for problem in problems:
                log.error("reload rejected, still running the previous config: %s", problem)
            self.notifier.ready(self.health.status_line())
            return
        old, changed = self.config, []
        if new.sensors != old.sensors or board is not self.board:
            self.sampler.close()
            self.sampler = Sampler(_drivers(new.sensors, board), self._record)
            self.board = board
            changed.append("sensors")
        fingerprint = _fingerprint(new.mqtt)
        if new.mqtt != old.mqtt or fingerprint != self._tls_fingerprint:
            self._replace_session(new, ssl_context)
            self._tls_fingerprint = fingerprint
            changed.append("broker session (reconnected)")
        elif (new.device_id, new.batch) != (old.device_id, old.batch):
            self._replace_uplink(new, self.session)
            changed.append("batching")
        if new.spool != old.spool or new.state_dir != old.state_dir:
            log.warning("spool and state_dir changes take effect at the next restart")
        if new.log_level != old.log_level:
            logging.getLogger().setLevel(new.log_level.upper())
            changed.append("log level")
        self.config = new
        log.info("reloaded %s: %s", new.path, ", ".join(changed) or "nothing changed")
        self.notifier.ready(self.health.status_line())

    def _replace_session(self, new: AgentConfig, ssl_context: Optional[ssl.SSLContext]) -> None:
        old_session = self.session
        session = Session(new.mqtt, ssl_context, on_io=self._pump)
        self.uplink.retire()
        old_session.stop(timeout=min(5.0, new.shutdown_timeout))
        # What the old session had in flight is sent again by the new one, in order.
        self.spool.release_in_flight()
        self._replace_uplink(new, session)
        self.session = self.health.session = session
        session.start()

    def _replace_uplink(self, new: AgentConfig, session: Session) -> None:
        delivered = self.uplink.delivered
        self.uplink = self.health.uplink = self._new_uplink(new, session)
        self.uplink.delivered = delivered


def _fingerprint(mqtt: MQTTConfig) -> str:
    """The certificate files' contents: a rotated certificate under the same name is a change."""
    digest = hashlib.sha256()
    if mqtt.tls is not None:
        for path in (mqtt.tls.ca_file, mqtt.tls.cert_file, mqtt.tls.key_file):
            if path is not None:
                try:
                    digest.update(Path(path).read_bytes())
                except OSError:
                    digest.update(b"unreadable")
    return digest.hexdigest()


def _drivers(configs: Tuple[SensorConfig, ...], board: Board) -> List[Tuple[SensorConfig, Sensor]]:
    return [(cfg, DRIVERS[cfg.type](cfg.name, cfg.options, board)) for cfg in configs]


def run(config: AgentConfig) -> int:
    """The daemon's life; raises tls.TLSSetupError, board.BoardUnavailable or spool.SpoolBusy for the CLI."""
    cfg = config.mqtt
    ssl_context = None
    if cfg.tls is None:
        log.warning("mqtt.tls is not set: readings and the client's identity cross the network in clear text")
    else:
        ssl_context = tls.build_context(cfg.tls)
        _warn_about_dates(cfg.tls.cert_file)
    board = open_board(config.board)
    log.info("device %s on %s with %d sensors", config.device_id, board.name, len(config.sensors))
    agent = Agent(config, ssl_context, board, Notifier.from_environment())
    signal.signal(signal.SIGTERM, agent.request_stop)
    signal.signal(signal.SIGINT, agent.request_stop)
    signal.signal(signal.SIGHUP, agent.request_reload)
    return agent.run()


def _warn_about_dates(cert_file: Optional[Path]) -> None:
    if cert_file is None:
        return
    dates = tls.certificate_dates(str(cert_file))
    if dates is None:
        return
    problem = tls.check_validity(*dates)
    if problem is not None:
        log.error("client certificate %s is %s: the broker will refuse it", cert_file, problem)
        return
    not_after = dates[1]
    days = (not_after - datetime.datetime.now(datetime.timezone.utc)).days
    if days < 30:
        log.warning("client certificate %s expires in %d days (%s UTC): renew it ('edison-agent pki renew')",
                    cert_file, days, not_after.strftime("%Y-%m-%d %H:%M"))
    else:
        log.info("client certificate %s expires in %d days (%s UTC)", cert_file, days,
                 not_after.strftime("%Y-%m-%d"))
