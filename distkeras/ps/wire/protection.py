"""What guards a frame's bytes: one strategy object per session state, for both directions.

Plain: the handshake's frames, as they are. Tagged: the header and metadata, then the payload,
each followed by a Poly1305 tag under a one-time key (FrameMac), so that nothing is parsed
before it is authenticated. Sealed: the metadata and the payload as AES-256-GCM records
(FrameSeal), the header as associated data, the key updated on a byte budget. Each strategy
sends frames with its flag and refuses, on receipt, any frame not protected as it requires.
Keys come from the handshake.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.poly1305 import Poly1305

from distkeras.errors import AuthenticationError, ProtocolError
from distkeras.ps.wire.framing import (
    FLAG_SEALED,
    FLAG_TAGGED,
    HEADER_SIZE,
    FrameBody,
    RecvInto,
    discard,
    encode,
    recv_exact,
    send_buffers,
)
from distkeras.ps.wire.schema import MsgType

TAG_SIZE = 16  # Poly1305's tag after a tagged frame; AES-GCM's after each sealed record
KEY_SIZE = 32  # each direction's key
RECORD_SIZE = 1 << 20  # plaintext bytes of a sealed payload record, at most
_NONCE_SIZE = 12
_MAX_RECORDS = 2**64  # records per key before the nonce would repeat (never reached)
# Plaintext bytes sealed under one key before both sides move to the next (implicitly, at the
# same record): far below AES-GCM's per-key limit (TLS 1.3 allows about 2^38 bytes).
KEY_BUDGET = 1 << 35
_UPDATE_LABEL = b"distkeras v4 key update"
_SEND_PIECE = 1 << 20  # bytes sent between two updates of a frame's tag
_TAG_PIECE = 1 << 18  # bytes received between two updates of a frame's tag, at most


class FrameMac:
    """Tags the frames of one direction of a session, in order.

    Each frame gets a Poly1305 tag under a one-time key derived from this direction's key and
    the frame's sequence number (HMAC-SHA256 as the PRF, as RFC 8439 derives Poly1305 keys
    from a cipher), so that a frame cannot be altered, injected, replayed, reordered or
    reflected without the tag failing.

    Args:
        key: This direction's 32-byte session key.
    """

    def __init__(self, key: bytes) -> None:
        self._key = key
        self.sequence = 0

    def next(self) -> Poly1305:
        """The authenticator of the next frame."""
        one_time = hmac.new(self._key, self.sequence.to_bytes(8, "big"), hashlib.sha256).digest()
        self.sequence += 1
        return Poly1305(one_time)

    def __repr__(self) -> str:
        return f"FrameMac(sequence={self.sequence})"


class FrameSeal:
    """Seals (or opens) the records of one direction of a session, in order.

    Each record is AES-256-GCM under this direction's key with the record's sequence number
    under that key as nonce, so that a record cannot be read, altered, injected, replayed,
    reordered or reflected without opening failing. Once `budget` plaintext bytes have been
    sealed under a key, the next record uses key' = HMAC-SHA256(key, label) and a sequence
    starting again at 0; both sides count the same bytes, so no message is needed.

    Args:
        key: This direction's 32-byte session key.
        budget: Plaintext bytes per key (default `KEY_BUDGET`).
    """

    def __init__(self, key: bytes, budget: int | None = None) -> None:
        self._key = key
        self._aead = AESGCM(key)
        self._budget = KEY_BUDGET if budget is None else budget
        self._sealed = 0  # plaintext bytes under the current key
        self.sequence = 0
        self.updates = 0

    def _count(self, nbytes: int) -> None:
        self._sealed += nbytes
        if self._sealed >= self._budget:
            self._key = hmac.new(self._key, _UPDATE_LABEL, hashlib.sha256).digest()
            self._aead = AESGCM(self._key)
            self._sealed = self.sequence = 0
            self.updates += 1

    def _next_nonce(self) -> bytes:
        if self.sequence >= _MAX_RECORDS:
            raise ProtocolError("too many records in one session")
        nonce = self.sequence.to_bytes(_NONCE_SIZE, "big")
        self.sequence += 1
        return nonce

    def seal_into(self, data, associated: bytes, out) -> None:
        """Writes the record of `data` (len(data) + TAG_SIZE bytes) into `out`."""
        self._aead.encrypt_into(self._next_nonce(), data, associated, out)
        self._count(memoryview(data).nbytes)

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
        self._count(memoryview(record).nbytes - TAG_SIZE)

    def __repr__(self) -> str:
        return f"FrameSeal(sequence={self.sequence}, updates={self.updates})"


# ----------------------------------------------------------------------------- strategies


class Protection:
    """A session's protection: how frames are sent, and which frames are accepted.

    Subclasses set `flags` (the header flags of the frames they send) and implement `send`
    and `receive`; `framing.read_frame` reads a frame's body through `receive`.
    """

    flags = 0

    def send(
        self,
        sock: Any,
        msg_type: MsgType,
        meta: dict[str, Any] | None = None,
        arrays: Sequence[np.ndarray] = (),
    ) -> int:
        """Encodes and sends one frame on `sock`; returns the number of bytes sent."""
        raise NotImplementedError

    def receive(
        self, msg_type: MsgType, flags: int, header: bytes, recv_into: RecvInto
    ) -> FrameBody:
        """The reader of the body of a frame whose header was just read.

        Raises:
            AuthenticationError: A frame less protected than this session requires.
            ProtocolError: Header flags that make no sense in this session.
        """
        raise NotImplementedError


class Plain(Protection):
    """No protection: the handshake's frames, before the session has keys."""

    def send(self, sock, msg_type, meta=None, arrays=()) -> int:
        return send_buffers(sock, encode(msg_type, meta, arrays))

    def receive(self, msg_type, flags, header, recv_into) -> FrameBody:
        if flags == FLAG_SEALED:
            raise ProtocolError("header flags 0x2 (sealed) outside an encrypted session")
        if flags == FLAG_TAGGED:
            raise ProtocolError("header flags 0x1 (tagged) outside an authenticated session")
        return _ClearBody(recv_into)


