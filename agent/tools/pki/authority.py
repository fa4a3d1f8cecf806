"""The certificate tool: a private CA, broker certificates and device certificates.

Three commands replace the openssl recipe: ``pki init-ca``, ``pki issue-broker`` and
``pki issue-device``. ``cryptography`` is imported only when a command runs, so the agent
itself installs and imports on the board without it. The command line is agent.tools.pki.cli; many
devices at once, agent.tools.pki.provision; revocation (the CRL), agent.tools.pki.revocation.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

# Annotations are never evaluated (the __future__ import), so `X | None` and `list[...]`
# in them are fine on Python 3.9.
if TYPE_CHECKING:
    from collections.abc import Sequence

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    # A CA made by hand with the blog post's openssl recipe is RSA.
    IssuerKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
# A leaf is named after its CN, so the name must be a safe file name as well as a
# plausible DNS name (use_identity_as_username also makes it the MQTT username).
_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")
# Room for a board whose clock lags the machine that issued the certificate.
_SKEW = timedelta(minutes=5)
UTC = timezone(timedelta(0))  # datetime.UTC arrived in 3.11; ruff flags timezone.utc
# ECDSA P-256 by default: the cheapest handshake on the Edison's 500 MHz Atom among widely accepted keys.
KEY_TYPES = ("ec-p256", "ec-p384", "rsa2048", "rsa3072", "ed25519")
DEFAULT_KEY_TYPE = "ec-p256"


class PkiError(Exception):
    """A failure the user can fix; the message names the file and the fix."""


@dataclass(frozen=True)
class Issued:
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class CertInfo:
    subject_cn: str
    issuer_cn: str
    not_after: datetime
    sans: tuple[str, ...]  # "DNS:name" or "IP:addr", in certificate order
    is_ca: bool


def require_crypto() -> None:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise PkiError(
            "the pki commands need the 'cryptography' package: pip install 'edison-agent[pki]'"
        ) from None


def init_ca(directory: Path, name: str = "edison-agent CA", days: int = 3650,
            force: bool = False, key_type: str = DEFAULT_KEY_TYPE,
            passphrase: bytes | None = None) -> Issued:
    """Create a self-signed CA in DIR/ca.crt and DIR/ca.key."""
    require_crypto()
    from cryptography import x509

    directory = Path(directory)
    issued = Issued(directory / CA_CERT, directory / CA_KEY)
    start, end = _validity(None, days)
    _prepare(issued, force)
    key, cert = _sign(name, start, end, [
        # path_length=0: this CA signs leaves only, never another CA.
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (_key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), True),
    ], key_type=key_type)
    _write_pair(issued, cert, key, passphrase, force)
    return issued


def issue_broker(directory: Path, hostname: str, ips: Sequence[str] = (), days: int = 730,
                 force: bool = False, not_before: datetime | None = None,
                 key_type: str = DEFAULT_KEY_TYPE, ca_passphrase: bytes | None = None,
                 group: str | None = None) -> Issued:
    """Issue DIR/<hostname>.crt/.key for the broker, signed by DIR's CA."""
    require_crypto()
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    sans: list[x509.GeneralName] = []
    host_ip = _parse_ip(hostname)
    if host_ip is not None:
        # Clients match an address against IP SANs only; as a DNS SAN it matches nothing.
        sans.append(x509.IPAddress(host_ip))
    else:
        check_name(hostname, "hostname")
        sans.append(x509.DNSName(hostname))
    for text in ips:
        ip = _parse_ip(text)
        if ip is None:
            raise PkiError(f"--ip {text}: not an IP address")
        if ip != host_ip:
            sans.append(x509.IPAddress(ip))
    directory = Path(directory)
    gid = _group_id(group) if group is not None else None
    issued = _issue_leaf(directory, directory, hostname, sans, ExtendedKeyUsageOID.SERVER_AUTH,
                         days, force, None, not_before, key_type, ca_passphrase)
    if gid is not None:
        try:
            os.chown(issued.key_file, -1, gid)
            os.chmod(issued.key_file, 0o640)
        except OSError as exc:
            raise PkiError(f"{issued.key_file}: cannot give it to group {group}: {exc.strerror} "
                           f"(run as root, or as a member of {group})") from None
    return issued


