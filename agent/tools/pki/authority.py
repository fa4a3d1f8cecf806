"""The certificate tool: a private CA, broker certificates and device certificates.

Three commands replace the openssl recipe: ``pki init-ca``, ``pki issue-broker`` and
``pki issue-device``. ``cryptography`` is imported only when a command runs, so the agent
itself installs and imports on the board without it. This module issues; its vocabulary (names,
key types, validity, PkiError) is agent.tools.pki.keys, its files agent.tools.pki.files, what a
broker needs agent.tools.pki.broker_setup. The command line is agent.tools.pki.cli; many devices
at once, agent.tools.pki.provision; revocation (the CRL), agent.tools.pki.revocation.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

from agent.tools.pki.broker_setup import mosquitto_acl, mosquitto_listener
from agent.tools.pki.files import (
    Issued,
    cert_dates,
    load_ca,
    load_cert,
    load_certificate_info,
    prepare,
    write_pair,
)
from agent.tools.pki.keys import (
    CA_CERT,
    CA_KEY,
    DEFAULT_KEY_TYPE,
    PkiError,
    check_key_type,
    check_name,
    group_id,
    key_usage,
    new_key,
    parse_ip,
    require_crypto,
    validity,
)

if TYPE_CHECKING:
    from cryptography import x509

    from agent.tools.pki.keys import IssuerKey

# What callers (the tests, scripts, bench) take from here besides the issuing itself: the
# certificate tool's front door, so they need not know how it is split.
__all__ = ["Issued", "PkiError", "init_ca", "issue_broker", "issue_device", "issue_operator", "renew",
           "load_certificate_info", "mosquitto_acl", "mosquitto_listener"]


def init_ca(directory: Path, name: str = "edison-agent CA", days: int = 3650,
            force: bool = False, key_type: str = DEFAULT_KEY_TYPE,
            passphrase: Optional[bytes] = None) -> Issued:
    """Create a self-signed CA in DIR/ca.crt and DIR/ca.key."""
    require_crypto()
    from cryptography import x509

    directory = Path(directory)
    issued = Issued(directory / CA_CERT, directory / CA_KEY)
    start, end = validity(None, days)
    prepare(issued, force)
    key, cert = _sign(name, start, end, [
        # path_length=0: this CA signs leaves only, never another CA.
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), True),
    ], key_type=key_type)
    write_pair(issued, cert, key, passphrase, force)
    return issued


def issue_broker(directory: Path, hostname: str, ips: Sequence[str] = (), days: int = 730,
                 force: bool = False, not_before: Optional[datetime] = None,
                 key_type: str = DEFAULT_KEY_TYPE, ca_passphrase: Optional[bytes] = None,
                 group: Optional[str] = None) -> Issued:
    """Issue DIR/<hostname>.crt/.key for the broker, signed by DIR's CA."""
    require_crypto()
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    sans: List[x509.GeneralName] = []
    host_ip = parse_ip(hostname)
    if host_ip is not None:
        # Clients match an address against IP SANs only; as a DNS SAN it matches nothing.
        sans.append(x509.IPAddress(host_ip))
    else:
        check_name(hostname, "hostname")
        sans.append(x509.DNSName(hostname))
    for text in ips:
        ip = parse_ip(text)
        if ip is None:
            raise PkiError("--ip %s: not an IP address" % text)
        if ip != host_ip:
            sans.append(x509.IPAddress(ip))
    directory = Path(directory)
    gid = None
    if group is not None:
        gid = group_id(group)
        if gid is None:
            raise PkiError("--group %s: no such group on this machine (is the broker installed?)" % group)
    issued = _issue_leaf(directory, directory, hostname, sans, ExtendedKeyUsageOID.SERVER_AUTH,
                         days, force, None, not_before, key_type, ca_passphrase)
    if gid is not None:
        try:
            os.chown(issued.key_file, -1, gid)
            os.chmod(issued.key_file, 0o640)
        except OSError as exc:
            raise PkiError("%s: cannot give it to group %s: %s (run as root, or as a member of %s)"
                           % (issued.key_file, group, exc.strerror, group)) from None
    return issued


