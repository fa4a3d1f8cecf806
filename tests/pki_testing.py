"""What the certificate tool's tests share: a CA directory, file modes, the certificate's
extensions, and a real TLS handshake over loopback between a broker and a device."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Type, TypeVar

from cryptography import x509

from agent.tools.pki.authority import Issued, init_ca


def new_ca(tmp_path: Path) -> Path:
    """TMP/pki with a CA named "Test CA" (conftest's ca_dir fixture)."""
    directory = tmp_path / "pki"
    init_ca(directory, name="Test CA")
    return directory


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


E = TypeVar("E", bound=x509.ExtensionType)


def ext(cert: x509.Certificate, kind: Type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


# --- a real TLS handshake over loopback --------------------------------------------


@dataclass
class Handshake:
    client_cn: Optional[str] = None  # the CN the broker side saw in the device certificate
    server_error: Optional[Exception] = None
    client_error: Optional[Exception] = None


def handshake(ca_file: Path, broker: Issued, device: Optional[Issued],
              server_hostname: str = "localhost", password: Optional[bytes] = None,
              client_ca: Optional[Path] = None) -> Handshake:
    # The broker's side: what Mosquitto does with require_certificate true.
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_file))
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_cert_chain(broker.cert_file, broker.key_file)
    # The agent's side: verification and hostname checking on, as agent/mqtt/tls.py does.
    client = ssl.create_default_context(cafile=str(client_ca or ca_file))
    client.minimum_version = ssl.TLSVersion.TLSv1_2
    assert client.check_hostname
    if device is not None:
        client.load_cert_chain(device.cert_file, device.key_file, password=password)
    # Python 3.13 turns this on by default; the certificates must pass it on 3.9 too.
    for ctx in (server, client):
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT

    result = Handshake()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                conn.settimeout(10)
                with server.wrap_socket(conn, server_side=True) as tls:
                    peer = tls.getpeercert() or {}
                    for rdn in peer.get("subject", ()):
                        for attr in rdn:
                            if attr[0] == "commonName":
                                result.client_cn = str(attr[1])
                    tls.sendall(b"ok")
            except OSError as exc:  # ssl.SSLError is an OSError
                result.server_error = exc

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with socket.create_connection(listener.getsockname(), timeout=10) as raw, \
                    client.wrap_socket(raw, server_hostname=server_hostname) as tls:
                # Under TLS 1.3 the server judges the client certificate after the
                # client's handshake returns; the refusal arrives on the first read.
                if tls.recv(2) != b"ok":
                    result.client_error = ConnectionError("the server closed the connection")
        except OSError as exc:
            result.client_error = exc
        thread.join(10)
    return result


