"""Frames: a binary header, JSON metadata, then the raw bytes of the arrays.

Header and encoding: `encode` lays a message out as buffers (arrays are not copied);
`send_buffers` writes them with scatter/gather I/O. Reading: `read_frame` reads the header,
checks it against the limits, and reads the rest through the session's protection (plain,
tagged or sealed: `distkeras.ps.wire.protection`), known here only by its interface.
"""

from __future__ import annotations

import json
import math
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from distkeras.errors import ProtocolError
from distkeras.ps.wire.schema import (
    ALIGNMENT,
    SCHEMA,
    Limits,
    Message,
    MsgType,
    array_specs,
    decode_metadata,
    padded,
)

MAGIC = b"DKPS"
VERSION = 4
FLAG_TAGGED = 0x1  # Poly1305 tags after the metadata and the payload (after the handshake)
FLAG_SEALED = 0x2  # metadata and payload are AES-GCM records (encrypted sessions)
HEADER = struct.Struct("!4sBBHIQ")  # magic, version, type, flags, metadata length, payload length
HEADER_SIZE = HEADER.size  # 20 bytes

_PADDING = bytes(ALIGNMENT)
_IOV_MAX = 512  # well below the usual IOV_MAX of 1024
_DRAIN_CHUNK = 1 << 20
_MSG_TYPES = {int(t): t for t in MsgType}

RecvInto = Callable[[memoryview], int]
Validator = Callable[[MsgType, dict], None]
BufferFor = Callable[[int], memoryview]


class PeerClosed(ConnectionError):
    """The peer closed the connection cleanly, between two frames."""


class FrameCut(ProtocolError):
    """The peer closed the connection in the middle of a frame."""


class MessageRejected(ProtocolError):
    """A well-framed message was refused; the frame was consumed, so the stream is still usable."""


class FrameBody(Protocol):
    """The rest of one frame after its header, as the session's protection delivers it."""

    def overhead(self, payload_len: int) -> int:
        """Bytes the protection adds to this frame (tags)."""

    def metadata(self, nbytes: int) -> bytes:
        """Reads (and, when protected, opens) the metadata section."""

    def payload(self, view: memoryview) -> None:
        """Reads (and, when protected, opens) the payload into `view`."""

    def skip(self, nbytes: int) -> None:
        """Reads and drops a payload of `nbytes` (its bytes are still authenticated)."""

    def finish(self) -> None:
        """Checks what follows the frame's bytes (a tag), if anything.

        Raises:
            AuthenticationError: The frame is not authentic.
        """


class Receiver(Protocol):
    """A session's protection, on the receiving side."""

    def receive(
        self, msg_type: MsgType, flags: int, header: bytes, recv_into: RecvInto
    ) -> FrameBody:
        """The reader of a frame with this header, or a refusal of its flags."""


# ----------------------------------------------------------------------------- encoding


def encode(
    msg_type: MsgType,
    meta: dict[str, Any] | None = None,
    arrays: Sequence[np.ndarray] = (),
    flags: int = 0,
) -> list[Any]:
    """Encodes one frame as a list of buffers to send in order (arrays are not copied).

    Args:
        msg_type: The message type.
        meta: Metadata; "arrays" is filled in from `arrays` when they are given.
        arrays: Arrays already passed through `schema.wire_array`.
        flags: Header flags (the protection's: `FLAG_TAGGED` when a tag will follow).

    Returns:
        [header + metadata bytes, then each array's bytes and padding] for `send_buffers`.
    """
    meta = dict(meta or {})
    if arrays or SCHEMA[msg_type].get("arrays"):
        meta["arrays"] = array_specs(arrays)
    raw = json.dumps(meta, separators=(",", ":")).encode()
    buffers: list[Any] = [b""]
    payload = 0
    for arr in arrays:
        flat = arr.reshape(-1).view(np.uint8)
        if flat.nbytes:
            buffers.append(memoryview(flat))
        pad = padded(flat.nbytes) - flat.nbytes
        if pad:
            buffers.append(_PADDING[:pad])
        payload += flat.nbytes + pad
    buffers[0] = HEADER.pack(MAGIC, VERSION, int(msg_type), flags, len(raw), payload) + raw
    return buffers


def send_buffers(sock: socket.socket, buffers: Sequence[Any]) -> int:
    """Sends `buffers` back to back with scatter/gather I/O, handling partial sends.

    Returns:
        The number of bytes sent.
    """
    views = [memoryview(b) for b in buffers]
    total = sum(v.nbytes for v in views)
    i = 0
    while i < len(views):
        sent = sock.sendmsg(views[i : i + _IOV_MAX])
        while i < len(views) and sent >= views[i].nbytes:
            sent -= views[i].nbytes
            i += 1
        if sent:
            views[i] = views[i][sent:]
    return total


# ----------------------------------------------------------------------------- decoding