def issue_device(directory: Path, name: str, days: int = 730, force: bool = False,
                 passphrase: bytes | None = None, not_before: datetime | None = None,
                 ca_directory: Path | None = None, key_type: str = DEFAULT_KEY_TYPE,
                 ca_passphrase: bytes | None = None, files: Issued | None = None,
                 _wrong_usage: bool = False) -> Issued:
    """Issue DIR/<name>.crt/.key, a client certificate for one device.

    `files` writes the pair under other names instead (a provisioning bundle's certs/client.*).
    `_wrong_usage` (tests only) makes it a serverAuth-only certificate, which brokers refuse."""
    require_crypto()
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    check_name(name, "device name")
    if passphrase is not None and not passphrase:
        raise PkiError("the passphrase is empty; give a non-empty one or none at all")
    directory = Path(directory)
    ca_dir = Path(ca_directory) if ca_directory is not None else directory
    usage = ExtendedKeyUsageOID.SERVER_AUTH if _wrong_usage else ExtendedKeyUsageOID.CLIENT_AUTH
    return _issue_leaf(directory, ca_dir, name, [x509.DNSName(name)],
                       usage, days, force, passphrase, not_before, key_type, ca_passphrase, files)


def issue_operator(directory: Path, name: str = "operator", days: int = 730, force: bool = False,
                   passphrase: bytes | None = None, key_type: str = DEFAULT_KEY_TYPE,
                   ca_passphrase: bytes | None = None) -> Issued:
    """Issue DIR/<name>.crt/.key for a person or tool that sends commands to devices.

    A client certificate like a device's: what makes it an operator's is its CN (the MQTT
    username, with use_identity_as_username) appearing as a `user` in the broker's ACL
    (`pki acl --operator NAME`). So an operator name must not also be a device's."""
    return issue_device(directory, name, days=days, force=force, passphrase=passphrase, key_type=key_type,
                        ca_passphrase=ca_passphrase)


def mosquitto_acl(operators: Sequence[str] = ("operator",), prefix: str = "edison") -> str:
    """An acl_file for mosquitto: each device under its own prefix, commands from operators only."""
    for name in operators:
        check_name(name, "operator name")
    if not prefix or any(c in prefix for c in "+# %"):
        raise PkiError(f"--prefix {prefix!r}: a topic level without '+', '#', '%' or spaces")
    lines = [
        "# Mosquitto ACL for edison-agent: acl_file in mosquitto.conf. The TLS listener needs",
        "# use_identity_as_username true, so a client's username is its certificate's CN, which",
        "# no client can choose. A topic not granted below is denied; a denied publish is dropped",
        "# silently by the broker (the publisher still gets its PUBACK).",
        "",
        "# Every certificate (%u is its CN): publish only under its own prefix, read its own",
        f"# commands. Not {prefix}/%u/#: that would let a device write commands, to itself at least.",
        f"pattern write {prefix}/%u/telemetry",
        f"pattern write {prefix}/%u/status",
        f"pattern write {prefix}/%u/health",
        f"pattern write {prefix}/%u/reply/#",
        f"pattern read {prefix}/%u/cmd/#",
    ]
    for name in operators:
        lines += [
            "",
            f"# Operator {name}: commands to every device, and everything devices publish.",
            f"user {name}",
            f"topic write {prefix}/+/cmd/#",
            f"topic read {prefix}/#",
        ]
    return "\n".join(lines) + "\n"


