"""Commands from an operator over the agent's own MQTT session: parse, check, rate-limit, run, reply.

A command arrives on `<commands.topic>/<name>` with a JSON payload carrying an `id`; the reply
goes to `<commands.reply_topic>/<id>` (and, for an MQTT 5 request, to its ResponseTopic with its
CorrelationData). Everything in a message is hostile until checked (agent/config/identifiers.py): an `id`
that is not a valid command id is never put in a topic (the answer, `bad payload`, goes to
`<commands.reply_topic>/unknown`), and a ResponseTopic is used only if it is a valid topic under
`<commands.reply_topic>/` or a filter of `commands.response_topics`, and never one of the agent's
own topics; otherwise the answer goes to the reply topic only, and one log line says why.
The network thread only queues what arrives; one worker thread runs commands,
so neither a slow command nor a flood holds up the session or the schedule. Who may send
commands is the broker's decision (its ACL): see docs/operations.md.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Protocol

from agent.config import identifiers
from agent.config.identifiers import brief
from agent.config.schema import CommandsConfig
from agent.sampling.sampler import UnknownSensor

log = logging.getLogger(__name__)

# The error tokens a reply can carry; `detail` says more, for a human.
UNKNOWN_COMMAND = "unknown command"
BAD_PAYLOAD = "bad payload"
OUT_OF_RANGE = "out of range"
UNKNOWN_SENSOR = "unknown sensor"
RATE_LIMITED = "rate limited"
FAILED = "failed"
# A reply topic level: the id is echoed into it.
MAX_ID_LENGTH = identifiers.MAX_COMMAND_ID
# A command is a few dozen bytes of JSON; past this it is not one (and json.loads is not made to chew it).
MAX_PAYLOAD = 64 * 1024
# Where the answer to a payload without a usable id goes.
NO_ID = "unknown"
# At least this many commands wait for the worker; past it they are dropped, not answered.
MIN_QUEUE = 64


class CommandError(Exception):
    def __init__(self, error: str, detail: str) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail


class Handler(Protocol):
    """What commands act on: the Agent."""

    def request_read(self, sensor: Optional[str]) -> List[str]:
        """Names of the sensors to be read now; raises agent.sampling.sampler.UnknownSensor."""

    def set_interval(self, sensor: str, seconds: float, persist: bool) -> None:
        """Raises UnknownSensor, or OSError when the overlay cannot be written."""

    def schedule_reload(self, why: str) -> None:
        """The same reload as SIGHUP's."""

    def publish_health(self) -> None:
        ...


# (topic, payload, correlation data or None) -> taken by the session
Publish = Callable[[str, bytes, Optional[bytes]], bool]


@dataclass(frozen=True)
class Request:
    command: str
    payload: bytes
    # From an MQTT 5 request's properties; None on 3.1.1.
    response_topic: Optional[str] = None
    correlation: Optional[bytes] = None


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: int, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._monotonic = monotonic
        self._last = monotonic()

    def take(self) -> bool:
        now = self._monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def request_from(topic: str, payload: bytes, properties: Any, prefix: str) -> Request:
    """A message as a Request; `properties` is paho's (MQTT 5) or None, read without paho."""
    response_topic = getattr(properties, "ResponseTopic", None) if properties is not None else None
    correlation = getattr(properties, "CorrelationData", None) if properties is not None else None
    return Request(command=topic[len(prefix) + 1:] if topic.startswith(prefix + "/") else topic,
                   payload=bytes(payload),
                   response_topic=response_topic if isinstance(response_topic, str) and response_topic else None,
                   correlation=bytes(correlation) if isinstance(correlation, (bytes, bytearray)) else None)


