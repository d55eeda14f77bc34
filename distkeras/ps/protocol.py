"""Wire protocol between workers and the parameter server (byte-level spec: docs/protocol.md).

Framing: binary header + JSON metadata + raw array bytes, followed by a Poly1305 tag once the
session is authenticated; in an encrypted session, the metadata and the payload travel as
AES-GCM records instead (`distkeras.ps.sealing`). Messages: types and their metadata schema
(`SCHEMA`), validated on decode. FrameMac / Stream: one direction's per-frame tags; one
socket's framed, counted I/O. Handshake: both halves of the mutual HMAC-SHA256 challenge,
side by side, which also derive the session's keys. No model, no rule, no threads here.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import hmac
import io
import json
import math
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.poly1305 import Poly1305

from distkeras.errors import AuthenticationError, DistKerasError, ProtocolError
from distkeras.ps import sealing
from distkeras.ps.sealing import FrameSeal

MAGIC = b"DKPS"
VERSION = 3
FLAG_TAGGED = 0x1  # the frame is followed by a Poly1305 tag (every frame after the handshake)
FLAG_SEALED = 0x2  # metadata and payload are AES-GCM records (encrypted sessions)
TAG_SIZE = 16
RECORD_SIZE = 1 << 20  # plaintext bytes of a sealed payload record, at most
HEADER = struct.Struct("!4sBBHIQ")  # magic, version, type, flags, metadata length, payload length
HEADER_SIZE = HEADER.size  # 20 bytes
ALIGNMENT = 8  # every array starts at a multiple of 8 bytes inside the payload
NONCE_SIZE = 32
MAX_NDIM = 32
MAX_WORKER_ID = 2**31 - 1
# The id of an observer: the driver following a server it does not host (WATCH and PULL only).
OBSERVER_ID = MAX_WORKER_ID
MAX_CLOCK = 2**63 - 1

# Only plain numeric dtypes travel; little-endian on the wire. Never "O" (object).
ALLOWED_DTYPES = frozenset(
    ["|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8"]
)

SOCKET_BUFFER = 4 << 20
Address = tuple[str, int]

_CLIENT_LABEL = b"distkeras-client|"
_SERVER_LABEL = b"distkeras-server|"
_SESSION_LABEL = b"distkeras-session|"
_PADDING = bytes(ALIGNMENT)
_IOV_MAX = 512  # well below the usual IOV_MAX of 1024
_DRAIN_CHUNK = 1 << 20
_SEND_PIECE = 1 << 20  # bytes sent between two updates of a frame's tag
_TAG_PIECE = 1 << 18  # bytes received between two updates of a frame's tag, at most


class MsgType(enum.IntEnum):
    """Message types; the numeric values are part of the wire format."""

    CHALLENGE = 1  # server -> client: {"nonce", "sealed"}
    RESPONSE = 2  # client -> server: {"digest", "nonce", "worker_id"}
    WELCOME = 3  # server -> client: {"digest", "clock", "center", "round_mode"}
    PULL = 10  # client -> server: {}
    COMMIT = 11  # client -> server: {"worker_id", "clock", "arrays"} + payload
    COMMIT_PULL = 12  # client -> server: as COMMIT; reply is WEIGHTS
    REPORT = 13  # client -> server: {"fields"}
    LEAVE = 14  # client -> server: {}
    GOODBYE = 15  # client -> server: {}; no reply
    WATCH = 16  # observer -> server: {"epoch", "stop", "release"[, "published"]}; REPORTS
    SHARD_REQUEST = 17  # client -> server: {"chunk", "max_bytes"}; reply is SHARD
    WEIGHTS = 20  # server -> client: {"clock", "stop", "arrays"} + payload
    ACK = 21  # server -> client: {"clock", "stop"}
    ERROR = 22  # either way: {"error"}
    REPORTS = 23  # server -> observer: {"clock", "stop", "reports", "arrays"} + payload
    SHARD = 24  # server -> client: {"last", "arrays"} + payload: rows of the worker's shard


_HEX_NONCE = ("hex", NONCE_SIZE)
_HEX_DIGEST = ("hex", hashlib.sha256().digest_size)
# Required metadata keys per type: key -> kind. Unknown keys are ignored, so a reply may carry
# extra fields (e.g. the server's published ones) without a schema change. A new message type
# is one entry here, one in MsgType and one handler in the server's dispatch table.
SCHEMA: dict[MsgType, dict[str, Any]] = {
    MsgType.CHALLENGE: {"nonce": _HEX_NONCE, "sealed": bool},
    MsgType.RESPONSE: {"digest": _HEX_DIGEST, "nonce": _HEX_NONCE, "worker_id": "worker_id"},
    MsgType.WELCOME: {
        "digest": _HEX_DIGEST,
        "clock": "clock",
        "center": "layout",
        "round_mode": bool,
    },
    MsgType.PULL: {},
    MsgType.COMMIT: {"worker_id": "worker_id", "clock": "clock", "arrays": "specs"},
    MsgType.COMMIT_PULL: {"worker_id": "worker_id", "clock": "clock", "arrays": "specs"},
    MsgType.REPORT: {"fields": dict},
    MsgType.LEAVE: {},
    MsgType.GOODBYE: {},
    MsgType.WEIGHTS: {"clock": "clock", "stop": bool, "arrays": "specs"},
    MsgType.ACK: {"clock": "clock", "stop": bool},
    MsgType.ERROR: {"error": str},
    MsgType.WATCH: {"epoch": int, "stop": bool, "release": bool},
    MsgType.REPORTS: {"clock": "clock", "stop": bool, "reports": list, "arrays": "specs"},
    MsgType.SHARD_REQUEST: {"chunk": "count", "max_bytes": "count"},
    MsgType.SHARD: {"last": bool, "arrays": "specs"},
}
_MSG_TYPES = {int(t): t for t in MsgType}

# The fields a worker's REPORT may carry: name -> (type, low, high) for numbers, or type.
# Anything else is refused before it reaches the driver; a new field is one line here.
MAX_LOGS = 256
REPORT_FIELDS: dict[str, Any] = {
    "epoch": (int, 0, 10**9),
    "samples": (int, 0, 2**53),
    "rows": (int, 0, 2**53),
    "steps": (int, 0, 2**53),  # the worker's batches so far in this epoch
    "steps_per_epoch": (int, 0, 2**53),
    "learning_rate": float,  # the rate the worker trains with (absent: a schedule's)
    "logs": dict,  # metric name -> number (see check_report)
    "epoch_done": bool,
    "finished": bool,
}


class PeerClosed(ConnectionError):
    """The peer closed the connection cleanly, between two frames."""


class MessageRejected(ProtocolError):
    """A well-framed message was refused; the frame was consumed, so the stream is still usable."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Upper bounds checked on every frame header before anything is allocated.

    Attributes:
        max_metadata: Largest metadata section accepted, in bytes.
        max_payload: Largest payload section accepted, in bytes.
        max_arrays: Largest number of arrays one message may describe.
    """

    max_metadata: int
    max_payload: int
    max_arrays: int

    @classmethod
    def for_specs(cls, specs: Sequence[tuple[str, tuple[int, ...]]], itemsize: int | None = None):
        """Limits for messages carrying arrays shaped like `specs`.

        Args:
            specs: (dtype string, shape) of each array of the model.
            itemsize: If given, budget this many bytes per element instead of the actual
                dtype's (lets a server read a wrong-dtype commit's metadata and refuse it by name).

        Returns:
            Limits with 64 KiB of metadata headroom plus 256 bytes per array.
        """
        payload = 0
        for dtype, shape in specs:
            size = math.prod(shape)
            payload += padded(size * (itemsize or np.dtype(dtype).itemsize))
        n = len(specs)
        return cls(max_metadata=65536 + 256 * n, max_payload=payload, max_arrays=n)


HANDSHAKE_LIMITS = Limits(max_metadata=4096, max_payload=0, max_arrays=0)
# A client learns the center's layout from WELCOME, whose size it cannot know in advance.
CLIENT_HANDSHAKE_LIMITS = Limits(max_metadata=16 << 20, max_payload=0, max_arrays=0)


@dataclasses.dataclass
class Message:
    """A decoded frame.

    Attributes:
        type: The message type.
        meta: Validated metadata (see `SCHEMA` and docs/protocol.md).
        arrays: Arrays decoded from the payload (views into the receive buffer).
    """

    type: MsgType
    meta: dict[str, Any]
    arrays: list[np.ndarray] = dataclasses.field(default_factory=list)


def padded(nbytes: int) -> int:
    """Returns `nbytes` rounded up to the payload alignment."""
    return (nbytes + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def wire_array(array: Any, name: str = "array") -> np.ndarray:
    """Returns `array` as a C-contiguous little-endian ndarray with an allowed dtype.

    Raises:
        TypeError: If the dtype is not a plain numeric type (e.g. object or string).
    """
    arr = np.asarray(array)
    dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    if dtype.str not in ALLOWED_DTYPES:
        raise TypeError(
            f"Expected `{name}` to have a numeric dtype (one of {sorted(ALLOWED_DTYPES)}). "
            f"Received: dtype={arr.dtype}"
        )
    return np.asarray(arr, dtype=dtype, order="C")  # keeps 0-d arrays 0-d


def array_specs(arrays: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """Returns the JSON description ({"dtype", "shape"}) of each wire array."""
    return [{"dtype": a.dtype.str, "shape": list(a.shape)} for a in arrays]


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
        arrays: Arrays already passed through `wire_array`.
        flags: Header flags (`FLAG_TAGGED` when a tag will follow).

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


def send(
    sock: socket.socket,
    msg_type: MsgType,
    meta: dict[str, Any] | None = None,
    arrays: Sequence[np.ndarray] = (),
) -> int:
    """Encodes and sends one frame; returns the number of bytes sent."""
    return send_buffers(sock, encode(msg_type, meta, arrays))


# ----------------------------------------------------------------------------- decoding

RecvInto = Callable[[memoryview], int]


def recv_exact(recv_into: RecvInto, view: memoryview, what: str, at_boundary: bool = False) -> None:
    """Fills `view` completely from `recv_into`.

    Raises:
        PeerClosed: If the peer closed before the first byte and `at_boundary` is set.
        ProtocolError: If the peer closed part-way (a truncated frame).
    """
    want = view.nbytes
    got = 0
    while got < want:
        n = recv_into(view[got:])
        if not n:
            if at_boundary and got == 0:
                raise PeerClosed("peer closed the connection")
            raise ProtocolError(f"peer closed the connection mid-frame: got {got} of {want} {what}")
        got += n


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


def _check_int(value: Any, key: str, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        name = key if key.startswith("report") else f"metadata field {key!r}"
        raise ProtocolError(f"{name} must be an integer in [{low}, {high}]; got {value!r:.40}")


def _check_specs(value: Any, key: str, max_arrays: int) -> int:
    """Validates a list of array specs; returns the payload size they describe."""
    if not isinstance(value, list):
        raise ProtocolError(f"metadata field {key!r} must be a list of array specs")
    if len(value) > max_arrays:
        raise ProtocolError(f"{len(value)} arrays exceed the limit of {max_arrays}")
    total = 0
    for i, spec in enumerate(value):
        if not isinstance(spec, dict) or set(spec) != {"dtype", "shape"}:
            raise ProtocolError(f"{key}[{i}] must be an object with exactly 'dtype' and 'shape'")
        dtype, shape = spec["dtype"], spec["shape"]
        if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
            raise ProtocolError(f"{key}[{i}] has disallowed dtype {dtype!r}")
        if not isinstance(shape, list) or len(shape) > MAX_NDIM:
            raise ProtocolError(f"{key}[{i}] shape must be a list of at most {MAX_NDIM} integers")
        size = 1
        for dim in shape:
            _check_int(dim, f"{key}[{i}].shape", 0, 2**62)
            size *= dim
        total += padded(size * int(dtype[2:]))  # exact Python ints: no overflow
    return total


def decode_metadata(msg_type: MsgType, raw: bytes, payload_len: int, limits: Limits) -> dict:
    """Parses and validates the JSON metadata of a frame of type `msg_type`.

    Raises:
        ProtocolError: Invalid JSON or UTF-8, a missing or mistyped field, or array specs
            whose total size differs from `payload_len`.
    """
    try:
        meta = json.loads(raw.decode("utf-8")) if raw else {}
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"metadata of {msg_type.name} is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ProtocolError(f"metadata of {msg_type.name} must be a JSON object")
    described = 0
    for key, kind in SCHEMA[msg_type].items():
        if key not in meta:
            raise ProtocolError(f"{msg_type.name} metadata lacks field {key!r}")
        value = meta[key]
        if kind == "worker_id":
            _check_int(value, key, 0, MAX_WORKER_ID)
        elif kind in ("clock", "count"):
            _check_int(value, key, 0, MAX_CLOCK)
        elif kind == "specs":
            described = _check_specs(value, key, limits.max_arrays)
        elif kind == "layout":  # the center's layout, announced in WELCOME
            _check_specs(value, key, limits.max_metadata)
        elif isinstance(kind, tuple):
            _check_hex(value, key, kind[1])
        elif type(value) is not kind:
            raise ProtocolError(f"metadata field {key!r} must be of type {kind.__name__}")
    if described != payload_len:
        raise ProtocolError(
            f"{msg_type.name} declares a payload of {payload_len} bytes "
            f"but its arrays describe {described} bytes"
        )
    return meta


def _check_hex(value: Any, key: str, nbytes: int) -> None:
    if not isinstance(value, str) or len(value) != 2 * nbytes:
        raise ProtocolError(f"metadata field {key!r} must be {nbytes} bytes in hex")
    try:
        bytes.fromhex(value)
    except ValueError:
        raise ProtocolError(f"metadata field {key!r} is not hexadecimal") from None


def check_report(fields: dict[str, Any]) -> None:
    """Checks a REPORT's fields against `REPORT_FIELDS`.

    Raises:
        ProtocolError: An unknown field, a wrong type, a number out of range, or logs that
            are not a small object of numbers.
    """
    for key, value in fields.items():
        kind = REPORT_FIELDS.get(key)
        if kind is None:
            raise ProtocolError(f"unknown report field {key!r} (known: {sorted(REPORT_FIELDS)})")
        if isinstance(kind, tuple):
            _check_int(value, f"report field {key!r}", kind[1], kind[2])
        elif type(value) is not kind:
            raise ProtocolError(f"report field {key!r} must be of type {kind.__name__}")
    logs = fields.get("logs", {})
    if len(logs) > MAX_LOGS:
        raise ProtocolError(f"report logs hold {len(logs)} entries, more than {MAX_LOGS}")
    for name, value in logs.items():  # NaN is allowed: a diverging loss is news, not an attack
        if type(value) not in (int, float) or len(name) > 256:
            raise ProtocolError(f"report logs entry {name[:64]!r} must be a number")


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


Validator = Callable[[MsgType, dict], None]
BufferFor = Callable[[int], memoryview]


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


def read_frame(
    recv_into: RecvInto,
    limits: Limits,
    validate: Validator | None = None,
    buffer_for: BufferFor | None = None,
    mac: FrameMac | None = None,
    untagged_error: bool = False,
    seal: FrameSeal | None = None,
) -> tuple[Message, int]:
    """Reads one frame: header, metadata, then the payload into a preallocated buffer.

    Args:
        recv_into: `socket.recv_into` or any callable with its semantics (0 means EOF).
        limits: Bounds checked on the header before anything is allocated.
        validate: Called with (type, metadata) before the payload is read; a `ProtocolError`
            it raises makes this function discard the payload and raise `MessageRejected`.
        buffer_for: Returns a writable buffer of at least n bytes for the payload;
            by default a fresh uninitialized array.
        mac: In an authenticated session, the receiving direction's `FrameMac`: the frame
            must be tagged, and its tag is verified before the frame is returned or refused.
        untagged_error: With `mac` or `seal`, also accept a plain ERROR (a refused handshake).
        seal: In an encrypted session, the receiving direction's `FrameSeal`: the frame must
            be sealed; each record is opened (authenticated) before its bytes are used.

    Returns:
        (message, number of bytes read).

    Raises:
        PeerClosed: EOF between frames.
        MessageRejected: `validate` refused the (authentic) frame; the stream is in sync.
        AuthenticationError: A missing or wrong tag.
        ProtocolError: Anything malformed; the stream can no longer be trusted.
    """
    header = bytearray(HEADER_SIZE)
    recv_exact(recv_into, memoryview(header), "header bytes", at_boundary=True)
    msg_type, flags, meta_len, payload_len = unpack_header(bytes(header), limits)
    if seal is not None and flags == FLAG_SEALED:
        lengths = (meta_len, payload_len)
        return _read_sealed(
            recv_into, header, msg_type, lengths, limits, validate, buffer_for, seal
        )
    tagger = _tagger(msg_type, flags, mac, seal is not None, untagged_error)
    recv = recv_into
    if tagger is not None:
        tagger.update(header)
        recv = _teed(recv_into, tagger)
    raw = bytearray(meta_len)
    recv_exact(recv, memoryview(raw), "metadata bytes")
    meta = decode_metadata(msg_type, bytes(raw), payload_len, limits)
    nbytes = HEADER_SIZE + meta_len + payload_len + (TAG_SIZE if tagger else 0)

    def skip_payload() -> None:
        _discard(recv, payload_len)
        _verify_tag(recv_into, tagger, msg_type)

    _validate_or_skip(validate, msg_type, meta, skip_payload)
    if not payload_len:
        _verify_tag(recv_into, tagger, msg_type)
        return Message(msg_type, meta), nbytes
    # np.empty, unlike bytearray(n), does not zero-fill: recv_into writes each byte once.
    buf = buffer_for(payload_len) if buffer_for else memoryview(np.empty(payload_len, np.uint8))
    view = memoryview(buf)[:payload_len]
    recv_exact(recv, view, "payload bytes")
    _verify_tag(recv_into, tagger, msg_type)
    return Message(msg_type, meta, decode_arrays(meta["arrays"], view)), nbytes


def _validate_or_skip(
    validate: Validator | None, msg_type: MsgType, meta: dict, skip_payload: Callable[[], None]
) -> None:
    """Runs `validate`; a refusal consumes the rest of the frame (`skip_payload`), so that
    the stream stays in sync, and raises `MessageRejected`."""
    if validate is None:
        return
    try:
        validate(msg_type, meta)
    except MessageRejected:
        raise
    except ProtocolError as exc:
        skip_payload()
        raise MessageRejected(str(exc)) from None


def _read_sealed(
    recv_into: RecvInto,
    header: bytearray,
    msg_type: MsgType,
    lengths: tuple[int, int],
    limits: Limits,
    validate: Validator | None,
    buffer_for: BufferFor | None,
    seal: FrameSeal,
) -> tuple[Message, int]:
    """The rest of a sealed frame (see `read_frame`): the metadata record, whose associated
    data is the header, then the payload records, each opened as it arrives."""
    meta_len, payload_len = lengths
    record = bytearray(meta_len + TAG_SIZE)
    recv_exact(recv_into, memoryview(record), "metadata bytes")
    raw = bytearray(meta_len)
    seal.open_into(record, bytes(header), raw)
    meta = decode_metadata(msg_type, bytes(raw), payload_len, limits)
    records = -(-payload_len // RECORD_SIZE)
    nbytes = HEADER_SIZE + meta_len + payload_len + TAG_SIZE * (1 + records)
    skip_payload = functools.partial(_open_records, recv_into, seal, payload_len, None)
    _validate_or_skip(validate, msg_type, meta, skip_payload)
    if not payload_len:
        return Message(msg_type, meta), nbytes
    buf = buffer_for(payload_len) if buffer_for else memoryview(np.empty(payload_len, np.uint8))
    view = memoryview(buf)[:payload_len]
    _open_records(recv_into, seal, payload_len, view)
    return Message(msg_type, meta, decode_arrays(meta["arrays"], view)), nbytes


def _open_records(
    recv_into: RecvInto, seal: FrameSeal, nbytes: int, out: memoryview | None
) -> None:
    """Receives `nbytes` of payload as sealed records and opens them into `out` (None: into
    scratch space, to be dropped)."""
    scratch = memoryview(np.empty(min(nbytes, RECORD_SIZE) + TAG_SIZE, np.uint8))
    dropped = None if out is not None else memoryview(np.empty(min(nbytes, RECORD_SIZE), np.uint8))
    for start in range(0, nbytes, RECORD_SIZE):
        size = min(RECORD_SIZE, nbytes - start)
        record = scratch[: size + TAG_SIZE]
        recv_exact(recv_into, record, "payload bytes")
        seal.open_into(
            record, b"", out[start : start + size] if out is not None else dropped[:size]
        )


def _tagger(
    msg_type: MsgType, flags: int, mac: FrameMac | None, sealed_session: bool, untagged_error: bool
) -> Poly1305 | None:
    """The authenticator for a frame with header `flags`, or None for an untagged frame."""
    if flags == 0 and untagged_error and msg_type is MsgType.ERROR:
        return None  # a refusal sent before the session's keys existed
    if sealed_session:
        raise AuthenticationError(f"unsealed {msg_type.name} frame in an encrypted session")
    if flags == FLAG_SEALED:
        raise ProtocolError("header flags 0x2 (sealed) outside an encrypted session")
    tagged = flags == FLAG_TAGGED
    if mac is None:
        if tagged:
            raise ProtocolError("header flags 0x1 (tagged) outside an authenticated session")
        return None
    if not tagged:
        raise AuthenticationError(f"untagged {msg_type.name} frame in an authenticated session")
    return mac.next()


def _teed(recv_into: RecvInto, tagger: Poly1305) -> RecvInto:
    def recv(view: memoryview) -> int:
        n = recv_into(view[:_TAG_PIECE])  # tagged while the bytes are still in the cache
        tagger.update(view[:n])
        return n

    return recv


def _verify_tag(recv_into: RecvInto, tagger: Poly1305 | None, msg_type: MsgType) -> None:
    if tagger is None:
        return
    tag = bytearray(TAG_SIZE)
    recv_exact(recv_into, memoryview(tag), "tag bytes")
    try:
        tagger.verify(bytes(tag))
    except InvalidSignature:
        raise AuthenticationError(
            f"{msg_type.name} frame failed authentication: altered, injected, replayed or "
            "out of order"
        ) from None


def _discard(recv_into: RecvInto, nbytes: int) -> None:
    scratch = memoryview(bytearray(min(nbytes, _DRAIN_CHUNK)))
    while nbytes:
        chunk = min(nbytes, scratch.nbytes)
        recv_exact(recv_into, scratch[:chunk], "payload bytes")
        nbytes -= chunk


def parse_frame(data: bytes, limits: Limits) -> Message:
    """Parses exactly one frame from `data` (the socket path, over an in-memory stream).

    Raises:
        ProtocolError: If `data` is not exactly one valid frame.
    """
    stream = io.BytesIO(data)
    try:
        message, nbytes = read_frame(stream.readinto, limits)
    except PeerClosed:
        raise ProtocolError("empty input: no frame") from None
    if nbytes != len(data):
        raise ProtocolError(f"{len(data) - nbytes} trailing bytes after the frame")
    return message


# ----------------------------------------------------------------------------- stream


def configure(sock: socket.socket) -> None:
    """No Nagle delay and large buffers: frames are big and come as request/reply."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)