PLAIN = Plain()


class Tagged(Protection):
    """Authenticated session: every frame is followed by its tag, and every frame received
    must be; a frame's tag is computed while it is sent, and checked before it is returned.

    Args:
        send: The sending direction's `FrameMac`.
        recv: The receiving direction's `FrameMac`.
    """

    flags = FLAG_TAGGED

    def __init__(self, send: FrameMac, recv: FrameMac) -> None:
        self.send_mac, self.recv_mac = send, recv

    def send(self, sock, msg_type, meta=None, arrays=()) -> int:
        head, *payload = encode(msg_type, meta, arrays, FLAG_TAGGED)
        head_tag = _tag(self.send_mac.next(), head)
        if not payload:
            return send_buffers(sock, [head, head_tag])
        tagger = self.send_mac.next()
        nbytes = sum(memoryview(b).nbytes for b in payload)
        if nbytes <= _SEND_PIECE:  # small: one scatter/gather send, tags included
            for buffer in payload:
                tagger.update(buffer)
            return send_buffers(sock, [head, head_tag, *payload, tagger.finalize()])
        sent = send_buffers(sock, [head, head_tag])
        # Tag each piece right after sending it: the tag's computation overlaps the peer's read.
        for buffer in payload:
            view = memoryview(buffer).cast("B")
            for start in range(0, view.nbytes, _SEND_PIECE):
                piece = view[start : start + _SEND_PIECE]
                sock.sendall(piece)
                tagger.update(piece)
        sock.sendall(tagger.finalize())
        return sent + nbytes + TAG_SIZE

    def receive(self, msg_type, flags, header, recv_into) -> FrameBody:
        if flags == FLAG_SEALED:
            raise ProtocolError("header flags 0x2 (sealed) outside an encrypted session")
        if flags != FLAG_TAGGED:
            raise AuthenticationError(f"untagged {msg_type.name} frame in an authenticated session")
        return _TaggedBody(recv_into, header, self.recv_mac, msg_type)

    def __repr__(self) -> str:
        return f"Tagged(send={self.send_mac}, recv={self.recv_mac})"