def issue_device(directory: Path, name: str, days: int = 730, force: bool = False,
                 passphrase: Optional[bytes] = None, not_before: Optional[datetime] = None,
                 ca_directory: Optional[Path] = None, key_type: str = DEFAULT_KEY_TYPE,
                 ca_passphrase: Optional[bytes] = None, files: Optional[Issued] = None) -> Issued:
    """Issue DIR/<name>.crt/.key, a client certificate for one device.

    `files` writes the pair under other names instead (a provisioning bundle's certs/client.*)."""
    require_crypto()
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    check_name(name, "device name")
    if passphrase is not None and not passphrase:
        raise PkiError("the passphrase is empty; give a non-empty one or none at all")
    directory = Path(directory)
    ca_dir = Path(ca_directory) if ca_directory is not None else directory
    return _issue_leaf(directory, ca_dir, name, [x509.DNSName(name)], ExtendedKeyUsageOID.CLIENT_AUTH,
                       days, force, passphrase, not_before, key_type, ca_passphrase, files)


def issue_operator(directory: Path, name: str = "operator", days: int = 730, force: bool = False,
                   passphrase: Optional[bytes] = None, key_type: str = DEFAULT_KEY_TYPE,
                   ca_passphrase: Optional[bytes] = None) -> Issued:
    """Issue DIR/<name>.crt/.key for a person or tool that sends commands to devices.

    A client certificate like a device's: what makes it an operator's is its CN (the MQTT
    username, with use_identity_as_username) appearing as a `user` in the broker's ACL
    (`pki acl --operator NAME`). So an operator name must not also be a device's."""
    return issue_device(directory, name, days=days, force=force, passphrase=passphrase, key_type=key_type,
                        ca_passphrase=ca_passphrase)


def renew(directory: Path, name: str, days: Optional[int] = None, key_type: str = DEFAULT_KEY_TYPE,
          passphrase: Optional[bytes] = None, ca_passphrase: Optional[bytes] = None) -> Issued:
    """A new key and certificate for DIR/<name>.crt: same name, SANs and use; a fresh validity."""
    require_crypto()
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    directory = Path(directory)
    path = directory / ("%s.crt" % name)
    if not path.exists():
        raise PkiError("%s: no such certificate; 'edison-agent pki list %s' shows them" % (path, directory))
    cert = load_cert(path)
    info = load_certificate_info(path)
    if info.is_ca:
        raise PkiError("%s: is the CA; make a new one with 'pki init-ca --force' and re-issue everything" % path)
    try:
        ekus = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        sans = list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        raise PkiError("%s: not made by this tool (no extendedKeyUsage or SAN); issue a new one" % path) from None
    eku = ExtendedKeyUsageOID.SERVER_AUTH if ExtendedKeyUsageOID.SERVER_AUTH in ekus else \
        ExtendedKeyUsageOID.CLIENT_AUTH
    if days is None:
        start, end = cert_dates(cert)
        days = max(1, (end - start).days)
    return _issue_leaf(directory, directory, info.subject_cn, sans, eku, days, True, passphrase, None,
                       key_type, ca_passphrase)


def _issue_leaf(directory: Path, ca_dir: Path, cn: str, sans: List[x509.GeneralName],
                eku: x509.ObjectIdentifier, days: int, force: bool,
                passphrase: Optional[bytes], not_before: Optional[datetime],
                key_type: str = DEFAULT_KEY_TYPE, ca_passphrase: Optional[bytes] = None,
                files: Optional[Issued] = None) -> Issued:
    from cryptography import x509

    if cn.lower() == "ca":
        raise PkiError("%s: the name 'ca' would replace the CA; pick another" % (directory / CA_CERT))
    issued = files or Issued(directory / ("%s.crt" % cn), directory / ("%s.key" % cn))
    start, end = validity(not_before, days)
    check_key_type(key_type)
    ca = load_ca(ca_dir, ca_passphrase)
    prepare(issued, force)
    # ECDHE needs only digital_signature; key_agreement is an EC key's other use, key_encipherment
    # an RSA key's (TLS 1.2 RSA key exchange).
    usage = ({"key_agreement": True} if key_type.startswith("ec-") else
             {"key_encipherment": True} if key_type.startswith("rsa") else {})
    key, cert = _sign(cn, start, end, [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (key_usage(digital_signature=True, **usage), True),
        (x509.ExtendedKeyUsage([eku]), False),
        (x509.SubjectAlternativeName(sans), False),
    ], ca, key_type)
    write_pair(issued, cert, key, passphrase, force)
    return issued


def _sign(cn: str, start: datetime, end: datetime,
          extensions: List[Tuple[x509.ExtensionType, bool]],
          issuer: Optional[Tuple[x509.Certificate, IssuerKey]] = None,
          key_type: str = DEFAULT_KEY_TYPE) -> Tuple[IssuerKey, x509.Certificate]:
    """A new key of `key_type` and its certificate; self-signed when there is no issuer."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.x509.oid import NameOID

    key = new_key(key_type)
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
