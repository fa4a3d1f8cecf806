"""Revoking a device: the CA's certificate revocation list, DIR/crl.pem, for Mosquitto's `crlfile`.

The CRL is the only record of what was revoked: each entry is a serial number (with its date
and reason), the list is signed by DIR's CA, numbered (cRLNumber grows by one at every
change or refresh) and valid until its nextUpdate. OpenSSL refuses every client certificate
once the CRL is past nextUpdate ("CRL has expired"), so it must be refreshed before then.
Off-board only, like agent.tools.pki.authority: `cryptography` is imported when a command runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, FrozenSet, List, Optional

from agent.tools.pki.files import load_ca, load_cert, write_file
from agent.tools.pki.keys import CA_CERT, UTC, PkiError, check_name, require_crypto

if TYPE_CHECKING:
    from cryptography import x509

CRL_FILE = "crl.pem"
CRL_DAYS = 30
# A broker whose clock lags the machine that signed the CRL would call it "not yet valid".
_SKEW = timedelta(minutes=5)
# RFC 5280 reason codes, spelled as there. "unspecified" is written as no reason at all, as
# the RFC asks.
REASONS = ("unspecified", "keyCompromise", "affiliationChanged", "superseded", "cessationOfOperation",
           "privilegeWithdrawn")


@dataclass(frozen=True)
class Crl:
    file: Path
    number: int
    last_update: datetime
    next_update: datetime
    serials: FrozenSet[int]


@dataclass(frozen=True)
class Revocation:
    name: str
    cert_file: Path
    serial: int
    revoked_on: datetime
    crl: Crl
    already: bool  # revoked before: the CRL was left as it was


def revoke(directory: Path, name: str, reason: str = "unspecified", days: int = CRL_DAYS,
           ca_passphrase: Optional[bytes] = None) -> Revocation:
    """Add DIR/<name>.crt's serial to DIR/crl.pem (made if missing); a second time changes nothing."""
    require_crypto()
    from cryptography import x509

    directory = Path(directory)
    check_name(name, "device name")
    if reason not in REASONS:
        raise PkiError("--reason %s: use one of %s" % (reason, ", ".join(REASONS)))
    cert_file = directory / ("%s.crt" % name)
    if not cert_file.exists():
        raise PkiError("%s: no such certificate; 'edison-agent pki list %s' shows them" % (cert_file, directory))
    cert = load_cert(cert_file)
    ca_cert, ca_key = load_ca(directory, ca_passphrase)
    if cert.subject == ca_cert.subject and cert.public_key() == ca_cert.public_key():
        raise PkiError("%s: is the CA; a CA cannot revoke itself: make a new one with "
                       "'pki init-ca --force' and re-issue everything" % cert_file)
    try:
        cert.verify_directly_issued_by(ca_cert)
    except Exception:  # noqa: BLE001 - ValueError, TypeError, InvalidSignature: another CA's
        raise PkiError("%s: was not issued by %s; only its own CA can "
                       "revoke it" % (cert_file, directory / CA_CERT)) from None
    existing = _load_crl(directory, ca_cert)
    entries = list(existing) if existing is not None else []
    for entry in entries:
        if entry.serial_number == cert.serial_number:
            crl = _describe(directory / CRL_FILE, existing)  # type: ignore[arg-type]
            return Revocation(name, cert_file, cert.serial_number, _revoked_on(entry), crl, already=True)
    now = datetime.now(UTC)
    builder = x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(now)
    if reason != "unspecified":
        builder = builder.add_extension(x509.CRLReason(_reason_flag(reason)), critical=False)
    entries.append(builder.build())
    number = _number(existing) + 1 if existing is not None else 1
    crl = _sign(directory, ca_cert, ca_key, entries, number, days)
    return Revocation(name, cert_file, cert.serial_number, now.replace(microsecond=0), crl, already=False)


def refresh(directory: Path, days: int = CRL_DAYS, ca_passphrase: Optional[bytes] = None) -> Crl:
    """Re-sign DIR/crl.pem with the same entries, the next number and a new nextUpdate; makes an
    empty one if there is none (a broker with `crlfile` needs one before anything is revoked)."""
    require_crypto()
    directory = Path(directory)
    ca_cert, ca_key = load_ca(directory, ca_passphrase)
    existing = _load_crl(directory, ca_cert)
    entries = list(existing) if existing is not None else []
    number = _number(existing) + 1 if existing is not None else 1
    return _sign(directory, ca_cert, ca_key, entries, number, days)