def write_p12(issued: Issued, ca_file: Path, passphrase: bytes | None) -> Path:
    """DIR/<name>.p12: key, certificate and CA in one PKCS#12 bundle (what Java keystores import)."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.serialization import load_pem_private_key, pkcs12

    key = load_pem_private_key(issued.key_file.read_bytes(), password=passphrase)
    cert, ca = load_cert(issued.cert_file), load_cert(ca_file)
    encryption: ser.KeySerializationEncryption = (
        ser.BestAvailableEncryption(passphrase) if passphrase else ser.NoEncryption())
    data = pkcs12.serialize_key_and_certificates(
        issued.cert_file.stem.encode(), key, cert, [ca], encryption)  # type: ignore[arg-type]
    path = issued.cert_file.with_suffix(".p12")
    write_file(path, data, 0o600, True)
    return path


@dataclass(frozen=True)
class Listed:
    file: Path
    info: CertInfo
    days_left: int
    usage: str
    serial: int


def list_certificates(directory: Path) -> list[Listed]:
    """Every certificate in DIR, with the days it has left and what it is for."""
    require_crypto()
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    directory = Path(directory)
    if not directory.is_dir():
        raise PkiError(f"{directory}: not a directory")
    now = datetime.now(UTC)
    found = []
    for path in sorted(directory.glob("*.crt")):
        info = load_certificate_info(path)
        cert = load_cert(path)
        try:
            ekus = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        except x509.ExtensionNotFound:
            ekus = set()
        usage = ("CA" if info.is_ca else "broker" if ExtendedKeyUsageOID.SERVER_AUTH in ekus
                 else "device" if ExtendedKeyUsageOID.CLIENT_AUTH in ekus else "any")
        found.append(Listed(path, info, (info.not_after - now).days, usage, cert.serial_number))
    return found


def renew(directory: Path, name: str, days: int | None = None, key_type: str = DEFAULT_KEY_TYPE,
          passphrase: bytes | None = None, ca_passphrase: bytes | None = None) -> Issued:
    """A new key and certificate for DIR/<name>.crt: same name, SANs and use; a fresh validity."""
    require_crypto()
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    directory = Path(directory)
    path = directory / f"{name}.crt"
    if not path.exists():
        raise PkiError(f"{path}: no such certificate; 'edison-agent pki list {directory}' shows them")
    cert = load_cert(path)
    info = load_certificate_info(path)
    if info.is_ca:
        raise PkiError(f"{path}: is the CA; make a new one with 'pki init-ca --force' and re-issue everything")
    try:
        ekus = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        sans = list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        raise PkiError(f"{path}: not made by this tool (no extendedKeyUsage or SAN); issue a new one") from None
    eku = ExtendedKeyUsageOID.SERVER_AUTH if ExtendedKeyUsageOID.SERVER_AUTH in ekus else \
        ExtendedKeyUsageOID.CLIENT_AUTH
    if days is None:
        start, end = _cert_dates(cert)
        days = max(1, (end - start).days)
    return _issue_leaf(directory, directory, info.subject_cn, sans, eku, days, True, passphrase, None,
                       key_type, ca_passphrase)


def _cert_dates(cert: x509.Certificate) -> tuple[datetime, datetime]:
    if hasattr(cert, "not_valid_before_utc"):
        return cert.not_valid_before_utc, cert.not_valid_after_utc
    return cert.not_valid_before.replace(tzinfo=UTC), cert.not_valid_after.replace(tzinfo=UTC)


def load_certificate_info(path: Path) -> CertInfo:
    require_crypto()
    from cryptography import x509

    cert = load_cert(Path(path))
    sans: list[str] = []
    try:
        alt_names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        alt_names = x509.SubjectAlternativeName([])
    for entry in alt_names:
        if isinstance(entry, x509.DNSName):
            sans.append(f"DNS:{entry.value}")
        elif isinstance(entry, x509.IPAddress):
            sans.append(f"IP:{entry.value}")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return CertInfo(_common_name(cert.subject), _common_name(cert.issuer),
                    _not_after(cert), tuple(sans), is_ca)


def _issue_leaf(directory: Path, ca_dir: Path, cn: str, sans: list[x509.GeneralName],
                eku: x509.ObjectIdentifier, days: int, force: bool,
                passphrase: bytes | None, not_before: datetime | None,
                key_type: str = DEFAULT_KEY_TYPE, ca_passphrase: bytes | None = None,
                files: Issued | None = None) -> Issued:
    from cryptography import x509

    if cn.lower() == "ca":
        raise PkiError(f"{directory / CA_CERT}: the name 'ca' would replace the CA; pick another")
    issued = files or Issued(directory / f"{cn}.crt", directory / f"{cn}.key")
    start, end = _validity(not_before, days)
    _check_key_type(key_type)
    ca = load_ca(ca_dir, ca_passphrase)
    _prepare(issued, force)
    # ECDHE needs only digital_signature; key_agreement is an EC key's other use, key_encipherment
    # an RSA key's (TLS 1.2 RSA key exchange).
    usage = ({"key_agreement": True} if key_type.startswith("ec-") else
             {"key_encipherment": True} if key_type.startswith("rsa") else {})
    key, cert = _sign(cn, start, end, [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (_key_usage(digital_signature=True, **usage), True),
        (x509.ExtendedKeyUsage([eku]), False),
        (x509.SubjectAlternativeName(sans), False),
    ], ca, key_type)
    _write_pair(issued, cert, key, passphrase, force)
    return issued


def _sign(cn: str, start: datetime, end: datetime,
          extensions: list[tuple[x509.ExtensionType, bool]],
          issuer: tuple[x509.Certificate, IssuerKey] | None = None,
          key_type: str = DEFAULT_KEY_TYPE) -> tuple[IssuerKey, x509.Certificate]:
    """A new key of `key_type` and its certificate; self-signed when there is no issuer."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.x509.oid import NameOID

    key = _new_key(key_type)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    issuer_name, signer = (subject, key) if issuer is None else (issuer[0].subject, issuer[1])
    if issuer is None:
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    else:
        try:
            ca_ski = issuer[0].extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value)
        except x509.ExtensionNotFound:  # a hand-made CA without an SKI
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key())
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end))
    # Python 3.13's VERIFY_X509_STRICT rejects a chain whose certificates lack SKI/AKI.
    for extension, critical in [*extensions, (ski, False), (aki, False)]:
        builder = builder.add_extension(extension, critical=critical)
    # Ed25519 signs without a separate digest.
    digest = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return key, builder.sign(signer, digest)


