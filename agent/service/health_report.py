"""The health document: what an operator needs to know about a board without logging into it.

One JSON document, built from the agent's parts, published retained on `mqtt.health_topic`
and kept in `health.file` for `edison-agent status`. It holds counters and facts only, never
a secret: the file is world-readable on purpose.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional

from agent import __version__
from agent.atomic_file import replace_file
from agent.hardware.sensors.system import METRICS, SystemOptions
from agent.mqtt import tls

if TYPE_CHECKING:
    from agent.config.schema import AgentConfig
    from agent.delivery.spool import Spool
    from agent.mqtt.session import Session

log = logging.getLogger(__name__)

# Bumped when a field changes meaning or goes away; new fields do not bump it.
SCHEMA = 1
CONNECTED, DISCONNECTED, STOPPED = "connected", "disconnected", "stopped"


@dataclass(frozen=True)
class Connection:
    state: str
    # Wall time the current state began (connected since, or disconnected since).
    since: Optional[float]
    # Why it is not connected, in plain words; None when connected.
    problem: Optional[str]
    reconnects: int
    # The live connection's; None while disconnected or over plain MQTT.
    tls_version: Optional[str]
    cipher: Optional[str]
    # Whether the last connect resumed a TLS session; None before the first connect.
    resumed: Optional[bool]
    # The broker in use or being tried (host:port), one of mqtt.hosts; None in documents before issue 19.
    broker: Optional[str] = None


@dataclass(frozen=True)
class Readings:
    sampled: int
    delivered: int
    dropped_full: int
    dropped_age: int
    dropped_corrupt: int
    # Where this run's seqs start (the retained online status says it too): a consumer tells
    # the reservation jump after a crash from lost readings with it (docs/delivery.md).
    seq_start: Optional[int] = None

    @property
    def dropped(self) -> int:
        return self.dropped_full + self.dropped_age + self.dropped_corrupt


@dataclass(frozen=True)
class SpoolState:
    depth: int
    in_flight: int
    bytes: int
    file_bytes: int
    durable: bool


@dataclass(frozen=True)
class Certificate:
    not_after: str
    days_left: int


@dataclass(frozen=True)
class LastError:
    time: float
    message: str


@dataclass(frozen=True)
class Board:
    """Facts read from /proc and /sys; None where this machine has no such file."""

    cpu_temperature: Optional[float]
    mem_available_mib: Optional[float]
    load1: Optional[float]
    # True when the readings come from the simulated board (made up), never from sensors.
    simulated: bool = False


@dataclass(frozen=True)
class HealthReport:
    device: str
    version: str
    time: float
    uptime: float
    interval: float
    config_hash: str
    connection: Connection
    readings: Readings
    spool: SpoolState
    certificate: Optional[Certificate]
    last_error: Optional[LastError]
    board: Board
    schema: int = SCHEMA

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> HealthReport:
        """Raises ValueError for anything that is not a health document (another schema, missing fields)."""
        try:
            tree = json.loads(text)
            if not isinstance(tree, dict):
                raise ValueError("not a JSON object")
            if tree.get("schema") != SCHEMA:
                raise ValueError("schema %r, this edison-agent reads %d" % (tree.get("schema"), SCHEMA))
            return cls(
                device=str(tree["device"]), version=str(tree["version"]), time=float(tree["time"]),
                uptime=float(tree["uptime"]), interval=float(tree["interval"]), config_hash=str(tree["config_hash"]),
                connection=_record(Connection, tree["connection"]), readings=_record(Readings, tree["readings"]),
                spool=_record(SpoolState, tree["spool"]), certificate=_optional(Certificate, tree["certificate"]),
                last_error=_optional(LastError, tree["last_error"]), board=_record(Board, tree["board"]))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError("not a health document (%s: %s)" % (type(exc).__name__, exc)) from None


def _record(kind: Any, raw: Mapping[str, Any]) -> Any:
    # Fields a newer agent added are ignored; a missing one is a KeyError for from_json, unless
    # it has a default (a field added later, absent from an older agent's document).
    return kind(**{f.name: raw[f.name] for f in dataclasses.fields(kind)
                   if f.name in raw or f.default is dataclasses.MISSING})


def _optional(kind: Any, raw: Optional[Mapping[str, Any]]) -> Any:
    return None if raw is None else _record(kind, raw)


def config_hash(path: Path) -> str:
    """The first 12 hex digits of the config file's sha256: which boards run the same config."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
    except OSError:
        return "unreadable"


def certificate_expiry(config: AgentConfig) -> Optional[datetime.datetime]:
    """The client certificate's notAfter, read when the session is built (start, reload): the
    document describes the certificate in use, not a renewed file still waiting for a reload."""
    cert_file = config.mqtt.tls.cert_file if config.mqtt.tls is not None else None
    dates = tls.certificate_dates(str(cert_file)) if cert_file is not None else None
    return dates[1] if dates is not None else None


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def certificate(not_after: Optional[datetime.datetime], now: float) -> Optional[Certificate]:
    if not_after is None:
        return None
    # Epoch arithmetic, not fromtimestamp(): no trip through the platform's time_t (32 bits on the board).
    left = not_after - (_EPOCH + datetime.timedelta(seconds=now))
    return Certificate(not_after=not_after.strftime("%Y-%m-%dT%H:%M:%SZ"), days_left=left.days)


