"""Wires config, board, sensors, sampler, spool, uplink and session; owns signals, reload and shutdown."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import signal
import ssl
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Dict, List, Optional, Tuple

from agent.config import overlay, targets
from agent.config import schema as config_module
from agent.config.schema import AgentConfig, MQTTConfig
from agent.config.sensor_config import SensorConfig
from agent.delivery.spool import Spool
from agent.delivery.uplink import Uplink
from agent.hardware import sensor_process
from agent.hardware.board import Board, BoardUnavailable
from agent.hardware.choose import open_board
from agent.hardware.sensors import Sensor
from agent.mqtt import tls
from agent.mqtt.session import ConnectionInfo, Session
from agent.sampling.reading import Sample
from agent.sampling.sampler import Alarm, Sampler
from agent.service import health_report
from agent.service.commands import Commands
from agent.service.discovery import Discovery
from agent.service.health import Health
from agent.service.notify import Notifier
from agent.service.reload import Acknowledgement

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
        # An Alarm, not a plain Event: a command ringing it wakes the schedule without stopping it.
        self.stop_event = Alarm()
        self._stopping = False
        self._reload_requested = False
        # The thread running the sampler's schedule (run()), once it runs.
        self._schedule_thread: Optional[int] = None
        self._tls_fingerprint = _fingerprint(config.mqtt)
        sc = config.spool
        self.spool = Spool(sc.path, sc.max_bytes, sc.max_age, sc.commit_interval) if sc else Spool()
        # A run's seqs start here; the status and the health document announce it (docs/delivery.md).
        self.seq_start = self.spool.next_seq
        self.session = Session(config.mqtt, ssl_context, on_io=self._pump, on_connected=self._connected,
                               online=health_report.online_status(self.seq_start, simulated=board.simulated))
        self.uplink = self._new_uplink(config, self.session)
        self.discovery = Discovery(config, board.name)
        # Intervals set by command: the persisted ones are in the overlay file too; all of them
        # outlive a reload, only the overlay's outlive a restart.
        self._overlay_path = overlay.path_in(config.state_dir)
        self._intervals_lock = threading.Lock()
        self._command_intervals: Dict[str, float] = {}
        self._sensors = self._effective_sensors(config)
        self.sampler = Sampler(_drivers(self._sensors, board), self._record)
        self.health = Health(self.session, self.spool, self.uplink, notifier)
        self._init_health_report()
        self.commands: Optional[Commands] = None
        if config.commands.enabled:
            self.commands = Commands(config.commands, self, self._reply)
            self._subscribe_commands(self.session)

    def _init_health_report(self) -> None:
        self._started = time.monotonic()
        self._config_digest = health_report.config_hash(self.config.path)
        self._cert_not_after = health_report.certificate_expiry(self.config)
        self._health_file = health_report.HealthFile(self.config.health.file)
        # Beside the health file: what `edison-agent reload` (ExecReload=) waits for.
        self._reload_ack = Acknowledgement(self.config.health.file.parent)
        self._next_health: Optional[float] = None
        # Whether the last connect resumed a TLS session (None before one, or over plain MQTT).
        self._resumed: Optional[bool] = None
        self._count_lock = threading.Lock()
        self._health_lock = threading.Lock()
        self.sampled = 0
        # The last warning or error logged, for the document; daemon.run() attaches it.
        self.errors = health_report.LastErrorHandler()

    def _new_uplink(self, config: AgentConfig, session: Session) -> Uplink:
        m = config.mqtt
        return Uplink(self.spool, session, config.device_id, m.topic, m.qos, window=m.inflight, batch=config.batch)

    def _record(self, sample: Sample) -> None:
        # On the schedule's thread the readings wait for the end of the wake-up (_end_of_wakeup),
        # so those of one wake-up leave in one message, at the moment the first of them would
        # have been written anyway (the session defers this thread's writes to then). A worker
        # thread's read (a blocking driver) has no such moment here: it is sent at once.
        on_schedule = threading.get_ident() == self._schedule_thread
        if on_schedule:
            self.uplink.hold()
        reading = self.spool.append(sample)
        with self._count_lock:
            self.sampled += 1
        if not on_schedule:
            self.uplink.pump()
        # Home Assistant's per-channel state: the latest value, QoS 0 (the telemetry is the record).
        state = self.discovery.state(reading)
        if state is not None:
            self.session.publish(state[0], state[1], qos=0, retain=True)

    def _end_of_wakeup(self) -> None:
        self.uplink.release()
        self.session.flush()

    def _pump(self) -> None:
        self.uplink.pump()

    def _connected(self, info: ConnectionInfo) -> None:
        # On the network thread, right after a CONNACK: the document is small and the file
        # lives on tmpfs, so publishing here does not hold the session up.
        self._resumed = info.resumed if info.tls_version else None
        self.discovery.announce(self.session)
        self.publish_health()

    def publish_health(self) -> None:
        """Build the health document, publish it retained (QoS 1) if connected, and write health.file."""
        # One at a time, so an older document built on another thread never lands after a newer one.
        with self._health_lock:
            report = self._health_report()
            # Judged from the document itself: a document built a moment before CONNACK says
            # "disconnected" and must not become the retained one.
            if report.connection.state == health_report.CONNECTED:
                self.session.publish(self.config.mqtt.health_topic, report.to_json().encode("utf-8"), qos=1,
                                     retain=True)
            self._health_file.write(report)

    def _health_report(self, stopped: bool = False) -> health_report.HealthReport:
        return health_report.gather(self.config, self.session, self.spool, sampled=self.sampled,
                                    delivered=self.uplink.delivered, started=self._started,
                                    config_digest=self._config_digest, resumed=self._resumed,
                                    last_error=self.errors.last, cert_not_after=self._cert_not_after,
                                    stopped=stopped, simulated=self.board.simulated, seq_start=self.seq_start)

    def _tick(self) -> None:
        if self.notifier.enabled:
            self.health.tick()
        # Due on the tick nearest the schedule: a tick may come half a tick interval early.
        now, interval = time.monotonic(), self.config.health.interval
        if self._next_health is None or now >= self._next_health - self._tick_interval() / 2:
            self._next_health = (self._next_health or now) + interval
            if self._next_health < now:
                self._next_health = now + interval
            self.publish_health()

    def run(self) -> int:
        if self.commands is not None:
            self.commands.start()
        self.session.start()
        self.notifier.ready(self.health.status_line())
        self._schedule_thread = threading.get_ident()
        while True:
            # The sampler's readings are handed to the session, and its publishes written, just
            # before it sleeps (_end_of_wakeup, Session.defer_writes).
            session = self.session
            session.defer_writes(True)
            try:
                self.sampler.run(self.stop_event, on_tick=self._tick, tick_interval=self._tick_interval(),
                                 before_sleep=self._end_of_wakeup)
            finally:
                # The last wake-up's readings, when a stop or reload ended it before its sleep.
                self.uplink.release()
                session.defer_writes(False)
            if self._stopping or not self._reload_requested:
                break
            self._reload_requested = False
            self.stop_event.clear()
            self.reload()
        self.notifier.stopping("stopping: delivering what is in flight")
        self.sampler.close()
        return self.shutdown()

    def _tick_interval(self) -> float:
        interval = self.config.health.interval
        if self.notifier.watchdog_interval:
            return min(self.notifier.watchdog_interval, STATUS_INTERVAL, interval)
        return min(STATUS_INTERVAL, interval) if self.notifier.enabled else interval

    def shutdown(self) -> int:
        deadline = time.monotonic() + self.config.shutdown_timeout
        if not self.uplink.drain(self.config.shutdown_timeout * 0.6):
            if self.spool.stats().durable:
                log.warning("stopping with %d readings not yet acknowledged: they stay in the spool and are "
                            "sent first at the next start", self.spool.depth)
            else:
                log.warning("stopping with %d readings not acknowledged, and the spool is in memory only: "
                            "they are lost", self.spool.depth)
        if self.commands is not None:
            self.commands.stop()
        self.session.stop(max(0.5, deadline - time.monotonic()))
        self._health_file.write(self._health_report(stopped=True))
        self.spool.close()
        log.info("stopped: %d readings delivered", self.uplink.delivered)
        return 0

    def request_stop(self, signum: int, frame: Optional[FrameType]) -> None:
        log.info("%s received: delivering what is in flight, then going offline", signal.Signals(signum).name)
        self._stopping = True
        self.stop_event.set()

    def request_reload(self, signum: int, frame: Optional[FrameType]) -> None:
        self.schedule_reload("SIGHUP received")

    def schedule_reload(self, why: str) -> None:
        """Reload on the main thread as soon as it comes round (from a signal or a command)."""
        log.info("%s: reloading %s", why, self.config.path)
        self._reload_requested = True
        self.stop_event.set()

    # -- what commands act on (the command worker's thread) -------------------------------

    def request_read(self, sensor: Optional[str]) -> List[str]:
        return self.sampler.request_read(sensor)

    def set_interval(self, sensor: str, seconds: float, persist: bool) -> None:
        self.sampler.set_interval(sensor, seconds)
        with self._intervals_lock:
            self._command_intervals[sensor] = seconds
            self._sensors = tuple(_with_interval(s, seconds) if s.name == sensor else s for s in self._sensors)
            if persist:
                saved = overlay.load(self._overlay_path)
                saved[sensor] = seconds
                overlay.save(self._overlay_path, saved)
        log.info("sensor %s: interval set to %g s by command%s", sensor, seconds,
                 ", saved in %s" % self._overlay_path if persist else " (until restart)")

    def _reply(self, topic: str, payload: bytes, correlation: Optional[bytes]) -> bool:
        return self.session.reply(topic, payload, correlation)

    def _subscribe_commands(self, session: Session) -> None:
        if self.commands is not None:
            session.subscribe(self.commands.subscription, 1, self.commands.on_message)

    def _effective_sensors(self, config: AgentConfig) -> Tuple[SensorConfig, ...]:
        """The config's sensors with the overlay's intervals, then those set by command since the start."""
        sensors = overlay.apply(config.sensors, overlay.load(self._overlay_path), str(self._overlay_path))
        with self._intervals_lock:
            return overlay.apply(sensors, self._command_intervals, "a set-interval command")

    def reload(self) -> None:
        """Apply a new config; an invalid one is rejected with its errors and the running one stays."""
        # Before the config is read: a waiter that signalled earlier than this sees its config applied.
        started = time.monotonic()
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
            self._reload_ack.write(started, problems)
            return
        old, changed = self.config, []
        was_simulated = self.board.simulated
        sensors = self._effective_sensors(new)
        if sensors != self._sensors or board is not self.board:
            self.sampler.close()
            self.sampler = Sampler(_drivers(sensors, board), self._record)
            self._sensors = sensors
            self.board = board
            changed.append("sensors")
        fingerprint = _fingerprint(new.mqtt)
        # A board that became (or stopped being) simulated changes the retained online status.
        if new.mqtt != old.mqtt or fingerprint != self._tls_fingerprint or board.simulated != was_simulated:
            self._replace_session(new, ssl_context)
            self._tls_fingerprint = fingerprint
            self._cert_not_after = health_report.certificate_expiry(new)
            changed.append("broker session (reconnected)")
        elif (new.device_id, new.batch) != (old.device_id, old.batch):
            self.uplink.rebatch(new.device_id, new.batch)
            changed.append("batching")
        if new.spool != old.spool or new.state_dir != old.state_dir or new.commands != old.commands:
            log.warning("spool, state_dir and commands changes take effect at the next restart")
        if new.log_level != old.log_level:
            logging.getLogger().setLevel(new.log_level.upper())
            changed.append("log level")
        if new.health != old.health:
            self._health_file = health_report.HealthFile(new.health.file)
            self._reload_ack = Acknowledgement(new.health.file.parent)
            self._next_health = None
            changed.append("health")
        self.config = new
        self._config_digest = health_report.config_hash(new.path)
        self.discovery = Discovery(new, self.board.name)
        if new.homeassistant != old.homeassistant:
            changed.append("home assistant")
        if self.session.connected:
            # Announces the new config's entities and clears those it no longer has.
            self.discovery.announce(self.session)
        log.info("reloaded %s: %s", new.path, ", ".join(changed) or "nothing changed")
        self.notifier.ready(self.health.status_line())
        self.publish_health()
        self._reload_ack.write(started, [])

    def _replace_session(self, new: AgentConfig, ssl_context: Optional[ssl.SSLContext]) -> None:
        old_session = self.session
        session = Session(new.mqtt, ssl_context, on_io=self._pump, resume_from=old_session,
                          on_connected=self._connected,
                          online=health_report.online_status(self.seq_start, simulated=self.board.simulated))
        self.uplink.retire()
        old_session.stop(timeout=min(5.0, new.shutdown_timeout))
        # What the old session had in flight is sent again by the new one, in order.
        self.spool.release_in_flight()
        self._replace_uplink(new, session)
        self.session = self.health.session = session
        self._subscribe_commands(session)
        session.start()

    def _replace_uplink(self, new: AgentConfig, session: Session) -> None:
        delivered = self.uplink.delivered
        self.uplink = self.health.uplink = self._new_uplink(new, session)
        self.uplink.delivered = delivered


def _with_interval(sensor: SensorConfig, seconds: float) -> SensorConfig:
    return dataclasses.replace(sensor, interval=seconds)


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
    # On libmraa, each hardware sensor in a process of its own: a hung call costs only that sensor.
    return sensor_process.isolate(configs, board)


def run(config: AgentConfig) -> int:
    """The daemon's life; raises tls.TLSSetupError, board.BoardUnavailable or spool.SpoolBusy for the CLI."""
    cfg = config.mqtt
    ssl_context = None
    if cfg.tls is None:
        log.warning("mqtt.tls is not set: readings and the client's identity cross the network in clear text")
    else:
        ssl_context = tls.build_context(cfg.tls)
        _warn_about_dates(cfg.tls.cert_file)
    # What check-config would have said: the journal should show it too, since most people skip it.
    for warning in targets.warnings_for(config):
        log.warning("%s: %s", config.path, warning)
    board = open_board(config.board)
    log.info("device %s on %s with %d sensors", config.device_id, board.name, len(config.sensors))
    agent = Agent(config, ssl_context, board, Notifier.from_environment())
    signal.signal(signal.SIGTERM, agent.request_stop)
    signal.signal(signal.SIGINT, agent.request_stop)
    signal.signal(signal.SIGHUP, agent.request_reload)
    logging.getLogger("agent").addHandler(agent.errors)
    try:
        return agent.run()
    finally:
        logging.getLogger("agent").removeHandler(agent.errors)


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