def _check_key_type(key_type: str) -> None:
    if key_type not in KEY_TYPES:
        raise PkiError(f"--key-type {key_type}: use one of {', '.join(KEY_TYPES)}")


def _new_key(key_type: str) -> IssuerKey:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    _check_key_type(key_type)
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))


def _group_id(group: str) -> int:
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise PkiError(f"--group {group}: no such group on this machine (is the broker installed?)") from None


def _key_usage(**flags: bool) -> x509.KeyUsage:
    from cryptography import x509

    names = ("digital_signature", "content_commitment", "key_encipherment",
             "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
             "encipher_only", "decipher_only")
    return x509.KeyUsage(**{n: flags.get(n, False) for n in names})


def _validity(not_before: datetime | None, days: int) -> tuple[datetime, datetime]:
    if days < 1:
        raise PkiError(f"--days {days}: must be at least 1")
    if not_before is None:
        not_before = datetime.now(UTC) - _SKEW
    elif not_before.tzinfo is None:
        not_before = not_before.replace(tzinfo=UTC)
    return not_before, not_before + timedelta(days=days)


def _parse_ip(text: str) -> IPAddr | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def check_name(name: str, what: str) -> None:
    if not _NAME_RE.match(name) or ".." in name:
        raise PkiError(f"{what} {name!r}: use letters, digits, '.', '-' and '_' only "
                       "(it becomes the certificate's CN and its file name)")


def _prepare(issued: Issued, force: bool) -> None:
    # Checked before a key is generated, so a refusal leaves nothing half-written.
    for path in (issued.cert_file, issued.key_file):
        if not force and os.path.lexists(path):
            raise PkiError(f"{path}: already exists; use --force to replace it")
    private_directory(issued.cert_file.parent, "private keys do not belong there")


