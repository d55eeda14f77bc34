"""The vocabulary of the wire: message types, their metadata, the fields of a report.

MsgType and SCHEMA: what each message carries, checked by `decode_metadata` on every frame.
Report and `check_report`: what a worker may report, typed for the monitor. Limits: bounds
checked before anything is allocated. Wire arrays: the dtypes that travel and the payload's
alignment. No bytes are read or written here.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from distkeras.errors import ProtocolError

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

Address = tuple[str, int]


class MsgType(enum.IntEnum):
    """Message types; the numeric values are part of the wire format."""

    CHALLENGE = 1  # server -> client: {"nonce", "sealed", "server_key"}
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
    MsgType.CHALLENGE: {"nonce": _HEX_NONCE, "sealed": bool, "server_key": _HEX_NONCE},
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


MAX_LOGS = 256
_COUNT = (int, 0, 2**53)


def _field(kind: Any, default: Any = None) -> Any:
    return dataclasses.field(default=default, metadata={"kind": kind})


@dataclasses.dataclass(frozen=True)
class Report:
    """One worker's progress report: what the worker sends (a REPORT's "fields"), what the
    server checks (`check_report`, from these fields' kinds) and what the monitor reads.

    A field's kind is (type, low, high) for a number, or a type. A new field is one line here.

    Attributes:
        worker_id: The worker (set by the server from the connection, never by the worker).
        epoch: The epoch the report is about.
        samples: Rows trained on so far (in this epoch; in all, with `finished`).
        rows: The worker's rows per epoch (its first report: with `steps_per_epoch`).
        steps: The worker's batches so far in this epoch.
        steps_per_epoch: The worker's batches per epoch (its first report).
        learning_rate: The rate the worker trains with (None: a schedule's).
        logs: Metric name -> running mean over this epoch's steps (NaN is news, not an error).
        epoch_done: The worker finished `epoch`.
        finished: The worker finished training.
    """

    worker_id: int
    epoch: int = _field((int, 0, 10**9), 0)
    samples: int | None = _field(_COUNT)
    rows: int | None = _field(_COUNT)
    steps: int | None = _field(_COUNT)
    steps_per_epoch: int | None = _field(_COUNT)
    learning_rate: float | None = _field((float, 0.0, 1e9))
    logs: dict[str, float] = dataclasses.field(default_factory=dict, metadata={"kind": dict})
    epoch_done: bool = _field(bool, False)
    finished: bool = _field(bool, False)

    @classmethod
    def parse(cls, report: Any, num_workers: int = MAX_WORKER_ID + 1) -> Report:
        """The report of a dict of fields plus "worker_id" (as the server relays it).

        Raises:
            ProtocolError: Not such a dict, a worker id outside [0, num_workers), or fields
                that `check_report` refuses.
        """
        if not isinstance(report, dict):
            raise ProtocolError(f"a report must be an object; got {type(report).__name__}")
        fields = dict(report)
        _check_number(fields.pop("worker_id", None), "worker_id", (int, 0, num_workers - 1))
        check_report(fields)
        logs = {name: float(value) for name, value in fields.pop("logs", {}).items()}
        return cls(worker_id=report["worker_id"], logs=logs, **fields)


# The fields a worker's REPORT may carry, and their kinds: anything else is refused before
# it reaches the driver.
REPORT_FIELDS: dict[str, Any] = {
    f.name: f.metadata["kind"] for f in dataclasses.fields(Report) if f.name != "worker_id"
}


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


def check_report(fields: dict[str, Any]) -> None:
    """Checks a REPORT's fields against `REPORT_FIELDS`.

    Raises:
        ProtocolError: An unknown field, a wrong type, a number out of range, `rows` without
            `steps_per_epoch` or the reverse, or logs that are not a small object of numbers.
    """
    for key, value in fields.items():
        kind = REPORT_FIELDS.get(key)
        if kind is None:
            known = sorted(REPORT_FIELDS)
            raise ProtocolError(f"unknown report field {key!r:.40} (known: {known})")
        if isinstance(kind, tuple):
            _check_number(value, key, kind)
        elif type(value) is not kind:
            raise ProtocolError(f"report field {key!r} must be of type {kind.__name__}")
    if ("rows" in fields) != ("steps_per_epoch" in fields):  # a worker's first report
        raise ProtocolError("report fields 'rows' and 'steps_per_epoch' come together")
    logs = fields.get("logs", {})
    if len(logs) > MAX_LOGS:
        raise ProtocolError(f"report logs hold {len(logs)} entries, more than {MAX_LOGS}")
    for name, value in logs.items():  # NaN is allowed: a diverging loss is news, not an attack
        if type(name) is not str or len(name) > 256:
            raise ProtocolError(f"report logs names must be short strings; got {name!r:.64}")
        if not (type(value) is float or (type(value) is int and abs(value) <= 2**53)):
            raise ProtocolError(f"report logs entry {name[:64]!r} must be a number")


def _check_number(value: Any, key: str, kind: tuple[type, Any, Any]) -> None:
    number, low, high = kind
    if type(value) is not number or not low <= value <= high:  # NaN is not within
        what = "an integer" if number is int else "a number"
        raise ProtocolError(
            f"report field {key!r} must be {what} in [{low}, {high}]; got {value!r:.40}"
        )


def _check_int(value: Any, key: str, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise ProtocolError(
            f"metadata field {key!r} must be an integer in [{low}, {high}]; got {value!r:.40}"
        )


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


LOWER_HEX = re.compile(r"[0-9a-f]*")  # strict: no spaces, no upper case, no 0x


def _check_hex(value: Any, key: str, nbytes: int) -> None:
    """Strict: exactly 2 * nbytes lowercase hexadecimal digits (no spaces, no case games)."""
    if not isinstance(value, str) or len(value) != 2 * nbytes:
        raise ProtocolError(f"metadata field {key!r} must be {nbytes} bytes in hex")
    if not LOWER_HEX.fullmatch(value):
        raise ProtocolError(f"metadata field {key!r} is not lowercase hexadecimal")
