"""The certificate tool's vocabulary: file names, key types, the names a certificate may carry, its
validity, and the one error every pki command raises.

``cryptography`` is imported only inside the functions that need it, so the agent itself
installs and imports on the board without it.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Optional, Tuple, Union

from agent.errors import AgentError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    # A CA made by hand with the blog post's openssl recipe is RSA.
    IssuerKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey]
    IPAddr = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
# A leaf is named after its CN, so the name must be a safe file name as well as a
# plausible DNS name (use_identity_as_username also makes it the MQTT username).
_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")
# Room for a board whose clock lags the machine that issued the certificate.
SKEW = timedelta(minutes=5)
UTC = timezone(timedelta(0))  # datetime.UTC arrived in 3.11; ruff flags timezone.utc
# ECDSA P-256 by default: the cheapest handshake on the Edison's 500 MHz Atom among widely accepted keys.
KEY_TYPES = ("ec-p256", "ec-p384", "rsa2048", "rsa3072", "ed25519")
DEFAULT_KEY_TYPE = "ec-p256"


class PkiError(AgentError):
    """A failure the user can fix; the message names the file and the fix."""


def require_crypto() -> None:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise PkiError(
            "the pki commands need the 'cryptography' package: pip install 'edison-agent[pki]'"
        ) from None


def check_name(name: str, what: str) -> None:
    if not _NAME_RE.match(name) or ".." in name:
        raise PkiError("%s %r: use letters, digits, '.', '-' and '_' only "
                       "(it becomes the certificate's CN and its file name)" % (what, name))


def check_key_type(key_type: str) -> None:
    if key_type not in KEY_TYPES:
        raise PkiError("--key-type %s: use one of %s" % (key_type, ", ".join(KEY_TYPES)))


def parse_ip(text: str) -> Optional[IPAddr]:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def new_key(key_type: str) -> IssuerKey:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    check_key_type(key_type)
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))


def key_usage(**flags: bool) -> x509.KeyUsage:
    from cryptography import x509

    names = ("digital_signature", "content_commitment", "key_encipherment",
             "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
             "encipher_only", "decipher_only")
    return x509.KeyUsage(**{n: flags.get(n, False) for n in names})


def validity(not_before: Optional[datetime], days: int) -> Tuple[datetime, datetime]:
    if days < 1:
        raise PkiError("--days %s: must be at least 1" % days)
    if not_before is None:
        not_before = datetime.now(UTC) - SKEW
    elif not_before.tzinfo is None:
        not_before = not_before.replace(tzinfo=UTC)
    return not_before, not_before + timedelta(days=days)


def group_id(group: str) -> Optional[int]:
    """The group's id on this machine, None if there is no such group."""
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None
