"""The handshake: a mutual HMAC-SHA256 challenge that also derives the session's keys.

Transcript: a hash of the protocol label and the handshake's frames as sent (version, mode,
nonces, worker id). Digests: each side proves it holds the run's secret over the transcript,
under distinct labels so that no answer can be reflected. Keys: tags from the secret and the
transcript; seals from an X25519 agreement whose public shares are the nonces (KeyShare),
salted with the secret's key, as TLS 1.3's `psk_dhe_ke`. serve_handshake / answer_handshake:
both halves, side by side.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from distkeras.errors import AuthenticationError, ProtocolError
from distkeras.ps.wire.framing import encode, read_frame
from distkeras.ps.wire.protection import (
    KEY_SIZE,
    PLAIN,
    AllowPlainRefusal,
    FrameMac,
    FrameSeal,
    Protection,
    Sealed,
    Tagged,
)
from distkeras.ps.wire.schema import (
    CLIENT_HANDSHAKE_LIMITS,
    HANDSHAKE_LIMITS,
    LOWER_HEX,
    NONCE_SIZE,
    OBSERVER_ID,
    Limits,
    Message,
    MsgType,
)
from distkeras.ps.wire.stream import Stream, check_reply

MIN_SECRET = 16  # bytes

_CLIENT_LABEL = b"distkeras-client|"
_SERVER_LABEL = b"distkeras-server|"
_SESSION_LABEL = b"distkeras-session|"
_KEYS_LABEL = b"distkeras-keys|"
TRANSCRIPT_LABEL = b"distkeras wire protocol v4"

Admit = Callable[[int], dict[str, Any]]


def check_secret(secret: Any) -> None:
    """Checks a shared secret without ever echoing it.

    Raises:
        TypeError: Not bytes.
        ValueError: Shorter than `MIN_SECRET` bytes.
    """
    if not isinstance(secret, bytes):
        raise TypeError(f"Expected `secret` to be bytes. Received: a {type(secret).__name__}")
    if len(secret) < MIN_SECRET:
        raise ValueError(
            f"Expected `secret` of at least {MIN_SECRET} bytes (os.urandom(32) is a good one). "
            f"Received: {len(secret)} bytes"
        )


def new_nonce() -> str:
    """Returns a fresh random challenge, hex-encoded."""
    return os.urandom(NONCE_SIZE).hex()


class KeyShare:
    """A fresh X25519 key pair; `nonce` is its public key, hex-encoded: a side's ephemeral
    share of one handshake, or a static key (the server's, the driver's observer's)."""

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


# ----------------------------------------------------------------------------- digests, keys


def check_public_key(key: Any, name: str) -> None:
    """Checks an X25519 public key given as 64 lowercase hex digits.

    Raises:
        ValueError: Anything else.
    """
    if not (isinstance(key, str) and len(key) == 2 * NONCE_SIZE and LOWER_HEX.fullmatch(key)):
        raise ValueError(
            f"Expected `{name}` to be an X25519 public key as 64 lowercase hex digits. "
            f"Received: {name}={key!r:.80}"
        )


def proof_key(secret: bytes, server_shared: bytes, observer_shared: bytes = b"") -> bytes:
    """The key of a handshake's digests and session keys: the run's secret, with what the
    server's static key (and an observer's, when the server pins one) agreed with the
    other side's share, so that proving the secret alone proves neither role."""
    message = _KEYS_LABEL + server_shared + observer_shared
    return hmac.new(secret, message, hashlib.sha256).digest()


def transcript_hash(*frames: bytes) -> bytes:
    """SHA-256 of the protocol label and the handshake's frames as they were on the wire
    (headers included: the version, every field, the `sealed` flag)."""
    digest = hashlib.sha256(TRANSCRIPT_LABEL)
    for frame in frames:
        digest.update(len(frame).to_bytes(4, "big"))
        digest.update(frame)
    return digest.digest()


def client_digest(secret: bytes, transcript: bytes, client_nonce: str, worker_id: int) -> str:
    """The client's answer: the transcript so far (the CHALLENGE), its own nonce and worker id."""
    message = _CLIENT_LABEL + transcript + bytes.fromhex(client_nonce)
    message += worker_id.to_bytes(4, "big")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def server_digest(secret: bytes, transcript: bytes) -> str:
    """The server's answer: the whole transcript (a distinct label: no reflection)."""
    return hmac.new(secret, _SERVER_LABEL + transcript, hashlib.sha256).hexdigest()


def verify_digest(expected: str, received: str, who: str) -> None:
    """Compares digests in constant time.

    Raises:
        AuthenticationError: If they differ.
    """
    if not hmac.compare_digest(expected.encode(), received.encode()):
        raise AuthenticationError(f"{who} failed the HMAC challenge: wrong secret")


def session_key(secret: bytes, transcript: bytes) -> bytes:
    """The session's base key: from the secret and the whole transcript (both nonces, the
    worker id, the mode, the version), so that no frame of one connection is valid on
    another, and a handshake altered on the way yields keys that do not match."""
    return hmac.new(secret, _SESSION_LABEL + transcript, hashlib.sha256).digest()


def session_macs(secret: bytes, transcript: bytes) -> tuple[FrameMac, FrameMac]:
    """The session's (client-to-server, server-to-client) frame authenticators.

    Both keys derive from `session_key`, one per direction, so that a direction's frames are
    not valid in the other direction.
    """
    base = session_key(secret, transcript)
    to_server = hmac.new(base, b"client->server", hashlib.sha256).digest()
    to_client = hmac.new(base, b"server->client", hashlib.sha256).digest()
    return FrameMac(to_server), FrameMac(to_client)


def session_seals(salt: bytes, shared_secret: bytes) -> tuple[FrameSeal, FrameSeal]:
    """The session's (client-to-server, server-to-client) seals.

    Args:
        salt: A key only holders of the run's secret can derive, bound to the transcript
            (`session_key`).
        shared_secret: The X25519 shared secret of the two key shares.
    """

    def derive(direction: bytes) -> FrameSeal:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=direction)
        return FrameSeal(hkdf.derive(shared_secret))

    return derive(b"distkeras sealed client->server"), derive(b"distkeras sealed server->client")


