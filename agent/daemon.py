"""Wires config, board, sensors, sampler, spool, uplink and session; owns signals and shutdown."""

from __future__ import annotations

import logging
import signal
import ssl
import threading
import time
from pathlib import Path
from types import FrameType
from typing import List, Optional, Tuple

from agent import tls
from agent.board import Board, open_board
from agent.config import AgentConfig
from agent.reading import Sample
from agent.sampler import Sampler
from agent.sensor_config import SensorConfig
from agent.sensors import DRIVERS, Sensor
from agent.session import Session
from agent.spool import Spool
from agent.uplink import Uplink

log = logging.getLogger(__name__)


class Agent:
    """Everything `edison-agent run` starts, built from a validated config."""

    def __init__(self, config: AgentConfig, ssl_context: Optional[ssl.SSLContext], board: Board) -> None:
        self.config = config
        self.stop_event = threading.Event()
        self.spool = Spool()
        mqtt = config.mqtt
        self.session = Session(mqtt, ssl_context, on_io=self._pump)
        self.uplink = Uplink(self.spool, self.session, config.device_id, mqtt.topic, mqtt.qos,
                             window=mqtt.inflight, batch=config.batch)
        self.sampler = Sampler(_drivers(config.sensors, board), self._record)

    def _record(self, sample: Sample) -> None:
        self.spool.append(sample)
        self.uplink.pump()

    def _pump(self) -> None:
        self.uplink.pump()

    def run(self) -> int:
        self.session.start()
        self.sampler.run(self.stop_event)
        self.sampler.close()
        return self.shutdown()

    def shutdown(self) -> int:
        deadline = time.monotonic() + self.config.shutdown_timeout
        if not self.uplink.drain(self.config.shutdown_timeout * 0.6):
            # The spool lives in memory for now: what the broker has not acknowledged is lost.
            log.warning("stopping with %d readings not acknowledged by the broker: they are lost",
                        self.spool.depth)
        self.session.stop(max(0.5, deadline - time.monotonic()))
        log.info("stopped: %d readings delivered", self.uplink.delivered)
        return 0

    def request_stop(self, signum: int, frame: Optional[FrameType]) -> None:
        log.info("%s received: delivering what is in flight, then going offline", signal.Signals(signum).name)
        self.stop_event.set()


def _drivers(configs: Tuple[SensorConfig, ...], board: Board) -> List[Tuple[SensorConfig, Sensor]]:
    return [(cfg, DRIVERS[cfg.type](cfg.name, cfg.options, board)) for cfg in configs]


def run(config: AgentConfig) -> int:
    """The daemon's life; raises tls.TLSSetupError or board.BoardUnavailable for the CLI to report."""
    cfg = config.mqtt
    ssl_context = None
    if cfg.tls is None:
        log.warning("mqtt.tls is not set: readings and the client's identity cross the network in clear text")
    else:
        ssl_context = tls.build_context(cfg.tls)
        _warn_about_dates(cfg.tls.cert_file)
    board = open_board(config.board)
    log.info("device %s on %s with %d sensors", config.device_id, board.name, len(config.sensors))
    agent = Agent(config, ssl_context, board)
    signal.signal(signal.SIGTERM, agent.request_stop)
    signal.signal(signal.SIGINT, agent.request_stop)
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