def private_directory(directory: Path, why: str) -> None:
    """Make `directory` (0700) if it is missing; refuse one every user can read."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise PkiError(f"{directory}: cannot create the directory: {exc.strerror}") from None
    mode = directory.stat().st_mode & 0o777
    if mode & 0o004:
        raise PkiError(f"{directory}: readable by every user (mode {mode:04o}); {why}: "
                       f"run 'chmod 700 {directory}' or choose another directory")


def load_ca(ca_dir: Path, passphrase: bytes | None = None) -> tuple[x509.Certificate, IssuerKey]:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    cert_file, key_file = ca_dir / CA_CERT, ca_dir / CA_KEY
    if not cert_file.exists():
        raise PkiError(f"{cert_file}: no CA here; run 'edison-agent pki init-ca {ca_dir}' first")
    if not key_file.exists():
        raise PkiError(f"{key_file}: the CA's private key is missing; put it next to {CA_CERT}")
    cert = load_cert(cert_file)
    try:
        key_pem = key_file.read_bytes()
        key = load_pem_private_key(key_pem, password=passphrase)
    except TypeError:  # an encrypted key without a password, or a password for a plain key
        if passphrase is not None:
            raise PkiError(f"{key_file}: the CA key is not encrypted; drop --ca-passphrase-file") from None
        raise PkiError(f"{key_file}: the CA key is passphrase-protected; give --ca-passphrase-file "
                       "FILE (its first line)") from None
    except ValueError as exc:
        # About 1 wrong passphrase in 400 decrypts to valid padding and then fails as "could not
        # deserialize": for an encrypted key that too means the passphrase is wrong.
        if passphrase is not None and ("password" in str(exc).lower() or b"ENCRYPTED" in key_pem[:64]):
            raise PkiError(f"{key_file}: wrong CA passphrase (--ca-passphrase-file)") from None
        raise PkiError(f"{key_file}: not a PEM private key ({exc})") from None
    except OSError as exc:
        raise PkiError(f"{key_file}: cannot read: {exc.strerror}") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise PkiError(f"{key_file}: the CA key must be EC, RSA or Ed25519")
    expiry = _not_after(cert)
    if expiry <= datetime.now(UTC):
        raise PkiError(f"{cert_file}: the CA expired on {expiry:%Y-%m-%d}; make a new one with "
                       f"'edison-agent pki init-ca --force {ca_dir}' and re-issue everything")
    return cert, key


def load_cert(path: Path) -> x509.Certificate:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise PkiError(f"{path}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise PkiError(f"{path}: not a PEM certificate ({exc})") from None


def _not_after(cert: x509.Certificate) -> datetime:
    # not_valid_after_utc arrived in cryptography 42; setup.py allows >= 3.4.
    if hasattr(cert, "not_valid_after_utc"):
        return cert.not_valid_after_utc
    return cert.not_valid_after.replace(tzinfo=UTC)


def _common_name(name: x509.Name) -> str:
    from cryptography.x509.oid import NameOID

    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def _write_pair(issued: Issued, cert: x509.Certificate, key: IssuerKey,
                passphrase: bytes | None, force: bool) -> None:
    from cryptography.hazmat.primitives import serialization as ser

    encryption: ser.KeySerializationEncryption = ser.NoEncryption()
    if passphrase:
        encryption = ser.BestAvailableEncryption(passphrase)
    key_pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, encryption)
    write_file(issued.key_file, key_pem, 0o600, force)
    write_file(issued.cert_file, cert.public_bytes(ser.Encoding.PEM), 0o644, force)


def write_file(path: Path, data: bytes, mode: int, force: bool) -> None:
    # O_EXCL refuses an existing file and never follows a planted symlink. With force, a
    # fresh file is renamed over the old one, so even a replaced key is 0600 from birth.
    target = path.with_name(f".{path.name}.tmp") if force else path
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        if force and os.path.lexists(target):
            target.unlink()  # left behind by an interrupted run
        fd = os.open(target, flags, mode)
    except FileExistsError:
        raise PkiError(f"{path}: already exists; use --force to replace it") from None
    except OSError as exc:
        raise PkiError(f"{path}: cannot write: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as out:
        # Exactly `mode` whatever the umask: a certificate readable so mosquitto can read it, a key
        # 0600 (an umask like 0277 would otherwise leave it 0400, one like 0 cannot widen it).
        os.fchmod(out.fileno(), mode)
        out.write(data)
    if force:
        os.replace(target, path)


def mosquitto_listener(ca_file: Path, cert_file: Path, key_file: Path, port: int = 8883,
                       address: str | None = None, crlfile: Path | None = None) -> str:
    """The mosquitto.conf listener block for a broker certificate from this tool.

    With `crlfile` (DIR/crl.pem from 'pki revoke' or 'pki crl') the broker refuses revoked devices."""
    lines = [
        f"listener {port}" + (f" {address}" if address else ""),
        f"cafile {ca_file.resolve()}",
        f"certfile {cert_file.resolve()}",
        f"keyfile {key_file.resolve()}",
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.2",
        # Nagle plus delayed ACKs adds ~40 ms to every TLS handshake otherwise.
        "set_tcp_nodelay true",
    ]
    if crlfile is not None:
        lines.append(f"crlfile {crlfile.resolve()}")
    return "\n".join(lines)