def board_facts(simulated: bool = False) -> Board:
    # The `system` sensor's readers: one place knows the kernel's files.
    def read(metric: str) -> Optional[float]:
        try:
            return round(float(METRICS[metric][0](SystemOptions(metric))), 2)
        except Exception:  # noqa: BLE001 - a fact this machine lacks (no thermal zone) is just absent
            return None

    return Board(cpu_temperature=read("cpu_temperature"), mem_available_mib=read("mem_available"),
                 load1=read("load1"), simulated=simulated)


class LastErrorHandler(logging.Handler):
    """Keeps the agent's last warning or error, with its time, for the health document."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: Optional[LastError] = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed log call must not break the logging of others
            return
        self.last = LastError(time=round(record.created, 3), message=message)


def online_status(seq_start: int, simulated: bool = False) -> bytes:
    """The retained status payload while connected: the one place it is built.

    JSON, so it can say where this run's seqs start; the Last Will (and a clean stop) stays the
    plain text "offline". A consumer reads `status` from the object, or takes a payload that is
    not JSON as the status itself (Home Assistant: the availability template in
    agent/service/discovery.py)."""
    status: Dict[str, Any] = {"status": "online", "seq_start": seq_start, "version": __version__}
    if simulated:
        # Made-up readings must be visible where the data is (issue 13), not only in the log.
        status["board"] = "simulated"
    return json.dumps(status, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class Facts:
    """What a document says that changes only at a start or a reload."""

    config: AgentConfig
    # time.monotonic() at the agent's start.
    started: float
    config_digest: str
    cert_not_after: Optional[datetime.datetime]
    seq_start: Optional[int] = None
    simulated: bool = False

    @classmethod
    def of(cls, config: AgentConfig, started: float, seq_start: Optional[int], simulated: bool) -> "Facts":
        return cls(config, started, config_hash(config.path), certificate_expiry(config), seq_start, simulated)


@dataclass(frozen=True)
class Progress:
    """What the agent has done so far (besides what the session and the spool say)."""

    sampled: int
    delivered: int
    # Whether the last connect resumed a TLS session (None before one, or over plain MQTT).
    resumed: Optional[bool]
    last_error: Optional[LastError]


def gather(facts: Facts, session: Session, spool: Spool, progress: Progress, *, stopped: bool = False,
           now: Optional[float] = None) -> HealthReport:
    """The document as of now."""
    now = time.time() if now is None else now
    info = session.connection_info()
    since: Optional[float]
    if stopped:
        state, since = STOPPED, now
    elif session.connected:
        state, since = CONNECTED, session.connected_since
    else:
        state, since = DISCONNECTED, session.disconnected_since
    stats = spool.stats()
    config = facts.config
    return HealthReport(
        device=config.device_id, version=__version__, time=round(now, 3),
        uptime=round(time.monotonic() - facts.started, 3), interval=config.health.interval,
        config_hash=facts.config_digest,
        connection=Connection(state=state, since=round(since, 3) if since is not None else None,
                              problem=session.problem if state == DISCONNECTED else None,
                              reconnects=session.reconnects,
                              tls_version=info.tls_version if info else None, cipher=info.cipher if info else None,
                              resumed=progress.resumed, broker=session.broker),
        readings=Readings(sampled=progress.sampled, delivered=progress.delivered, dropped_full=stats.dropped_full,
                          dropped_age=stats.dropped_age, dropped_corrupt=stats.dropped_corrupt,
                          seq_start=facts.seq_start),
        spool=SpoolState(depth=stats.depth, in_flight=stats.in_flight, bytes=stats.bytes,
                         file_bytes=stats.file_bytes, durable=stats.durable),
        certificate=certificate(facts.cert_not_after, now),
        last_error=progress.last_error, board=board_facts(facts.simulated))


class HealthFile:
    """The document on the board's disk, replaced atomically: a reader sees the old one or the new one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Writers: the sampler's tick, the network thread at connect, a `health` command.
        self._lock = threading.Lock()
        self._failing: Optional[str] = None

    def write(self, report: HealthReport) -> bool:
        with self._lock:
            try:
                write_atomically(self.path, report.to_json() + "\n")
            except OSError as exc:
                problem = "%s: %s" % (self.path, exc.strerror or exc)
                if problem != self._failing:
                    log.warning("cannot write the health file %s ('edison-agent status' will not see this agent; "
                                "set health.file to a writable place)", problem)
                    self._failing = problem
                return False
            self._failing = None
            return True


def write_atomically(path: Path, text: str) -> None:
    """tmp + rename in the same directory; no fsync: /run is tmpfs, and the next tick rewrites it anyway."""
    directory = path.parent
    if not directory.is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        # 0755 whatever the umask (the hardened unit's is 0077): `status` is for non-root operators too.
        directory.chmod(0o755)
    replace_file(path, text.encode("utf-8"), 0o644)


def read(path: Path) -> HealthReport:
    """Raises OSError if the file cannot be read, ValueError if it is not a health document."""
    return HealthReport.from_json(Path(path).read_text(encoding="utf-8"))


def age(report: HealthReport, now: Optional[float] = None) -> float:
    return (time.time() if now is None else now) - report.time


def is_stale(report: HealthReport, now: Optional[float] = None) -> bool:
    """Three intervals without a new document: the agent is stuck or gone."""
    return age(report, now) > 3 * report.interval
