"""Wires config, board, sensors, sampler, spool, uplink and session; owns signals, reload and shutdown."""

from __future__ import annotations

import dataclasses
import datetime
import gc
import hashlib
import logging
import signal
import ssl
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, List, Optional, Tuple

from agent.config import schema as config_module
from agent.config import targets
from agent.config.schema import AgentConfig, MQTTConfig
from agent.config.sensor_config import SensorConfig
from agent.delivery.spool import Spool
from agent.delivery.uplink import Uplink
from agent.errors import CertificateError, HardwareError
from agent.hardware import sensor_process
from agent.hardware.board import Board
from agent.hardware.choose import open_board
from agent.hardware.sensors import Sensor
from agent.mqtt import tls
from agent.mqtt.session import Session
from agent.sampling.reading import Sample
from agent.sampling.sampler import Alarm, Sampler
from agent.service import health_report
from agent.service.discovery import Discovery
from agent.service.health import Health
from agent.service.intervals import SensorIntervals
from agent.service.notify import Notifier
from agent.service.reload import Acknowledgement
from agent.service.reporter import Reporter

if TYPE_CHECKING:
    from agent.service.commands import Commands

log = logging.getLogger(__name__)

# How often the status line is refreshed when systemd listens but has no watchdog for us.
STATUS_INTERVAL = 10.0
# What a signal or a command asked the schedule's loop for.
RELOAD, STOP = "reload", "stop"