class Stream:
    """Framed I/O over one connected socket, counting the bytes each way.

    Args:
        sock: A connected socket.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = 0
        self.sent = 0
        self.deadline: float | None = None  # time.monotonic() by which every read must end
        self._send_mac: FrameMac | None = None
        self._recv_mac: FrameMac | None = None
        self._send_seal: FrameSeal | None = None
        self._recv_seal: FrameSeal | None = None
        self._record: np.ndarray | None = None  # the buffer sealed records are sent from

    def authenticate(self, send_mac: FrameMac, recv_mac: FrameMac) -> None:
        """From now on every frame is tagged, and every frame received must be."""
        self._send_mac, self._recv_mac = send_mac, recv_mac

    def seal(self, send_seal: FrameSeal, recv_seal: FrameSeal) -> None:
        """From now on every frame is sealed (encrypted), and every frame received must be."""
        self._send_seal, self._recv_seal = send_seal, recv_seal

    def recv_into(self, view: memoryview) -> int:
        """`socket.recv_into`, counted, and bounded by `deadline` when it is set.

        Raises:
            TimeoutError: The deadline passed.
        """
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("deadline passed")
            self.sock.settimeout(remaining)
        n = self.sock.recv_into(view)
        self.received += n
        return n

    def send(
        self, msg_type: MsgType, meta: dict[str, Any] | None = None, arrays: Sequence = ()
    ) -> None:
        """Encodes and sends one frame (tagged or sealed once the session has keys)."""
        if self._send_seal is not None:
            self._send_sealed(encode(msg_type, meta, arrays, FLAG_SEALED))
        elif self._send_mac is not None:
            self._send_tagged(encode(msg_type, meta, arrays, FLAG_TAGGED))
        else:
            self.sent += send_buffers(self.sock, encode(msg_type, meta, arrays))

    def _send_sealed(self, buffers: list[Any]) -> None:
        """Sends the header, the sealed metadata, then the payload in sealed records; each
        record is sealed while the peer opens the one before."""
        first = memoryview(buffers[0])
        header, raw = first[:HEADER_SIZE], first[HEADER_SIZE:]
        meta_record = bytearray(raw.nbytes + TAG_SIZE)
        self._send_seal.seal_into(raw, bytes(header), meta_record)
        head = [header, meta_record]
        if self._record is None and len(buffers) > 1:
            self._record = np.empty(RECORD_SIZE + TAG_SIZE, np.uint8)
        for piece in _pieces(buffers[1:], RECORD_SIZE):
            record = memoryview(self._record)[: len(piece) + TAG_SIZE]
            self._send_seal.seal_into(piece, b"", record)
            if head:  # the first record goes out with the header: one call for small frames
                self.sent += send_buffers(self.sock, [*head, record])
                head = []
            else:
                self.sock.sendall(record)
                self.sent += record.nbytes
        if head:
            self.sent += send_buffers(self.sock, head)

    def _send_tagged(self, buffers: list[Any]) -> None:
        """Sends `buffers` and their tag, tagging each piece right after sending it, so that
        the tag's computation overlaps with the peer's reading."""
        tagger = self._send_mac.next()
        nbytes = sum(memoryview(b).nbytes for b in buffers)
        if nbytes <= _SEND_PIECE:  # small: one scatter/gather send, tag included
            for buffer in buffers:
                tagger.update(buffer)
            self.sent += send_buffers(self.sock, [*buffers, tagger.finalize()])
            return
        for buffer in buffers:
            view = memoryview(buffer).cast("B")
            for start in range(0, view.nbytes, _SEND_PIECE):
                piece = view[start : start + _SEND_PIECE]
                self.sock.sendall(piece)
                tagger.update(piece)
        self.sock.sendall(tagger.finalize())
        self.sent += nbytes + TAG_SIZE

    def frame(
        self, msg_type: MsgType, meta: dict[str, Any] | None = None, arrays: Sequence = ()
    ) -> list[Any]:
        """The buffers of the next frame, with its tag in an authenticated session (not for
        encrypted sessions)."""
        if self._send_mac is None:
            return encode(msg_type, meta, arrays)
        buffers = encode(msg_type, meta, arrays, FLAG_TAGGED)
        tagger = self._send_mac.next()
        for buffer in buffers:
            tagger.update(buffer)
        buffers.append(tagger.finalize())
        return buffers

    def read(
        self,
        limits: Limits,
        validate: Validator | None = None,
        buffer_for: BufferFor | None = None,
        untagged_error: bool = False,
    ) -> Message:
        """Reads one frame (see `read_frame`), verifying its tag in an authenticated session."""
        mac, seal = self._recv_mac, self._recv_seal
        return read_frame(self.recv_into, limits, validate, buffer_for, mac, untagged_error, seal)[
            0
        ]


def _pieces(buffers: Sequence[Any], size: int):
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


def check_reply(msg: Message, expected: MsgType, during: str) -> Message:
    """Returns `msg` if it has type `expected`; raises with the server's text for an ERROR.

    Raises:
        AuthenticationError: An ERROR of kind "auth".
        DistKerasError: Any other ERROR (the stream is still in sync).
        ProtocolError: A reply of another type.
    """
    if msg.type is MsgType.ERROR:
        error = msg.meta["error"]
        if msg.meta.get("kind") == "auth":
            raise AuthenticationError(f"parameter server refused the handshake: {error}")
        raise DistKerasError(f"parameter server refused {during}: {error}")
    if msg.type is not expected:
        raise ProtocolError(f"expected {expected.name} in reply to {during}, got {msg.type.name}")
    return msg


# ----------------------------------------------------------------------------- handshake


MIN_SECRET = 16  # bytes


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


def client_digest(secret: bytes, server_nonce: str, client_nonce: str, worker_id: int) -> str:
    """The client's answer to the server's challenge, binding its own nonce and worker id."""
    message = _CLIENT_LABEL + bytes.fromhex(server_nonce) + bytes.fromhex(client_nonce)
    message += worker_id.to_bytes(4, "big")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def server_digest(secret: bytes, client_nonce: str, server_nonce: str) -> str:
    """The server's answer to the client's challenge (a distinct label: no reflection)."""
    message = _SERVER_LABEL + bytes.fromhex(client_nonce) + bytes.fromhex(server_nonce)
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def session_key(secret: bytes, server_nonce: str, client_nonce: str, worker_id: int) -> bytes:
    """The session's base key: from the secret, both nonces and the worker id, so that no
    frame of one connection is valid on another."""
    message = _SESSION_LABEL + bytes.fromhex(server_nonce) + bytes.fromhex(client_nonce)
    return hmac.new(secret, message + worker_id.to_bytes(4, "big"), hashlib.sha256).digest()


def session_macs(
    secret: bytes, server_nonce: str, client_nonce: str, worker_id: int
) -> tuple[FrameMac, FrameMac]:
    """The session's (client-to-server, server-to-client) frame authenticators.

    Both keys derive from `session_key`, one per direction, so that a direction's frames are
    not valid in the other direction.
    """
    base = session_key(secret, server_nonce, client_nonce, worker_id)
    to_server = hmac.new(base, b"client->server", hashlib.sha256).digest()
    to_client = hmac.new(base, b"server->client", hashlib.sha256).digest()
    return FrameMac(to_server), FrameMac(to_client)


def verify_digest(expected: str, received: str, who: str) -> None:
    """Compares digests in constant time.

    Raises:
        AuthenticationError: If they differ.
    """
    if not hmac.compare_digest(expected.encode(), received.encode()):
        raise AuthenticationError(f"{who} failed the HMAC challenge: wrong secret")


Admit = Callable[[int], dict[str, Any]]


def _protect(
    stream: Stream, secret: bytes, nonces: tuple[str, str], worker_id: int, share, server: bool
) -> None:
    """Gives the stream the session's keys: tags, or with a key share, seals."""
    server_nonce, client_nonce = nonces
    if share is None:
        to_server, to_client = session_macs(secret, server_nonce, client_nonce, worker_id)
        send, recv = (to_client, to_server) if server else (to_server, to_client)
        stream.authenticate(send_mac=send, recv_mac=recv)
        return
    peer_nonce = client_nonce if server else server_nonce
    salt = session_key(secret, server_nonce, client_nonce, worker_id)
    to_server, to_client = sealing.session_seals(salt, share.shared_secret(peer_nonce))
    send, recv = (to_client, to_server) if server else (to_server, to_client)
    stream.seal(send_seal=send, recv_seal=recv)