def recv_exact(recv_into: RecvInto, view: memoryview, what: str, at_boundary: bool = False) -> None:
    """Fills `view` completely from `recv_into`.

    Raises:
        PeerClosed: If the peer closed before the first byte and `at_boundary` is set.
        FrameCut: If the peer closed part-way (a truncated frame).
    """
    want = view.nbytes
    got = 0
    while got < want:
        n = recv_into(view[got:])
        if not n:
            if at_boundary and got == 0:
                raise PeerClosed("peer closed the connection")
            raise FrameCut(f"peer closed the connection mid-frame: got {got} of {want} {what}")
        got += n


def discard(recv_into: RecvInto, nbytes: int) -> None:
    """Reads and drops `nbytes`."""
    scratch = memoryview(bytearray(min(nbytes, _DRAIN_CHUNK)))
    while nbytes:
        chunk = min(nbytes, scratch.nbytes)
        recv_exact(recv_into, scratch[:chunk], "payload bytes")
        nbytes -= chunk


def unpack_header(raw: bytes, limits: Limits) -> tuple[MsgType, int, int, int]:
    """Decodes and checks a frame header.

    Returns:
        (message type, flags, metadata length, payload length).

    Raises:
        ProtocolError: Wrong magic, version, type or flags, or a length over `limits`.
    """
    magic, version, type_code, flags, meta_len, payload_len = HEADER.unpack(raw)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r} (expected {MAGIC!r}): not a distkeras peer")
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version} (expected {VERSION})")
    msg_type = _MSG_TYPES.get(type_code)
    if msg_type is None:
        raise ProtocolError(f"unknown message type {type_code}")
    if flags not in (0, FLAG_TAGGED, FLAG_SEALED):
        raise ProtocolError(f"header flags must be 0, 0x1 or 0x2, got {flags:#x}")
    if meta_len > limits.max_metadata:
        raise ProtocolError(
            f"metadata length {meta_len} exceeds the limit of {limits.max_metadata} bytes"
        )
    if payload_len > limits.max_payload:
        raise ProtocolError(
            f"payload length {payload_len} exceeds the limit of {limits.max_payload} bytes"
        )
    return msg_type, flags, meta_len, payload_len


def decode_arrays(specs: list[dict[str, Any]], payload: memoryview) -> list[np.ndarray]:
    """Builds arrays over `payload` with `np.frombuffer` (no copy); specs are pre-validated."""
    arrays = []
    offset = 0
    for spec in specs:
        dtype = np.dtype(spec["dtype"])
        shape = tuple(spec["shape"])
        count = math.prod(shape)
        arr = np.frombuffer(payload, dtype=dtype, count=count, offset=offset).reshape(shape)
        arrays.append(arr)
        offset += padded(count * dtype.itemsize)
    return arrays


def read_frame(
    recv_into: RecvInto,
    limits: Limits,
    protection: Receiver,
    validate: Validator | None = None,
    buffer_for: BufferFor | None = None,
) -> tuple[Message, int]:
    """Reads one frame: header, metadata, then the payload into a preallocated buffer.

    Args:
        recv_into: `socket.recv_into` or any callable with its semantics (0 means EOF).
        limits: Bounds checked on the header before anything is allocated.
        protection: The session's protection (`protection.PLAIN` before the handshake): it
            refuses frames not protected as it requires, and authenticates the others
            before they are returned or refused.
        validate: Called with (type, metadata) before the payload is read; a `ProtocolError`
            it raises makes this function discard the payload and raise `MessageRejected`.
        buffer_for: Returns a writable buffer of at least n bytes for the payload;
            by default a fresh uninitialized array.

    Returns:
        (message, number of bytes read).

    Raises:
        PeerClosed: EOF between frames.
        MessageRejected: `validate` refused the (authentic) frame; the stream is in sync.
        AuthenticationError: A frame not protected as the session requires, or altered.
        ProtocolError: Anything malformed; the stream can no longer be trusted.
    """
    header = bytearray(HEADER_SIZE)
    recv_exact(recv_into, memoryview(header), "header bytes", at_boundary=True)
    msg_type, flags, meta_len, payload_len = unpack_header(bytes(header), limits)
    body = protection.receive(msg_type, flags, bytes(header), recv_into)
    meta = decode_metadata(msg_type, body.metadata(meta_len), payload_len, limits)
    nbytes = HEADER_SIZE + meta_len + payload_len + body.overhead(payload_len)
    if validate is not None:
        try:
            validate(msg_type, meta)
        except MessageRejected:
            raise
        except ProtocolError as exc:  # consume the frame, so that the stream stays in sync
            body.skip(payload_len)
            body.finish()
            raise MessageRejected(str(exc)) from None
    if not payload_len:
        body.finish()
        return Message(msg_type, meta), nbytes
    # np.empty, unlike bytearray(n), does not zero-fill: recv_into writes each byte once.
    buf = buffer_for(payload_len) if buffer_for else memoryview(np.empty(payload_len, np.uint8))
    view = memoryview(buf)[:payload_len]
    body.payload(view)
    body.finish()
    return Message(msg_type, meta, decode_arrays(meta["arrays"], view)), nbytes