class Agent:
    """Everything `edison-agent run` starts, built from a validated config and wired once: the
    session, spool, uplink and reporter live as long as the agent; a reload reconfigures them."""

    def __init__(self, config: AgentConfig, ssl_context: Optional[ssl.SSLContext], board: Board,
                 notifier: Notifier) -> None:
        self.config = config
        self.board = board
        self.notifier = notifier
        # An Alarm, not a plain Event: a command ringing it wakes the schedule without stopping it.
        self.stop_event = Alarm()
        # What ended the schedule's run: None, RELOAD or STOP (a stop outranks a reload).
        self._request: Optional[str] = None
        # The thread running the sampler's schedule (run()), once it runs.
        self._schedule_thread: Optional[int] = None
        self._tls_fingerprint = _fingerprint(config.mqtt)
        sc = config.spool
        self.spool = Spool(sc.path, sc.max_bytes, sc.max_age, sc.commit_interval)
        # A run's seqs start here; the status and the health document announce it (docs/delivery.md).
        seq_start = self.spool.next_seq
        self.session = Session(config.mqtt, ssl_context, online=self._online_status(seq_start))
        m = config.mqtt
        self.uplink = Uplink(self.spool, self.session, config.device_id, m.topic, m.qos, window=m.inflight,
                             batch=config.batch)
        self.reporter = Reporter(health_report.Facts.of(config, time.monotonic(), seq_start, board.simulated),
                                 self.session, self.spool, self.uplink, Discovery(config, board.name))
        self.session.listen(self.reporter)
        self._intervals = SensorIntervals(config.state_dir)
        self._intervals.current = self._intervals.effective(config)
        self.sampler = Sampler(_drivers(self._intervals.current, board), self._record)
        self.health = Health(self.session, self.spool, self.uplink, notifier)
        # Beside the health file: what `edison-agent reload` (ExecReload=) waits for.
        self._reload_ack = Acknowledgement(config.health.file.parent)
        self.commands: Optional[Commands] = None
        if config.commands.enabled:
            # Imported only here: off by default, and its code would be held for the whole run.
            from agent.service.commands import Commands
            self.commands = Commands(config.commands, self, self.session.reply)
            self.session.subscribe(self.commands.subscription, 1, self.commands.on_message)

    @property
    def sensors(self) -> Tuple[SensorConfig, ...]:
        """The sensors sampled: the config's, with the overlay's and the commands' intervals."""
        return self._intervals.current

    def _online_status(self, seq_start: int) -> bytes:
        return health_report.online_status(seq_start, simulated=self.board.simulated)

    def _record(self, sample: Sample) -> None:
        # On the schedule's thread the readings wait for the end of the wake-up (_end_of_wakeup),
        # so those of one wake-up leave in one message, at the moment the first of them would
        # have been written anyway (the session defers this thread's writes to then). A worker
        # thread's read (a blocking driver) has no such moment here: it is sent at once.
        on_schedule = threading.get_ident() == self._schedule_thread
        if on_schedule:
            self.uplink.hold()
        reading = self.spool.append(sample)
        if not on_schedule:
            self.uplink.pump()
        self.reporter.sampled(reading)

    def _end_of_wakeup(self) -> None:
        self.uplink.release()
        self.session.flush()

    def publish_health(self) -> None:
        """The `health` command: the document now."""
        self.reporter.publish()

    def _tick(self) -> None:
        if self.notifier.enabled:
            self.health.tick()
        self.reporter.tick(self._tick_interval())

    def run(self) -> int:
        if self.commands is not None:
            self.commands.start()
        self.session.start()
        self.notifier.ready(self.health.status_line())
        self._schedule_thread = threading.get_ident()
        while True:
            # The sampler's readings are handed to the session, and its publishes written, just
            # before it sleeps (_end_of_wakeup, Session.defer_writes).
            self.session.defer_writes(True)
            try:
                self.sampler.run(self.stop_event, on_tick=self._tick, tick_interval=self._tick_interval(),
                                 before_sleep=self._end_of_wakeup)
            finally:
                # The last wake-up's readings, when a stop or reload ended it before its sleep.
                self.uplink.release()
                self.session.defer_writes(False)
            if self._request != RELOAD:
                break
            self._request = None
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
        self.uplink.retire()  # its partial-batch thread ends with it
        self.reporter.stopped()
        self.spool.close()
        log.info("stopped: %d readings delivered", self.uplink.delivered)
        return 0

    def request_stop(self, signum: int, frame: Optional[FrameType]) -> None:
        log.info("%s received: delivering what is in flight, then going offline", signal.Signals(signum).name)
        self._request = STOP
        self.stop_event.set()

    def request_reload(self, signum: int, frame: Optional[FrameType]) -> None:
        self.schedule_reload("SIGHUP received")

    def schedule_reload(self, why: str) -> None:
        """Reload on the main thread as soon as it comes round (from a signal or a command)."""
        log.info("%s: reloading %s", why, self.config.path)
        if self._request != STOP:
            self._request = RELOAD
        self.stop_event.set()

    # -- what commands act on (the command worker's thread) -------------------------------

    def request_read(self, sensor: Optional[str]) -> List[str]:
        return self.sampler.request_read(sensor)

    def set_interval(self, sensor: str, seconds: float, persist: bool) -> None:
        self.sampler.set_interval(sensor, seconds)
        self._intervals.set(sensor, seconds, persist)

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
        except (CertificateError, HardwareError) as exc:  # a key that does not load, no mraa
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
        sensors = self._intervals.effective(new)
        if sensors != self._intervals.current or board is not self.board:
            self.sampler.close()
            self.sampler = Sampler(_drivers(sensors, board), self._record)
            self._intervals.current = sensors
            self.board = board
            changed.append("sensors")
        fingerprint = _fingerprint(new.mqtt)
        facts = self.reporter.facts
        # A board that became (or stopped being) simulated changes the retained online status.
        if new.mqtt != old.mqtt or fingerprint != self._tls_fingerprint or board.simulated != was_simulated:
            self._reconnect(new, ssl_context, facts.seq_start or 0)
            self._tls_fingerprint = fingerprint
            facts = dataclasses.replace(facts, cert_not_after=health_report.certificate_expiry(new))
            changed.append("broker session (reconnected)")
        if (new.device_id, new.batch) != (old.device_id, old.batch):
            self.uplink.rebatch(new.device_id, new.batch)
            if "broker session (reconnected)" not in changed:
                changed.append("batching")
        if new.spool != old.spool or new.state_dir != old.state_dir or new.commands != old.commands:
            log.warning("spool, state_dir and commands changes take effect at the next restart")
        if new.log_level != old.log_level:
            logging.getLogger().setLevel(new.log_level.upper())
            changed.append("log level")
        if new.health != old.health:
            self._reload_ack = Acknowledgement(new.health.file.parent)
            changed.append("health")
        self.config = new
        self.reporter.reconfigure(dataclasses.replace(facts, config=new, config_digest=health_report.config_hash(
            new.path), simulated=self.board.simulated), Discovery(new, self.board.name))
        if new.homeassistant != old.homeassistant:
            changed.append("home assistant")
        log.info("reloaded %s: %s", new.path, ", ".join(changed) or "nothing changed")
        self.notifier.ready(self.health.status_line())
        self.reporter.publish()
        self._reload_ack.write(started, [])

    def _reconnect(self, new: AgentConfig, ssl_context: Optional[ssl.SSLContext], seq_start: int) -> None:
        # Nothing handed to the old connection meanwhile: what it has in flight goes back to the
        # front of the spool once it is stopped, and the new one sends it again, in order.
        self.uplink.hold()
        try:
            self.session.reconnect(new.mqtt, ssl_context, self._online_status(seq_start),
                                   timeout=min(5.0, new.shutdown_timeout))
            self.spool.release_in_flight()
            m = new.mqtt
            self.uplink.retarget(m.topic, m.qos, m.inflight)
        finally:
            self.uplink.release()


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
    """The daemon's life; raises a CertificateError (TLSSetupError), a HardwareError (BoardUnavailable) or
    spool.SpoolBusy for the CLI."""
    cfg = config.mqtt
    ssl_context = None
    if cfg.tls is None:
        log.warning("mqtt.tls is not set: readings and the client's identity cross the network in clear text")
    else:
        ssl_context = tls.build_context(cfg.tls)
        warn_about_dates(cfg.tls.cert_file)
    # What check-config would have said: the journal should show it too, since most people skip it.
    for warning in targets.warnings_for(config):
        log.warning("%s: %s", config.path, warning)
    board = open_board(config.board)
    log.info("device %s on %s with %d sensors", config.device_id, board.name, len(config.sensors))
    agent = Agent(config, ssl_context, board, Notifier.from_environment())
    signal.signal(signal.SIGTERM, agent.request_stop)
    signal.signal(signal.SIGINT, agent.request_stop)
    signal.signal(signal.SIGHUP, agent.request_reload)
    logging.getLogger("agent").addHandler(agent.reporter.errors)
    # What start-up left behind in reference cycles (the YAML parse of the config above all) is
    # collected now, so the run reuses its memory instead of taking more (W1: docs/performance.md).
    gc.collect()
    try:
        return agent.run()
    finally:
        logging.getLogger("agent").removeHandler(agent.reporter.errors)


def warn_about_dates(cert_file: Optional[Path]) -> None:
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