def serve_handshake(stream: Stream, secret: bytes, admit: Admit, encrypt: bool = False) -> int:
    """The server's half: challenge, check the answer, admit the worker, prove itself.

    Args:
        stream: The new connection.
        secret: The shared HMAC key.
        admit: Called with the authenticated worker id; returns the WELCOME fields (clock,
            center layout, ...) or raises `ProtocolError` to refuse the worker.
        encrypt: Seal the session: each side's nonce is then its ephemeral X25519 public
            key, so that the digests authenticate the key agreement.

    Returns:
        The authenticated worker id.

    Raises:
        AuthenticationError: Wrong secret.
        ProtocolError: Anything else unexpected.
    """
    share = sealing.KeyShare() if encrypt else None
    nonce = share.nonce if share else new_nonce()
    stream.send(MsgType.CHALLENGE, {"nonce": nonce, "sealed": encrypt})
    msg = stream.read(HANDSHAKE_LIMITS)
    if msg.type is not MsgType.RESPONSE:
        raise ProtocolError(f"expected RESPONSE during the handshake, got {msg.type.name}")
    worker_id, client_nonce = msg.meta["worker_id"], msg.meta["nonce"]
    expected = client_digest(secret, nonce, client_nonce, worker_id)
    verify_digest(expected, msg.meta["digest"], "client")
    _protect(stream, secret, (nonce, client_nonce), worker_id, share, server=True)
    welcome = admit(worker_id)
    stream.send(MsgType.WELCOME, {**welcome, "digest": server_digest(secret, client_nonce, nonce)})
    return worker_id


