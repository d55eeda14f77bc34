"""Encrypted sessions: key agreement bound to the HMAC handshake, and AEAD-sealed records.

KeyShare: one side's ephemeral X25519 key; its public half is that side's handshake nonce,
so the HMAC digests of the handshake authenticate both shares. session_seals: the session's
two directional keys, HKDF-SHA256 over the X25519 shared secret, salted with a key that only
holders of the secret can derive. FrameSeal: AES-256-GCM records of one direction, the nonce
being the record's sequence number. The same construction as TLS 1.3's `psk_dhe_ke` mode and
record layer, from `cryptography`'s primitives. No framing, no sockets here.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from distkeras.errors import AuthenticationError, ProtocolError

TAG_SIZE = 16  # AES-GCM's tag, after each record
KEY_SIZE = 32  # AES-256
_NONCE_SIZE = 12
_MAX_RECORDS = 2**64  # records per direction before the nonce would repeat (never reached)


class KeyShare:
    """A fresh ephemeral X25519 key pair; `nonce` is its public key, hex-encoded."""

    def __init__(self) -> None:
        self._private = X25519PrivateKey.generate()
        self.nonce = self._private.public_key().public_bytes_raw().hex()

    def shared_secret(self, peer_nonce: str) -> bytes:
        """The X25519 shared secret with the peer whose nonce (public key) is `peer_nonce`.

        Raises:
            ProtocolError: The peer's share is not a usable public key.
        """
        try:
            return self._private.exchange(
                X25519PublicKey.from_public_bytes(bytes.fromhex(peer_nonce))
            )
        except ValueError as exc:  # e.g. a low-order point: the exchange would be all zeros
            raise ProtocolError(f"the peer's key share is not usable: {exc}") from None

    def __repr__(self) -> str:
        return f"KeyShare(nonce={self.nonce[:16]}...)"


class FrameSeal:
    """Seals (or opens) the records of one direction of a session, in order.

    Each record is AES-256-GCM under this direction's key with the record's sequence number
    as nonce, so that a record cannot be read, altered, injected, replayed, reordered or
    reflected without opening failing.

    Args:
        key: This direction's 32-byte session key.
    """

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self.sequence = 0

    def _next_nonce(self) -> bytes:
        if self.sequence >= _MAX_RECORDS:
            raise ProtocolError("too many records in one session")
        nonce = self.sequence.to_bytes(_NONCE_SIZE, "big")
        self.sequence += 1
        return nonce

    def seal_into(self, data, associated: bytes, out) -> None:
        """Writes the record of `data` (len(data) + TAG_SIZE bytes) into `out`."""
        self._aead.encrypt_into(self._next_nonce(), data, associated, out)

    def open_into(self, record, associated: bytes, out) -> None:
        """Writes the plaintext of `record` into `out` (len(record) - TAG_SIZE bytes).

        Raises:
            AuthenticationError: The record is not the next one this direction sealed.
        """
        try:
            self._aead.decrypt_into(self._next_nonce(), record, associated, out)
        except InvalidTag:
            raise AuthenticationError(
                "a sealed record failed authentication: altered, injected, replayed or out of order"
            ) from None

    def __repr__(self) -> str:
        return f"FrameSeal(sequence={self.sequence})"


def session_seals(salt: bytes, shared_secret: bytes) -> tuple[FrameSeal, FrameSeal]:
    """The session's (client-to-server, server-to-client) seals.

    Args:
        salt: A key only holders of the run's secret can derive, bound to both nonces and
            the worker id (`protocol.session_key`).
        shared_secret: The X25519 shared secret of the two key shares.
    """

    def derive(direction: bytes) -> FrameSeal:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=direction)
        return FrameSeal(hkdf.derive(shared_secret))

    return derive(b"distkeras sealed client->server"), derive(b"distkeras sealed server->client")
