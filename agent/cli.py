"""Command line: argument parsing and exit codes, nothing else.

Exit codes: 0 done, 1 internal error, 2 bad config or a problem waiting cannot heal, 141 the reader of
our output went away (`... | head -1`), as a shell reports a coreutils command ended by SIGPIPE.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

from agent import __version__
from agent.config import schema as config
from agent.config import targets
from agent.config.fields import choices_of
from agent.delivery.spool import SpoolBusy
from agent.hardware.board import BoardUnavailable
from agent.mqtt.problems import TLSSetupError
from agent.mqtt.tls import build_context
from agent.service import logging_setup

DEFAULT_CONFIG = Path("/etc/edison-agent/config.yaml")
EXIT_OK, EXIT_INTERNAL, EXIT_CONFIG = 0, 1, 2
# 128 + SIGPIPE: what `set -o pipefail` sees from `yes | head -1`; quiet, like coreutils.
EXIT_PIPE = 141

log = logging.getLogger("agent")


def parser(argv: Optional[List[str]] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edison-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version="edison-agent %s" % __version__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    run = commands.add_parser("run", help="sample sensors and publish over one persistent MQTT session")
    run.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG, help="default: %(default)s")
    run.add_argument("--log-level", choices=choices_of(config.AgentConfig, "log_level"),
                     help="overrides log_level in the config")
    run.set_defaults(func=_run)
    check = commands.add_parser("check-config", help="validate a config file and show what it means")
    check.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG, help="default: %(default)s")
    check.set_defaults(func=_check_config)
    args = sys.argv[1:] if argv is None else argv
    if args[:1] != ["run"]:
        # Not for `run`: the daemon lives for months on a board where each module is resident
        # memory (issue 7's footprint), and none of these is needed there.
        from agent.service.reload import add_reload_parser
        from agent.tools import status
        from agent.tools.doctor import checkup as doctor
        from agent.tools.install import add_install_parsers
        from agent.tools.pki import cli as pki_cli
        pki_cli.add_pki_parser(commands)
        doctor.add_doctor_parser(commands, DEFAULT_CONFIG)
        status.add_status_parser(commands)
        add_install_parsers(commands)
        add_reload_parser(commands)
        # An operator's tool (it imports paho): registered here, never loaded by `run`.
        from agent.tools.watch.cli import add_watch_parser
        add_watch_parser(commands)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    # argparse's own --help already ends quietly (exit 0) when its output has nowhere to go.
    args = parser(argv).parse_args(argv)
    try:
        code = int(args.func(args))
        # Flushed here, where a closed pipe is caught below, not at interpreter exit ("Exception ignored").
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # Python ignores SIGPIPE (the daemon's sockets need that), so a closed stdout is an exception
        # rather than the silent end `head` expects. Point stdout at /dev/null so the interpreter's
        # own flush at exit has nowhere to fail.
        _silence_stdout()
        return EXIT_PIPE
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - one line for a person, the traceback for the log
        log.debug("internal error", exc_info=True)
        logging_setup.print_error("edison-agent: internal error: %s: %s (run with --log-level debug for the "
                                  "traceback)" % (type(exc).__name__, exc))
        return EXIT_INTERNAL


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (embedded, or already closed): nothing to flush
        pass


def _load(path: Path) -> Optional[config.AgentConfig]:
    try:
        return config.load(path)
    except config.ConfigError as exc:
        for problem in exc.problems:
            logging_setup.print_error(problem)
        return None


def _run(args: argparse.Namespace) -> int:
    logging_setup.configure(args.log_level or "info")
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    if args.log_level is None:
        logging_setup.configure(cfg.log_level)
    # Imported here: the daemon pulls in paho, which check-config and pki do not need.
    from agent.service import daemon

    try:
        return daemon.run(cfg)
    except (PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        # A file or directory of the config the service's user cannot use: a person must fix it.
        logging_setup.print_error("%s: %s: %s (check the paths in the config and the service's user)"
                                  % (args.config, exc.filename or "a file", exc.strerror or exc))
    except TLSSetupError as exc:
        logging_setup.print_error("%s: %s" % (args.config, exc))
    except BoardUnavailable as exc:
        logging_setup.print_error("%s: board: %s" % (args.config, exc))
    except SpoolBusy as exc:
        logging_setup.print_error("%s: spool: %s" % (args.config, exc))
    return EXIT_CONFIG


def _check_config(args: argparse.Namespace) -> int:
    logging_setup.configure("warning")
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    if cfg.mqtt.tls is not None:
        try:
            build_context(cfg.mqtt.tls)
        except TLSSetupError as exc:
            logging_setup.print_error("%s: %s" % (args.config, exc))
            return EXIT_CONFIG
    print(summary(cfg))
    # Warnings, not errors: a service's limits change, and some can be raised for an account.
    for warning in targets.warnings_for(cfg):
        print("warning: %s" % warning)
    return EXIT_OK


def summary(cfg: config.AgentConfig) -> str:
    m = cfg.mqtt
    if m.tls is None:
        security = "plain MQTT (no TLS: readings travel in clear text)"
    else:
        t = m.tls
        identity = "client certificate %s" % t.cert_file if t.cert_file else "no client certificate"
        key = ", key passphrase from %s" % t.key_password_source if t.key_password_source else ""
        hostname = "hostname verified" if t.verify_hostname else "hostname NOT verified"
        security = "TLS %s+, CA %s, %s%s, %s" % (t.min_version, t.ca_file, identity, key, hostname)
        if t.server_name:
            security += " as %r" % t.server_name
        if t.alpn:
            security += ", ALPN %s" % ",".join(t.alpn)
    lines = [
        "%s: valid" % cfg.path,
        "  device     %s" % cfg.device_id,
        "  broker     %s as %r, keepalive %d s, reconnect %g-%g s (after a drop: over %g s, doubling)"
        % (_brokers(m), m.client_id, m.keepalive, m.reconnect.min_delay, m.reconnect.max_delay,
           m.reconnect.spread),
        "  security   %s" % security,
        "  protocol   %s" % _protocol_line(m),
        "  topics     %s (QoS %d); status %s" % (m.topic, m.qos, m.status_topic),
        "  health     %s every %g s; file %s" % (m.health_topic, cfg.health.interval, cfg.health.file),
        "  commands   %s" % _commands_summary(cfg.commands),
        "  board      %s" % cfg.board,
        "  sensors    %d" % len(cfg.sensors),
    ]
    for s in cfg.sensors:
        values = ", ".join("%s%s" % (c.name, " (%s)" % c.unit if c.unit else "") for c in s.channels)
        lines.append("    %-16s %-10s every %g s: %s" % (s.name, s.type, s.interval, values))
    return "\n".join(lines)


def _brokers(m: config.MQTTConfig) -> str:
    if len(m.hosts) <= 1:
        return "%s:%d" % (m.host, m.port)
    back = "back to the first every %g s" % m.failback if m.failback else "no failback"
    return "%s (in this order; %s)" % (", ".join("%s:%d" % h for h in m.hosts), back)


def _protocol_line(m: config.MQTTConfig) -> str:
    if m.protocol == "5":
        text = "MQTT 5, session kept %s" % ("%d s after a disconnect" % m.session_expiry if m.session_expiry
                                            else "only while connected")
        text += ", telemetry expires after %d s" % m.message_expiry if m.message_expiry else ""
    else:
        text = "MQTT 3.1.1, %s" % ("clean session" if m.clean_session else "persistent session")
    if m.username is not None:
        text += ", user name %r" % m.username
        text += ", password from %s" % m.password_source if m.password_source else ""
    return text + ("" if m.target == "generic" else ", target %s" % m.target)


def _commands_summary(c: config.CommandsConfig) -> str:
    if not c.enabled:
        return "off"
    return "on %s/+, replies on %s/<id>; %g a second (burst %d); set-interval %g-%g s" % (
        c.topic, c.reply_topic, c.rate, c.burst, c.min_interval, c.max_interval)