def answer_handshake(
    stream: Stream, secret: bytes, worker_id: int, require_encryption: bool = False
) -> Message:
    """The client's half: answer the challenge, challenge back, check the server's proof.
    The session is encrypted when the server's challenge says so.

    Args:
        require_encryption: Refuse a server that does not encrypt.

    Returns:
        The server's WELCOME.

    Raises:
        AuthenticationError: Either side failed the challenge.
        DistKerasError: The server refused this worker.
        ProtocolError: Anything else unexpected.
    """
    challenge = check_reply(
        stream.read(CLIENT_HANDSHAKE_LIMITS), MsgType.CHALLENGE, "the handshake"
    )
    server_nonce, sealed = challenge.meta["nonce"], challenge.meta["sealed"]
    if require_encryption and not sealed:
        raise AuthenticationError(
            "the parameter server does not encrypt, but this client requires encryption"
        )
    share = sealing.KeyShare() if sealed else None
    nonce = share.nonce if share else new_nonce()
    response = {
        "digest": client_digest(secret, server_nonce, nonce, worker_id),
        "nonce": nonce,
        "worker_id": worker_id,
    }
    stream.send(MsgType.RESPONSE, response)
    _protect(stream, secret, (server_nonce, nonce), worker_id, share, server=False)
    try:
        reply = stream.read(CLIENT_HANDSHAKE_LIMITS, untagged_error=True)
    except AuthenticationError as exc:
        raise AuthenticationError(f"parameter server failed the handshake: {exc}") from None
    welcome = check_reply(reply, MsgType.WELCOME, "the handshake")
    expected = server_digest(secret, nonce, server_nonce)
    verify_digest(expected, welcome.meta["digest"], "parameter server")
    return welcome
