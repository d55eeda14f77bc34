"""TLS 1.3 for the parameter server: a per-run self-signed certificate, pinned by fingerprint.

RunCertificate: made once per server (ECDSA P-256, `cryptography`), never written anywhere
but a private temporary folder for the instant `ssl` loads it. server_context / wrap_client:
Python's `ssl` with TLS 1.3 only; the client checks the server certificate's SHA-256
fingerprint (shipped to the workers with the secret) instead of a CA.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import os
import socket
import ssl
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from distkeras.errors import AuthenticationError

LOOPBACK_HOSTS = frozenset(["localhost", "127.0.0.1", "::1"])


def is_loopback(host: str) -> bool:
    """True if `host` names this machine's loopback interface only."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RunCertificate:
    """A self-signed certificate and key made for one run.

    Attributes:
        fingerprint: SHA-256 of the certificate (DER), hex: what clients pin.
    """

    def __init__(self, valid_days: int = 7) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "distkeras parameter server")])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=valid_days))
            .sign(key, hashes.SHA256())
        )
        self._certificate_pem = certificate.public_bytes(serialization.Encoding.PEM)
        self._key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        der = certificate.public_bytes(serialization.Encoding.DER)
        self.fingerprint = hashlib.sha256(der).hexdigest()

    def __repr__(self) -> str:
        return f"RunCertificate(fingerprint={self.fingerprint[:16]}...)"

    def server_context(self) -> ssl.SSLContext:
        """A TLS 1.3 server context holding this certificate and key."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        # ssl loads keys from files only: a private folder, deleted at once.
        with tempfile.TemporaryDirectory(prefix="distkeras-tls-") as folder:
            os.chmod(folder, 0o700)
            cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
            for path, data in ((cert, self._certificate_pem), (key, self._key_pem)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            context.load_cert_chain(cert, key)
        return context


def wrap_client(sock: socket.socket, fingerprint: str) -> ssl.SSLSocket:
    """Runs the TLS 1.3 handshake on `sock` and checks the server's pinned certificate.

    Raises:
        AuthenticationError: The server's certificate is not the pinned one.
        ssl.SSLError: The TLS handshake failed.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # no CA and no name: the fingerprint is the identity
    context.verify_mode = ssl.CERT_NONE
    wrapped = context.wrap_socket(sock)
    der = wrapped.getpeercert(binary_form=True) or b""
    if not hmac.compare_digest(hashlib.sha256(der).hexdigest(), fingerprint.lower()):
        wrapped.close()
        raise AuthenticationError(
            "the parameter server's TLS certificate does not match the pinned fingerprint"
        )
    return wrapped