def session_protection(
    secret: bytes, transcript: bytes, share: KeyShare | None, peer_nonce: str, server: bool
) -> Protection:
    """One side's protection of the session: tags, or with a key share, seals.

    Args:
        secret: The run's shared secret.
        transcript: `transcript_hash` of CHALLENGE and RESPONSE.
        share: This side's key share in an encrypted session, else None.
        peer_nonce: The other side's nonce (its key share in an encrypted session).
        server: Whether this side is the server (it sends server-to-client).
    """
    if share is None:
        to_server, to_client = session_macs(secret, transcript)
        return Tagged(to_client, to_server) if server else Tagged(to_server, to_client)
    salt = session_key(secret, transcript)
    to_server, to_client = session_seals(salt, share.shared_secret(peer_nonce))
    return Sealed(to_client, to_server) if server else Sealed(to_server, to_client)


def _send_recorded(stream: Stream, msg_type: MsgType, meta: dict[str, Any]) -> bytes:
    """Sends a plain handshake frame; returns its bytes, for the transcript."""
    data = b"".join(bytes(b) for b in encode(msg_type, meta))
    stream.sock.sendall(data)
    stream.sent += len(data)
    return data


def _read_recorded(stream: Stream, limits: Limits) -> tuple[Message, bytes]:
    """Reads a plain handshake frame; returns it and its bytes, for the transcript."""
    recorded = bytearray()

    def recv(view: memoryview) -> int:
        n = stream.recv_into(view)  # read_frame asks for exact sizes: never past the frame
        recorded.extend(view[:n])
        return n

    message, _ = read_frame(recv, limits, PLAIN)
    return message, bytes(recorded)


# ----------------------------------------------------------------------------- both halves