def parse(payload: bytes) -> Dict[str, Any]:
    """The payload as a JSON object with a usable `id`; raises CommandError(BAD_PAYLOAD)."""
    if len(payload) > MAX_PAYLOAD:
        raise CommandError(BAD_PAYLOAD, "%d bytes: a command is at most %d" % (len(payload), MAX_PAYLOAD))
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CommandError(BAD_PAYLOAD, "not JSON: %s" % str(exc)[:80]) from None
    except RecursionError:
        raise CommandError(BAD_PAYLOAD, "not JSON: nested too deep") from None
    if not isinstance(body, dict):
        raise CommandError(BAD_PAYLOAD, "expected a JSON object like {\"id\": \"1\"}")
    request_id = body.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, (str, int)):
        raise CommandError(BAD_PAYLOAD, "\"id\" is missing or not a string or integer")
    # An integer past 1e64 is too long an id anyway; str() of one past 4300 digits raises.
    text = str(request_id) if isinstance(request_id, str) or abs(request_id) < 10 ** MAX_ID_LENGTH else ""
    problem = identifiers.command_id_problem(text)
    if problem is not None:
        raise CommandError(BAD_PAYLOAD, "\"id\" %s" % problem)
    return body


class Commands:
    """Takes messages on the network thread, runs them one at a time on its own worker thread."""

    def __init__(self, config: CommandsConfig, handler: Handler, publish: Publish,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._responses = ResponseTopics(config)
        self._handler = handler
        self._publish = publish
        self._monotonic = monotonic
        self._started = monotonic()
        self._bucket = TokenBucket(config.rate, config.burst, monotonic)
        self._queue: "queue.Queue[Optional[Request]]" = queue.Queue(maxsize=max(MIN_QUEUE, config.burst))
        self._dropped = 0
        self._refused = 0
        self._thread = threading.Thread(target=self._work, name="commands", daemon=True)

    @property
    def subscription(self) -> str:
        return self._config.topic + "/+"

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """End the worker after the command under way; what still waits is dropped (a daemon thread)."""
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            return
        if self._thread.is_alive():
            self._thread.join(timeout)

    def on_message(self, topic: str, payload: bytes, properties: Any) -> None:
        """The session's network thread: queue, or drop when the worker is this far behind."""
        request = request_from(topic, payload, properties, self._config.topic)
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            if self._dropped == 0:
                log.warning("commands arrive faster than they can be answered: dropping them unanswered "
                            "until the queue (%d) drains", self._queue.maxsize)
            self._dropped += 1
            return
        if self._dropped:
            log.warning("taking commands again; %d were dropped unanswered", self._dropped)
            self._dropped = 0

    def _work(self) -> None:
        while True:
            request = self._queue.get()
            if request is None:
                return
            try:
                self.handle(request)
            except Exception:  # noqa: BLE001 - one bad command must not end the worker
                log.exception("command %r failed", request.command)

    def handle(self, request: Request) -> None:
        """Run one request and send its reply (the worker thread; tests call it directly)."""
        request_id: Any = None
        try:
            try:
                parsed = parse(request.payload)
                body: Optional[Dict[str, Any]] = parsed
                request_id = parsed["id"]
            except CommandError as exc:
                body, bad = None, exc
            # Malformed payloads take tokens too: a flood of garbage costs no more than one of commands.
            if not self._bucket.take():
                raise CommandError(RATE_LIMITED, "more than %g commands a second (burst %d): try again later"
                                   % (self._config.rate, self._config.burst))
            if self._refused:
                log.warning("taking commands again; %d were refused over the rate limit", self._refused)
                self._refused = 0
            if body is None:
                raise bad
            result = self._run(request.command, body)
        except CommandError as exc:
            if exc.error != RATE_LIMITED:
                log.warning("command %s (id %s): %s: %s", brief(request.command), request_id, exc.error,
                            exc.detail[:200])
            elif not self._refused:
                # One line when refusals start and one when they end, however long the flood.
                log.warning("commands over the rate limit (%g a second, burst %d): refusing them until it "
                            "eases", self._config.rate, self._config.burst)
            self._refused += exc.error == RATE_LIMITED
            self._reply(request, request_id, {"ok": False, "error": exc.error, "detail": exc.detail})
            return
        log.info("command %s (id %s) done", brief(request.command), request_id)
        self._reply(request, request_id, {"ok": True, "result": result})

    def _run(self, command: str, body: Dict[str, Any]) -> Any:
        try:
            if command == "ping":
                return {"pong": True, "uptime": round(self._monotonic() - self._started, 3)}
            if command == "read":
                sensor = _optional_str(body, "sensor")
                return {"sensors": self._handler.request_read(sensor)}
            if command == "set-interval":
                return self._set_interval(body)
            if command == "reload":
                self._handler.schedule_reload("reload command")
                return {"reloading": True}
            if command == "health":
                self._handler.publish_health()
                return {"published": True}
        except UnknownSensor as exc:
            raise CommandError(UNKNOWN_SENSOR, "no sensor named %s" % exc) from None
        raise CommandError(UNKNOWN_COMMAND, "%s is not one of: ping, read, set-interval, reload, health"
                           % brief(command))

    def _set_interval(self, body: Dict[str, Any]) -> Dict[str, Any]:
        sensor = _optional_str(body, "sensor")
        if sensor is None:
            raise CommandError(BAD_PAYLOAD, "\"sensor\" is required")
        raw = body.get("seconds")
        try:
            # JSON integers have no bound: float() of one past 1e308 raises, and NaN compares false.
            seconds = float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else math.nan
        except OverflowError:
            seconds = math.nan
        if not math.isfinite(seconds):
            raise CommandError(BAD_PAYLOAD, "\"seconds\" must be a finite number")
        persist = body.get("persist", False)
        if not isinstance(persist, bool):
            raise CommandError(BAD_PAYLOAD, "\"persist\" must be true or false")
        low, high = self._config.min_interval, self._config.max_interval
        if not low <= seconds <= high:
            raise CommandError(OUT_OF_RANGE, "seconds %g is outside %g-%g (commands.min_interval, "
                               "commands.max_interval)" % (seconds, low, high))
        try:
            self._handler.set_interval(sensor, seconds, persist)
        except OSError as exc:
            raise CommandError(FAILED, "the interval applies until restart, but the overlay could not be "
                               "written: %s" % exc) from None
        return {"sensor": sensor, "interval": seconds, "persisted": persist}

    def _reply(self, request: Request, request_id: Any, fields: Dict[str, Any]) -> None:
        message = json.dumps(dict({"id": request_id}, **fields), separators=(",", ":")).encode()
        level = NO_ID if request_id is None else str(request_id)
        self._publish("%s/%s" % (self._config.reply_topic, level), message, None)
        if request.response_topic is not None:
            problem = self._responses.problem(request.response_topic)
            if problem is None:
                self._publish(request.response_topic, message, request.correlation)
            else:
                log.warning("command %s (id %s): its response topic %s %s: answered on %s/%s only",
                            brief(request.command), request_id, brief(request.response_topic), problem,
                            self._config.reply_topic, level)


class ResponseTopics:
    """Where an MQTT 5 request may have its answer sent: a topic for anyone with publish rights
    to the command topic to choose, so not one the agent or its consumers trust."""

    def __init__(self, config: CommandsConfig) -> None:
        self._prefix = config.reply_topic + "/"
        self._allowed = tuple(config.response_topics)
        # The agent's own topics: an answer there would pose as telemetry, status or health, or
        # come back as a command (and be answered, and come back ...).
        self._own = tuple(config.agent_topics)
        self._commands = config.topic + "/+"

    def problem(self, topic: str) -> Optional[str]:
        """None if an answer may go to `topic`, else why not."""
        problem = identifiers.topic_problem(topic)
        if problem is not None:
            return problem
        if topic in self._own or identifiers.matches(self._commands, topic):
            return "is one of the agent's own topics"
        if not topic.startswith(self._prefix) and not any(identifiers.matches(f, topic) for f in self._allowed):
            return "is not under %s (commands.response_topics allows more)" % self._prefix
        return None


def _optional_str(body: Dict[str, Any], key: str) -> Optional[str]:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or identifiers.sensor_name_problem(value) is not None:
        raise CommandError(BAD_PAYLOAD, "%r must be a sensor name (a string without spaces, '/', '+' or '#')" % key)
    return value