class Sealed(Protection):
    """Encrypted session: every frame's metadata and payload travel as sealed records, and
    every frame received must; each record is opened before its bytes are used.

    Args:
        send: The sending direction's `FrameSeal`.
        recv: The receiving direction's `FrameSeal`.
    """

    flags = FLAG_SEALED

    def __init__(self, send: FrameSeal, recv: FrameSeal) -> None:
        self.send_seal, self.recv_seal = send, recv
        self._record: np.ndarray | None = None  # the buffer payload records are sealed into

    def send(self, sock, msg_type, meta=None, arrays=()) -> int:
        """Sends the header, the sealed metadata, then the payload in sealed records; each
        record is sealed while the peer opens the one before."""
        buffers = encode(msg_type, meta, arrays, FLAG_SEALED)
        first = memoryview(buffers[0])
        header, raw = first[:HEADER_SIZE], first[HEADER_SIZE:]
        meta_record = bytearray(raw.nbytes + TAG_SIZE)
        self.send_seal.seal_into(raw, bytes(header), meta_record)
        head = [header, meta_record]
        if self._record is None and len(buffers) > 1:
            self._record = np.empty(RECORD_SIZE + TAG_SIZE, np.uint8)
        sent = 0
        for piece in _pieces(buffers[1:], RECORD_SIZE):
            record = memoryview(self._record)[: len(piece) + TAG_SIZE]
            self.send_seal.seal_into(piece, b"", record)
            if head:  # the first record goes out with the header: one call for small frames
                sent += send_buffers(sock, [*head, record])
                head = []
            else:
                sock.sendall(record)
                sent += record.nbytes
        if head:
            sent += send_buffers(sock, head)
        return sent

    def receive(self, msg_type, flags, header, recv_into) -> FrameBody:
        if flags != FLAG_SEALED:
            raise AuthenticationError(f"unsealed {msg_type.name} frame in an encrypted session")
        return _SealedBody(recv_into, header, self.recv_seal)

    def __repr__(self) -> str:
        return f"Sealed(send={self.send_seal}, recv={self.recv_seal})"


class AllowPlainRefusal(Protection):
    """`session`, except that a plain ERROR is accepted too: the reply to a handshake's
    answer, which a server refusing the answer sends before the session has keys.

    Args:
        session: The protection of the session being established.
    """

    def __init__(self, session: Protection) -> None:
        self.session = session
        self.flags = session.flags

    def send(self, sock, msg_type, meta=None, arrays=()) -> int:
        return self.session.send(sock, msg_type, meta, arrays)

    def receive(self, msg_type, flags, header, recv_into) -> FrameBody:
        if flags == 0 and msg_type is MsgType.ERROR:
            return _ClearBody(recv_into)
        return self.session.receive(msg_type, flags, header, recv_into)


# ----------------------------------------------------------------------------- frame bodies


class _ClearBody:
    """A frame's body as it is on the wire."""

    def __init__(self, recv_into: RecvInto) -> None:
        self._recv = recv_into

    def overhead(self, payload_len: int) -> int:
        return 0

    def metadata(self, nbytes: int) -> bytes:
        raw = bytearray(nbytes)
        recv_exact(self._recv, memoryview(raw), "metadata bytes")
        return bytes(raw)

    def payload(self, view: memoryview) -> None:
        recv_exact(self._recv, view, "payload bytes")

    def skip(self, nbytes: int) -> None:
        discard(self._recv, nbytes)

    def finish(self) -> None:
        pass