def read_crl(directory: Path) -> Optional[Crl]:
    """DIR/crl.pem, checked against DIR's CA certificate; None if there is none yet."""
    require_crypto()
    directory = Path(directory)
    if not (directory / CRL_FILE).exists():
        return None
    crl = _load_crl(directory, load_cert(directory / CA_CERT))
    return _describe(directory / CRL_FILE, crl) if crl is not None else None


def _load_crl(directory: Path, ca_cert: x509.Certificate) -> Optional[x509.CertificateRevocationList]:
    from cryptography import x509

    path = directory / CRL_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PkiError("%s: cannot read: %s" % (path, exc.strerror)) from None
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError as exc:
        raise PkiError("%s: not a PEM CRL (%s); move it away and run 'edison-agent pki crl %s' (the "
                       "revocations in it are then lost: revoke those devices again)"
                       % (path, exc, directory)) from None
    # A CRL signed by an earlier CA (init-ca --force) would make the broker refuse everyone.
    if crl.issuer != ca_cert.subject or not crl.is_signature_valid(ca_cert.public_key()):  # type: ignore[arg-type]
        raise PkiError("%s: not signed by %s (was the CA replaced?); move it away "
                       "and run 'edison-agent pki crl %s'" % (path, directory / CA_CERT, directory))
    return crl


def _sign(directory: Path, ca_cert: x509.Certificate, ca_key: object,
          entries: List[x509.RevokedCertificate], number: int, days: int) -> Crl:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import Encoding

    if days < 1:
        raise PkiError("--days %s: must be at least 1" % days)
    now = datetime.now(UTC).replace(microsecond=0)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
               .last_update(now - _SKEW).next_update(now + timedelta(days=days))
               .add_extension(x509.CRLNumber(number), critical=False))
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    except x509.ExtensionNotFound:  # a hand-made CA without an SKI
        pass
    for entry in entries:
        builder = builder.add_revoked_certificate(entry)
    digest = None if isinstance(ca_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    crl = builder.sign(ca_key, digest)  # type: ignore[arg-type]
    path = directory / CRL_FILE
    # Public, like a certificate: 0644, so the broker's user can read it; replaced atomically, so a
    # broker restarting meanwhile never reads half a file.
    write_file(path, crl.public_bytes(Encoding.PEM), 0o644, force=True)
    return _describe(path, crl)


def _describe(path: Path, crl: x509.CertificateRevocationList) -> Crl:
    last = getattr(crl, "last_update_utc", None) or crl.last_update.replace(tzinfo=UTC)
    next_ = getattr(crl, "next_update_utc", None) or (crl.next_update.replace(tzinfo=UTC)
                                                      if crl.next_update else last)
    return Crl(path, _number(crl), last, next_, frozenset(e.serial_number for e in crl))


def _number(crl: Optional[x509.CertificateRevocationList]) -> int:
    from cryptography import x509

    if crl is None:
        return 0
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return 0


def _revoked_on(entry: x509.RevokedCertificate) -> datetime:
    when = getattr(entry, "revocation_date_utc", None)
    return when if when is not None else entry.revocation_date.replace(tzinfo=UTC)


def _reason_flag(reason: str) -> x509.ReasonFlags:
    from cryptography import x509

    # keyCompromise -> key_compromise, the enum's member names.
    member = "".join("_" + c.lower() if c.isupper() else c for c in reason)
    return x509.ReasonFlags[member]


def mosquitto_lines(crl: Crl) -> str:
    """What to add to the broker, and the two things people forget (reload; nextUpdate)."""
    return "\n".join([
        "",
        "# in the mosquitto.conf listener block (the one with require_certificate true):",
        "crlfile %s" % crl.file.resolve(),
        "",
        "# The first time the line is added, restart mosquitto. After later revokes a reload is enough",
        "# (systemctl reload mosquitto, i.e. SIGHUP): mosquitto 2.0 rereads crlfile then and refuses the",
        "# device at its next connection. A connection already open stays open until it ends: to cut",
        "# the device off now, systemctl restart mosquitto (every client reconnects). mosquitto reads",
        "# the file as its own user: it must be able to enter this directory (or copy crl.pem next to",
        "# its cafile and change the path).",
        "# The CRL expires %s UTC (nextUpdate): after that mosquitto refuses"
        % crl.next_update.strftime("%Y-%m-%d %H:%M"),
        "# EVERY device. Refresh it before then (cron), and reload mosquitto:",
        "#   edison-agent pki crl %s" % crl.file.parent,
    ])