def serve_handshake(
    stream: Stream,
    secret: bytes,
    admit: Admit,
    encrypt: bool = False,
    static: KeyShare | None = None,
    observer_key: str | None = None,
) -> int:
    """The server's half: challenge, check the answer, admit the worker, prove itself.

    Args:
        stream: The new connection.
        secret: The shared HMAC key.
        admit: Called with the authenticated worker id; returns the WELCOME fields (clock,
            center layout, ...) or raises `ProtocolError` to refuse the worker.
        encrypt: Seal the session with keys from the two ephemeral shares (the nonces).
        static: The server's static key (its public half is what clients pin); a fresh one
            when None.
        observer_key: The public key the observer (`OBSERVER_ID`) must hold; None: the
            observer proves the secret only.

    Returns:
        The authenticated worker id.

    Raises:
        AuthenticationError: Wrong secret, or an observer without the pinned key.
        ProtocolError: Anything else unexpected.
    """
    static = static or KeyShare()
    share = KeyShare()
    meta = {"nonce": share.nonce, "sealed": encrypt, "server_key": static.nonce}
    challenge = _send_recorded(stream, MsgType.CHALLENGE, meta)
    msg, response = _read_recorded(stream, HANDSHAKE_LIMITS)
    if msg.type is not MsgType.RESPONSE:
        raise ProtocolError(f"expected RESPONSE during the handshake, got {msg.type.name}")
    worker_id, client_nonce = msg.meta["worker_id"], msg.meta["nonce"]
    observer = worker_id == OBSERVER_ID and observer_key is not None
    key = proof_key(
        secret,
        static.shared_secret(client_nonce),
        share.shared_secret(observer_key) if observer else b"",
    )
    expected = client_digest(key, transcript_hash(challenge), client_nonce, worker_id)
    who = "the observer (its key or the secret)" if observer else "client"
    verify_digest(expected, msg.meta["digest"], who)
    transcript = transcript_hash(challenge, response)
    sealing = share if encrypt else None
    stream.protect(session_protection(key, transcript, sealing, client_nonce, server=True))
    welcome = admit(worker_id)
    stream.send(MsgType.WELCOME, {**welcome, "digest": server_digest(key, transcript)})
    return worker_id


def answer_handshake(
    stream: Stream,
    secret: bytes,
    worker_id: int,
    require_encryption: bool = False,
    server_key: str | None = None,
    identity: KeyShare | None = None,
) -> Message:
    """The client's half: answer the challenge, challenge back, check the server's proof.
    The session is encrypted when the server's challenge says so.

    Args:
        require_encryption: Refuse a server that does not encrypt.
        server_key: The server's public key to pin: refuse a server with another (one that
            knows the run's secret but is not the run's server). None: accept the key the
            server announces.
        identity: The observer's static key, when the server pins one.

    Returns:
        The server's WELCOME.

    Raises:
        AuthenticationError: Either side failed the challenge, or the server's key is not
            the pinned one.
        DistKerasError: The server refused this worker.
        ProtocolError: Anything else unexpected.
    """
    reply, challenge = _read_recorded(stream, CLIENT_HANDSHAKE_LIMITS)
    meta = check_reply(reply, MsgType.CHALLENGE, "the handshake").meta
    server_nonce, sealed, announced = meta["nonce"], meta["sealed"], meta["server_key"]
    if server_key is not None and not hmac.compare_digest(announced, server_key):
        raise AuthenticationError(
            "the parameter server's key is not the pinned one: not the run's server"
        )
    if require_encryption and not sealed:
        raise AuthenticationError(
            "the parameter server does not encrypt, but this client requires encryption"
        )
    share = KeyShare()
    key = proof_key(
        secret,
        share.shared_secret(announced),
        identity.shared_secret(server_nonce) if identity is not None else b"",
    )
    response = {
        "digest": client_digest(key, transcript_hash(challenge), share.nonce, worker_id),
        "nonce": share.nonce,
        "worker_id": worker_id,
    }
    transcript = transcript_hash(challenge, _send_recorded(stream, MsgType.RESPONSE, response))
    sealing = share if sealed else None
    stream.protect(session_protection(key, transcript, sealing, server_nonce, server=False))
    # A server refusing our answer says so before the session has keys: in a plain ERROR.
    protection = AllowPlainRefusal(stream.protection)
    try:
        reply, _ = read_frame(stream.recv_into, CLIENT_HANDSHAKE_LIMITS, protection)
    except AuthenticationError as exc:
        raise AuthenticationError(f"parameter server failed the handshake: {exc}") from None
    welcome = check_reply(reply, MsgType.WELCOME, "the handshake")
    verify_digest(server_digest(key, transcript), welcome.meta["digest"], "parameter server")
    return welcome