class _TaggedBody(_ClearBody):
    """A frame's body in clear: the metadata, checked against its tag (with the header)
    before it is parsed; then the payload, each byte tagged as it is received, and its tag."""

    def __init__(self, recv_into: RecvInto, header: bytes, mac: FrameMac, msg_type: MsgType):
        super().__init__(self._teed)
        self._raw, self._mac, self._msg_type = recv_into, mac, msg_type
        self._tagger = mac.next()
        self._tagger.update(header)
        self._payload_tagged = False

    def _teed(self, view: memoryview) -> int:
        n = self._raw(view[:_TAG_PIECE])  # tagged while the bytes are still in the cache
        self._tagger.update(view[:n])
        return n

    def overhead(self, payload_len: int) -> int:
        return TAG_SIZE * (2 if payload_len else 1)

    def metadata(self, nbytes: int) -> bytes:
        raw = super().metadata(nbytes)
        self._verify()
        return raw

    def payload(self, view: memoryview) -> None:
        self._tag_payload()
        super().payload(view)

    def skip(self, nbytes: int) -> None:
        if nbytes:
            self._tag_payload()
            super().skip(nbytes)

    def finish(self) -> None:
        if self._payload_tagged:
            self._verify()

    def _tag_payload(self) -> None:
        self._tagger, self._payload_tagged = self._mac.next(), True

    def _verify(self) -> None:
        tag = bytearray(TAG_SIZE)
        recv_exact(self._raw, memoryview(tag), "tag bytes")
        try:
            self._tagger.verify(bytes(tag))
        except InvalidSignature:
            raise AuthenticationError(
                f"{self._msg_type.name} frame failed authentication: altered, injected, "
                "replayed or out of order"
            ) from None


def _tag(tagger: Poly1305, data: Any) -> bytes:
    tagger.update(data)
    return tagger.finalize()


class _SealedBody:
    """A frame's body as sealed records: the metadata's (the header as associated data),
    then the payload's, each opened as it arrives."""

    def __init__(self, recv_into: RecvInto, header: bytes, seal: FrameSeal) -> None:
        self._recv, self._header, self._seal = recv_into, header, seal

    def overhead(self, payload_len: int) -> int:
        return TAG_SIZE * (1 + -(-payload_len // RECORD_SIZE))

    def metadata(self, nbytes: int) -> bytes:
        record = bytearray(nbytes + TAG_SIZE)
        recv_exact(self._recv, memoryview(record), "metadata bytes")
        raw = bytearray(nbytes)
        self._seal.open_into(record, self._header, raw)
        return bytes(raw)

    def payload(self, view: memoryview) -> None:
        self._open_records(view.nbytes, view)

    def skip(self, nbytes: int) -> None:
        self._open_records(nbytes, None)

    def finish(self) -> None:
        pass

    def _open_records(self, nbytes: int, out: memoryview | None) -> None:
        """Receives `nbytes` of payload as sealed records and opens them into `out` (None:
        into scratch space, to be dropped)."""
        largest = min(nbytes, RECORD_SIZE)
        scratch = memoryview(np.empty(largest + TAG_SIZE, np.uint8))
        dropped = None if out is not None else memoryview(np.empty(largest, np.uint8))
        for start in range(0, nbytes, RECORD_SIZE):
            size = min(RECORD_SIZE, nbytes - start)
            record = scratch[: size + TAG_SIZE]
            recv_exact(self._recv, record, "payload bytes")
            target = out[start : start + size] if out is not None else dropped[:size]
            self._seal.open_into(record, b"", target)


def _pieces(buffers: Sequence[Any], size: int) -> Iterator[Any]:
    """The bytes of `buffers`, in order, as pieces of `size` bytes (the last may be shorter):
    views where a piece lies within one buffer, a copy where it spans two."""
    pending = bytearray()
    for buffer in buffers:
        view = memoryview(buffer).cast("B")
        if pending:
            take = min(size - len(pending), view.nbytes)
            pending += view[:take]
            view = view[take:]
            if len(pending) < size:
                continue
            yield pending
            pending = bytearray()
        while view.nbytes >= size:
            yield view[:size]
            view = view[size:]
        if view.nbytes:
            pending = bytearray(view)
    if pending:
        yield pending
