"""The certificate tool's files: reading certificates and the CA, writing keys and certificates with
their modes, the private directories they live in, and `pki list`.

Every write goes through agent.atomic_file: a key is 0600 from its first byte whatever the
umask, an existing file is replaced only with --force, and a planted symlink is never followed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Tuple

from agent.atomic_file import create_file, replace_file
from agent.tools.pki.keys import CA_CERT, CA_KEY, UTC, PkiError, require_crypto

if TYPE_CHECKING:
    from cryptography import x509

    from agent.tools.pki.keys import IssuerKey


@dataclass(frozen=True)
class Issued:
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class CertInfo:
    subject_cn: str
    issuer_cn: str
    not_after: datetime
    sans: Tuple[str, ...]  # "DNS:name" or "IP:addr", in certificate order
    is_ca: bool


@dataclass(frozen=True)
class Listed:
    file: Path
    info: CertInfo
    days_left: int
    usage: str
    serial: int


def write_file(path: Path, data: bytes, mode: int, force: bool) -> None:
    """`path` with exactly `mode`; an existing one is refused unless `force` replaces it whole."""
    try:
        if force:
            replace_file(path, data, mode)
        else:
            create_file(path, data, mode)
    except FileExistsError:
        raise PkiError("%s: already exists; use --force to replace it" % path) from None
    except OSError as exc:
        raise PkiError("%s: cannot write: %s" % (path, exc.strerror)) from None


def prepare(issued: Issued, force: bool) -> None:
    # Checked before a key is generated, so a refusal leaves nothing half-written.
    for path in (issued.cert_file, issued.key_file):
        if not force and os.path.lexists(path):
            raise PkiError("%s: already exists; use --force to replace it" % path)
    private_directory(issued.cert_file.parent, "private keys do not belong there")


def private_directory(directory: Path, why: str) -> None:
    """Make `directory` (0700) if it is missing; refuse one every user can read."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise PkiError("%s: cannot create the directory: %s" % (directory, exc.strerror)) from None
    mode = directory.stat().st_mode & 0o777
    if mode & 0o004:
        raise PkiError("%s: readable by every user (mode %04o); %s: run 'chmod 700 %s' or choose another "
                       "directory" % (directory, mode, why, directory))


def write_pair(issued: Issued, cert: x509.Certificate, key: IssuerKey,
               passphrase: Optional[bytes], force: bool) -> None:
    from cryptography.hazmat.primitives import serialization as ser

    encryption: ser.KeySerializationEncryption = ser.NoEncryption()
    if passphrase:
        encryption = ser.BestAvailableEncryption(passphrase)
    key_pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, encryption)
    write_file(issued.key_file, key_pem, 0o600, force)
    write_file(issued.cert_file, cert.public_bytes(ser.Encoding.PEM), 0o644, force)


def write_p12(issued: Issued, ca_file: Path, passphrase: Optional[bytes]) -> Path:
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


def load_cert(path: Path) -> x509.Certificate:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise PkiError("%s: cannot read: %s" % (path, exc.strerror)) from None
    except ValueError as exc:
        raise PkiError("%s: not a PEM certificate (%s)" % (path, exc)) from None


def load_ca(ca_dir: Path, passphrase: Optional[bytes] = None) -> Tuple[x509.Certificate, IssuerKey]:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    cert_file, key_file = ca_dir / CA_CERT, ca_dir / CA_KEY
    if not cert_file.exists():
        raise PkiError("%s: no CA here; run 'edison-agent pki init-ca %s' first" % (cert_file, ca_dir))
    if not key_file.exists():
        raise PkiError("%s: the CA's private key is missing; put it next to %s" % (key_file, CA_CERT))
    cert = load_cert(cert_file)
    try:
        key_pem = key_file.read_bytes()
        key = load_pem_private_key(key_pem, password=passphrase)
    except TypeError:  # an encrypted key without a password, or a password for a plain key
        if passphrase is not None:
            raise PkiError("%s: the CA key is not encrypted; drop --ca-passphrase-file" % key_file) from None
        raise PkiError("%s: the CA key is passphrase-protected; give --ca-passphrase-file "
                       "FILE (its first line)" % key_file) from None
    except ValueError as exc:
        # About 1 wrong passphrase in 400 decrypts to valid padding and then fails as "could not
        # deserialize": for an encrypted key that too means the passphrase is wrong.
        if passphrase is not None and ("password" in str(exc).lower() or b"ENCRYPTED" in key_pem[:64]):
            raise PkiError("%s: wrong CA passphrase (--ca-passphrase-file)" % key_file) from None
        raise PkiError("%s: not a PEM private key (%s)" % (key_file, exc)) from None
    except OSError as exc:
        raise PkiError("%s: cannot read: %s" % (key_file, exc.strerror)) from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise PkiError("%s: the CA key must be EC, RSA or Ed25519" % key_file)
    expiry = not_after(cert)
    if expiry <= datetime.now(UTC):
        raise PkiError("%s: the CA expired on %s; make a new one with 'edison-agent pki init-ca --force %s' "
                       "and re-issue everything" % (cert_file, expiry.strftime("%Y-%m-%d"), ca_dir))
    return cert, key


def load_certificate_info(path: Path) -> CertInfo:
    require_crypto()
    from cryptography import x509

    cert = load_cert(Path(path))
    sans: List[str] = []
    try:
        alt_names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        alt_names = x509.SubjectAlternativeName([])
    for entry in alt_names:
        if isinstance(entry, x509.DNSName):
            sans.append("DNS:%s" % entry.value)
        elif isinstance(entry, x509.IPAddress):
            sans.append("IP:%s" % entry.value)
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return CertInfo(common_name(cert.subject), common_name(cert.issuer), not_after(cert), tuple(sans), is_ca)


def list_certificates(directory: Path) -> List[Listed]:
    """Every certificate in DIR, with the days it has left and what it is for."""
    require_crypto()
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    directory = Path(directory)
    if not directory.is_dir():
        raise PkiError("%s: not a directory" % directory)
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


def cert_dates(cert: x509.Certificate) -> Tuple[datetime, datetime]:
    if hasattr(cert, "not_valid_before_utc"):
        return cert.not_valid_before_utc, cert.not_valid_after_utc
    return cert.not_valid_before.replace(tzinfo=UTC), cert.not_valid_after.replace(tzinfo=UTC)


def not_after(cert: x509.Certificate) -> datetime:
    # not_valid_after_utc arrived in cryptography 42; setup.py allows >= 3.4.
    if hasattr(cert, "not_valid_after_utc"):
        return cert.not_valid_after_utc
    return cert.not_valid_after.replace(tzinfo=UTC)


def common_name(name: x509.Name) -> str:
    from cryptography.x509.oid import NameOID

    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""
