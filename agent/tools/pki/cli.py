"""`edison-agent pki ...`: argument parsing and output for agent.tools.pki.authority, agent.tools.pki.provision and
agent.tools.pki.revocation, which do the certificate work."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import Optional

from agent.tools.pki import broker_setup, provision, revocation
from agent.tools.pki.authority import init_ca, issue_broker, issue_device, issue_operator, renew
from agent.tools.pki.broker_setup import mosquitto_acl
from agent.tools.pki.files import Issued, list_certificates, load_certificate_info, write_file, write_p12
from agent.tools.pki.keys import CA_CERT, DEFAULT_KEY_TYPE, KEY_TYPES, UTC, PkiError


def add_pki_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pki = subparsers.add_parser("pki", help="make a CA, broker and device certificates")
    pki.set_defaults(func=run_pki)
    commands = pki.add_subparsers(dest="pki_command", metavar="COMMAND", required=True)
    init = commands.add_parser("init-ca", help="create DIR/ca.crt and DIR/ca.key")
    init.add_argument("directory", metavar="DIR", type=Path)
    init.add_argument("--name", default="edison-agent CA", help="the CA's common name")
    init.add_argument("--passphrase-file", type=Path, metavar="FILE",
                      help="encrypt the CA key with the first line of FILE")
    broker = commands.add_parser("issue-broker", help="server certificate for the broker")
    broker.add_argument("directory", metavar="DIR", type=Path, help="holds ca.crt, ca.key")
    broker.add_argument("hostname", metavar="HOSTNAME", help="the name devices connect to")
    broker.add_argument("--ip", action="append", default=[], metavar="ADDR",
                        help="also valid for this IP address (repeatable)")
    broker.add_argument("--broker", choices=broker_setup.BROKERS, default="mosquitto",
                        help="print (and write to DIR/HOSTNAME.BROKER.conf) what this broker needs "
                             "(default: mosquitto)")
    broker.add_argument("--install-dir", type=Path, metavar="INSTALL_DIR",
                        help="also copy ca.crt and the broker's certificate and key here, the key readable "
                             "by the broker's group (0640), and name these copies in the printed config")
    device = commands.add_parser("issue-device", help="client certificate for one device")
    device.add_argument("directory", metavar="DIR", type=Path, help="holds ca.crt, ca.key")
    device.add_argument("name", metavar="NAME", help="device name: CN and MQTT username")
    device.add_argument("--passphrase-file", type=Path, metavar="FILE",
                        help="encrypt the key with the first line of FILE")
    device.add_argument("--p12", action="store_true",
                        help="also write NAME.p12 (PKCS#12: key, certificate and CA, for Java keystores)")
    broker.add_argument("--group", metavar="GROUP",
                        help="make the key readable by GROUP (mode 0640), e.g. mosquitto")
    renew_cmd = commands.add_parser("renew", help="new key and certificate for DIR/NAME.crt")
    renew_cmd.add_argument("directory", metavar="DIR", type=Path, help="holds ca.crt, ca.key, NAME.crt")
    renew_cmd.add_argument("name", metavar="NAME", help="the certificate's file name without .crt")
    renew_cmd.add_argument("--passphrase-file", type=Path, metavar="FILE",
                           help="encrypt the new key with the first line of FILE")
    operator = commands.add_parser("issue-operator", help="client certificate for an operator (sends commands)")
    operator.add_argument("directory", metavar="DIR", type=Path, help="holds ca.crt, ca.key")
    operator.add_argument("name", metavar="NAME", nargs="?", default="operator",
                          help="CN and MQTT username, granted in the ACL (default: operator)")
    operator.add_argument("--passphrase-file", type=Path, metavar="FILE",
                          help="encrypt the key with the first line of FILE (mosquitto_pub will then prompt)")
    acl = commands.add_parser("acl", help="print a mosquitto acl_file: devices under their own prefix, "
                              "commands from operators only")
    acl.add_argument("--operator", action="append", metavar="NAME",
                     help="an operator's CN (repeatable; default: operator)")
    acl.add_argument("--prefix", default="edison", help="the first topic level (default: edison)")
    listing = commands.add_parser("list", help="certificates in DIR: subject, SANs, expiry, issuer, revoked")
    listing.add_argument("directory", metavar="DIR", type=Path)
    many = commands.add_parser("issue-devices", help="a certificate and a config bundle per row of a CSV file")
    many.add_argument("directory", metavar="DIR", type=Path, help="holds ca.crt, ca.key; records NAME.crt")
    many.add_argument("outdir", metavar="OUTDIR", type=Path, help="gets OUTDIR/NAME/{config.yaml,certs/}")
    many.add_argument("--from", dest="csv", metavar="CSV", type=Path, required=True,
                      help="header then one row per device; columns: %s "
                           "(only name is required)" % ", ".join(provision.COLUMNS))
    many.add_argument("--template", metavar="CONFIG", type=Path,
                      help="config to start from (default: the shipped example config)")
    many.add_argument("--host", help="mqtt.host for rows without a host (default: the template's)")
    many.add_argument("--port", type=int, help="mqtt.port for rows without a port (default: the template's)")
    revoke_cmd = commands.add_parser("revoke", help="add DIR/NAME.crt to the CA's revocation list DIR/crl.pem")
    revoke_cmd.add_argument("directory", metavar="DIR", type=Path, help="holds ca.crt, ca.key, NAME.crt")
    revoke_cmd.add_argument("name", metavar="NAME", nargs="?", help="the device (certificate file name without .crt)")
    revoke_cmd.add_argument("--reason", choices=revocation.REASONS, default="unspecified")
    revoke_cmd.add_argument("--refresh", action="store_true",
                            help="revoke nothing: re-sign DIR/crl.pem with a new nextUpdate (as 'pki crl')")
    crl = commands.add_parser("crl", help="make or refresh DIR/crl.pem (new nextUpdate, next CRL number)")
    crl.add_argument("directory", metavar="DIR", type=Path, help="holds ca.crt, ca.key")
    for parser in (revoke_cmd, crl):
        parser.add_argument("--days", type=int, default=revocation.CRL_DAYS,
                            help="the CRL is valid for this many days (default: %s)" % revocation.CRL_DAYS)
    for parser, days in ((init, 3650), (broker, 730), (device, 730), (operator, 730), (renew_cmd, None),
                         (many, 730)):
        parser.add_argument("--days", type=int, default=days,
                            help="validity in days (default: %s)" % (days or "as before"))
        parser.add_argument("--key-type", choices=KEY_TYPES, default=DEFAULT_KEY_TYPE,
                            help="default: %s" % DEFAULT_KEY_TYPE)
        if parser is not init:
            parser.add_argument("--ca-passphrase-file", type=Path, metavar="FILE",
                                help="the CA key's passphrase (first line of FILE)")
        if parser is not renew_cmd:
            parser.add_argument("--force", action="store_true", help="replace existing files")
    revoke_cmd.add_argument("--ca-passphrase-file", type=Path, metavar="FILE",
                            help="the CA key's passphrase (first line of FILE)")
    crl.add_argument("--ca-passphrase-file", type=Path, metavar="FILE",
                     help="the CA key's passphrase (first line of FILE)")


def run_pki(args: argparse.Namespace) -> int:
    try:
        _run(args)
    except PkiError as exc:
        for line in str(exc).splitlines():  # a CSV's problems come all at once, one per line
            print("edison-agent pki: %s" % line, file=sys.stderr)
        return 2
    return 0


def _run(args: argparse.Namespace) -> None:
    command = args.pki_command
    passphrase = ca_passphrase = None
    if getattr(args, "passphrase_file", None) is not None:
        passphrase = _read_passphrase(args.passphrase_file)
    if getattr(args, "ca_passphrase_file", None) is not None:
        ca_passphrase = _read_passphrase(args.ca_passphrase_file)
    if command == "init-ca":
        _report(init_ca(args.directory, name=args.name, days=args.days, force=args.force,
                        key_type=args.key_type, passphrase=passphrase), encrypted=passphrase is not None)
    elif command == "issue-broker":
        issued = issue_broker(args.directory, args.hostname, ips=args.ip, days=args.days,
                              force=args.force, key_type=args.key_type, ca_passphrase=ca_passphrase,
                              group=args.group)
        _report(issued, group=args.group)
        _broker_config(args, issued)
    elif command == "issue-device":
        issued = issue_device(args.directory, args.name, days=args.days, force=args.force,
                              passphrase=passphrase, key_type=args.key_type, ca_passphrase=ca_passphrase)
        _report(issued, encrypted=passphrase is not None)
        if args.p12:
            p12 = write_p12(issued, args.directory / CA_CERT, passphrase)
            print("wrote %s (mode 0600%s)" % (
                p12, ", encrypted" if passphrase else ", NOT encrypted: Java keytool wants a passphrase"))
    elif command == "issue-operator":
        issued = issue_operator(args.directory, args.name, days=args.days, force=args.force,
                                passphrase=passphrase, key_type=args.key_type, ca_passphrase=ca_passphrase)
        _report(issued, encrypted=passphrase is not None)
        print("grant it in the broker's ACL: edison-agent pki acl --operator %s" % args.name)
    elif command == "acl":
        print(mosquitto_acl(args.operator or ["operator"], args.prefix), end="")
    elif command == "renew":
        issued = renew(args.directory, args.name, days=args.days, key_type=args.key_type,
                       passphrase=passphrase, ca_passphrase=ca_passphrase)
        _report(issued, encrypted=passphrase is not None)
    elif command == "list":
        _list(args.directory)
    elif command == "issue-devices":
        _issue_devices(args, ca_passphrase)
    elif command == "revoke":
        _revoke(args, ca_passphrase)
    elif command == "crl":
        _refreshed(revocation.refresh(args.directory, days=args.days, ca_passphrase=ca_passphrase))
    else:
        raise PkiError("unknown pki command %r" % command)


def _list(directory: Path) -> None:
    crl = revocation.read_crl(directory)
    revoked = crl.serials if crl is not None else frozenset()
    for item in list_certificates(directory):
        i = item.info
        state = ("REVOKED" if item.serial in revoked else "EXPIRED" if item.days_left < 0
                 else "%s days left" % item.days_left)
        print("%s: %s CN=%s, SANs %s, expires %s (%s), issued by CN=%s" % (
            item.file.name, item.usage, i.subject_cn, ", ".join(i.sans) or "none", i.not_after.strftime("%Y-%m-%d"),
            state, i.issuer_cn))
    if crl is not None:
        print("%s: %s" % (crl.file.name, _crl_state(crl)))


def _crl_state(crl: revocation.Crl) -> str:
    left = crl.next_update - datetime.now(UTC)
    if left.total_seconds() <= 0:
        when = "EXPIRED: a broker using it refuses EVERY device; run 'edison-agent pki crl %s'" % crl.file.parent
    else:
        when = "%s days left" % round(left.total_seconds() / 86400)  # a fresh 30-day CRL says 30, not 29
    return "CRL number %s, %s revoked, next update %s UTC (%s)" % (
        crl.number, len(crl.serials), crl.next_update.strftime("%Y-%m-%d %H:%M"), when)


def _issue_devices(args: argparse.Namespace, ca_passphrase: Optional[bytes]) -> None:
    bundles = provision.issue_devices(args.directory, args.outdir, args.csv, template=args.template,
                                      host=args.host, port=args.port, days=args.days, key_type=args.key_type,
                                      force=args.force, ca_passphrase=ca_passphrase)
    counts = {status: sum(b.status == status for b in bundles) for status in ("issued", "replaced", "skipped")}
    print("%s devices: " % len(bundles) + ", ".join("%s %s" % (n, status) for status, n in counts.items() if n)
          + "; certificates recorded in %s ('edison-agent pki list %s')" % (args.directory, args.directory))
    made = [b for b in bundles if b.status != "skipped"]
    if made:
        print(provision.copy_hint(made[0]))


def _revoke(args: argparse.Namespace, ca_passphrase: Optional[bytes]) -> None:
    if args.refresh:
        if args.name is not None:
            raise PkiError("--refresh revokes nothing: drop NAME, or drop --refresh to revoke it")
        _refreshed(revocation.refresh(args.directory, days=args.days, ca_passphrase=ca_passphrase))
        return
    if args.name is None:
        raise PkiError("give the NAME of the device to revoke (or --refresh to re-sign the CRL)")
    done = revocation.revoke(args.directory, args.name, reason=args.reason, days=args.days,
                             ca_passphrase=ca_passphrase)
    if done.already:
        print("%s (%s, serial %x) was already revoked on %s UTC; %s is unchanged" % (
            done.name, done.cert_file, done.serial, done.revoked_on.strftime("%Y-%m-%d %H:%M"), done.crl.file))
        return
    reason = ", reason " + args.reason if args.reason != "unspecified" else ""
    print("revoked %s (%s, serial %x%s)" % (done.name, done.cert_file, done.serial, reason))
    print("wrote %s: %s" % (done.crl.file, _crl_state(done.crl)))
    print(revocation.mosquitto_lines(done.crl))


def _refreshed(crl: revocation.Crl) -> None:
    print("wrote %s: %s" % (crl.file, _crl_state(crl)))
    print(revocation.mosquitto_lines(crl))


def _read_passphrase(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PkiError("%s: cannot read the passphrase file: %s" % (path, exc.strerror)) from None
    # An editor on Windows ends the line with CRLF; neither byte is part of the passphrase.
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not line:
        raise PkiError("%s: the first line is empty; put the passphrase on it" % path)
    return line


def _report(issued: Issued, encrypted: bool = False, group: Optional[str] = None) -> None:
    info = load_certificate_info(issued.cert_file)
    print("wrote %s (expires %s)" % (issued.cert_file, info.not_after.strftime("%Y-%m-%d")))
    mode = "0640, group %s" % group if group else "0600"
    print("wrote %s (mode %s%s)" % (issued.key_file, mode, ", encrypted" if encrypted else ""))


def _broker_config(args: argparse.Namespace, issued: Issued) -> None:
    """The broker's configuration for these files (or their --install-dir copies): printed, and written
    to DIR/HOSTNAME.BROKER.conf so it can be copied over as it is."""
    broker = args.broker
    ca, cert, key = args.directory / CA_CERT, issued.cert_file, issued.key_file
    if args.install_dir is not None:
        ca, cert, key, readable = broker_setup.install(args.install_dir, broker, ca, cert, key)
        print("copied %s, %s and %s to %s; %s" % (ca.name, cert.name, key.name, args.install_dir, readable))
        where = ""
    elif broker == "mosquitto":
        where = ("# mosquitto 2 reads these files as the mosquitto user, after dropping root: that user\n"
                 "# must be able to read the key and enter its 0700 directory (or use --install-dir).\n")
    else:
        where = "# the broker reads these files as its own user: copy them where it can (--install-dir).\n"
    text = ("# for %s\n%s" % (broker_setup.CONFIG_FILES[broker], where)
            + broker_setup.snippet(broker, ca, cert, key) + "\n\n" + broker_setup.per_device(broker) + "\n")
    written = args.directory / ("%s.%s.conf" % (args.hostname, broker))
    write_file(written, text.encode("utf-8"), 0o644, force=True)
    print("wrote %s:\n" % written)
    print(text, end="")
