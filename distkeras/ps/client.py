"""Client: one worker's connection to the parameter server (pull, commit, report, leave),
or the observer's (pull, watch) when the driver follows a server it does not host.

The handshake and framing are `distkeras.ps.wire`'s; what the server does with a commit
is `distkeras.ps.center`'s. Nothing here knows about Spark or about models.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from distkeras.errors import DistKerasError, ProtocolError
from distkeras.ps.wire import handshake, schema
from distkeras.ps.wire.framing import FrameCut, PeerClosed
from distkeras.ps.wire.schema import Address, Limits, Message, MsgType
from distkeras.ps.wire.stream import Stream, check_reply, configure

SHARD_CHUNK_BYTES = 32 << 20  # the payload of one SHARD reply, at most
MAX_SHARD_COLUMNS = 256

logger = logging.getLogger(__name__)


class Client:
    """One worker's connection to a `ParameterServer` (thread-safe, one request at a time).

    Args:
        address: (host, port) of the server.
        secret: The server's HMAC key.
        worker_id: This worker's id (0..num_workers-1 in round mode).
        timeout: Seconds allowed for every socket operation after connecting.
        connect_timeout: Seconds spent retrying the connection, with exponential backoff.
        require_encryption: Refuse a server that does not encrypt (pass the server's
            `encrypted`). Whether a session is encrypted is the server's choice.
        server_key: The server's `public_key` to pin: refuse any other server, even one
            that knows the secret (a worker could). None: trust the secret alone.
        identity: The driver's observer's static key (`handshake.KeyShare`), when the
            server pins its public half (`observer_key`).

    Raises:
        AuthenticationError: If either side fails the HMAC handshake.
        ConnectionError: If the server cannot be reached within `connect_timeout`.
        DistKerasError: If the server refuses this worker (e.g. a duplicate worker id).
    """

    def __init__(
        self,
        address: Address,
        secret: bytes,
        worker_id: int = 0,
        timeout: float = 30.0,
        connect_timeout: float = 30.0,
        require_encryption: bool = False,
        server_key: str | None = None,
        identity: handshake.KeyShare | None = None,
    ) -> None:
        handshake.check_secret(secret)
        if server_key is not None:
            handshake.check_public_key(server_key, "server_key")
        if type(worker_id) is not int or not 0 <= worker_id <= schema.MAX_WORKER_ID:
            raise ValueError(
                f"Expected `worker_id` to be a non-negative int. Received: worker_id={worker_id!r}"
            )
        for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout)):
            if not value > 0:
                raise ValueError(f"Expected `{name}` to be positive. Received: {name}={value!r}")
        self.address = (address[0], int(address[1]))
        self.worker_id = worker_id
        self.clock = 0
        self.epoch = 0  # epochs the driver had completed at the last pull
        self.stop_requested = False
        self.round_mode = False
        self.published: dict[str, Any] = {}  # the server's published fields, as last received
        self._secret = secret
        self._timeout = float(timeout)
        self._lock = threading.Lock()
        self._limits = schema.CLIENT_HANDSHAKE_LIMITS
        self._commit_timeout = self._timeout
        self._require_encryption = bool(require_encryption)
        self._server_key, self._identity = server_key, identity
        self._stream: Stream | None = self._connect(float(connect_timeout))

    def _connect(self, connect_timeout: float) -> Stream:
        """Connects and authenticates, retrying with exponential back-off until
        `connect_timeout` passes: a server not yet listening, or a handshake cut short (a
        server under a flood of connections drops handshakes to make room)."""
        deadline = time.monotonic() + connect_timeout
        delay = 0.05
        while True:
            remaining = deadline - time.monotonic()
            sock = None
            try:
                sock = socket.create_connection(
                    self.address, timeout=max(min(self._timeout, remaining), 0.01)
                )
                return self._handshake(sock)
            except (OSError, FrameCut) as exc:  # not reached, refused, or cut short
                if isinstance(exc, TimeoutError) and sock is not None:
                    raise  # a server that accepts and stays silent: no retry helps
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ConnectionError(
                        f"could not reach the parameter server at {self.address[0]}:"
                        f"{self.address[1]} within {connect_timeout:g}s: {exc}"
                    ) from exc
                logger.debug(
                    "connect to %s failed (%s); retrying in %.2fs", self.address, exc, delay
                )
                time.sleep(min(delay, remaining))
                delay = min(2 * delay, 2.0)

    def _handshake(self, sock: socket.socket) -> Stream:
        """Authenticates a new connection; closes it on failure."""
        try:
            configure(sock)
            sock.settimeout(self._timeout)
            stream = Stream(sock)
            welcome = handshake.answer_handshake(
                stream,
                self._secret,
                self.worker_id,
                self._require_encryption,
                self._server_key,
                self._identity,
            )
            self._welcome(welcome)
        except BaseException:
            sock.close()
            raise
        return stream

    def _welcome(self, welcome: Message) -> None:
        self.clock = welcome.meta["clock"]
        self.round_mode = welcome.meta["round_mode"]
        round_timeout = welcome.meta.get("round_timeout", 0.0)
        if type(round_timeout) not in (int, float) or not 0 <= round_timeout < 1e9:
            raise ProtocolError(f"WELCOME has an invalid round_timeout {round_timeout!r}")
        # A round-mode commit waits server-side for the slowest worker, up to round_timeout.
        self._commit_timeout = self._timeout + (round_timeout if self.round_mode else 0.0)
        layout = [(s["dtype"], tuple(s["shape"])) for s in welcome.meta["center"]]
        self._limits = Limits.for_specs(layout)

    def _request(
        self,
        msg_type: MsgType,
        reply_type: MsgType,
        meta: dict | None = None,
        arrays: Sequence[np.ndarray] = (),
        timeout: float | None = None,
        limits: Limits | None = None,
    ) -> Message:
        with self._lock:
            stream = self._stream
            if stream is None:
                raise ConnectionError("Client is closed")
            try:
                stream.sock.settimeout(timeout or self._timeout)
                stream.send(msg_type, meta, arrays)
                reply = check_reply(stream.read(limits or self._limits), reply_type, msg_type.name)
            except PeerClosed:
                self._abort()
                raise ConnectionError("the parameter server closed the connection") from None
            except DistKerasError as exc:
                if type(exc) is not DistKerasError:  # a protocol error: the stream is unusable
                    self._abort()
                raise
            except OSError:
                self._abort()
                raise
            self._record_status(reply.meta)
            return reply

    def _record_status(self, meta: dict[str, Any]) -> None:
        if meta.get("stop"):
            self.stop_requested = True
        self.published = {k: v for k, v in meta.items() if k not in ("clock", "stop", "arrays")}

    def _abort(self) -> None:
        if self._stream is not None:
            self._stream.sock.close()
            self._stream = None

    def _wire(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [schema.wire_array(a, f"arrays[{i}]") for i, a in enumerate(arrays)]

    def pull(self) -> list[np.ndarray]:
        """Returns a snapshot of the center; records its clock in `self.clock` and the epochs
        the driver has completed in `self.epoch`.
        """
        reply = self._request(MsgType.PULL, MsgType.WEIGHTS)
        self.clock = reply.meta["clock"]
        epoch = reply.meta.get("epoch", 0)
        self.epoch = epoch if type(epoch) is int and epoch >= 0 else 0
        return reply.arrays

    def commit(self, arrays: Sequence[np.ndarray]) -> None:
        """Sends `arrays` (shaped like the center) stamped with the clock of the last pull."""
        meta = {"worker_id": self.worker_id, "clock": self.clock}
        wire = self._wire(arrays)
        self._request(MsgType.COMMIT, MsgType.ACK, meta, wire, self._commit_timeout)

    def commit_and_pull(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Commits `arrays` and returns the center after it, in one round trip."""
        meta = {"worker_id": self.worker_id, "clock": self.clock}
        wire = self._wire(arrays)
        reply = self._request(
            MsgType.COMMIT_PULL, MsgType.WEIGHTS, meta, wire, self._commit_timeout
        )
        self.clock = reply.meta["clock"]
        return reply.arrays

    def report(self, **fields: Any) -> None:
        """Sends a JSON-able progress report; the server adds this worker's id.

        Raises:
            TypeError: If a field is not JSON-serializable.
        """
        try:
            json.dumps(fields)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"Expected JSON-serializable report fields. Received: {exc}") from None
        self._request(MsgType.REPORT, MsgType.ACK, {"fields": fields})

    def watch(
        self, epoch: int, stop: bool = False, release: bool = False, published: dict | None = None
    ) -> tuple[dict[str, Any], list[np.ndarray]]:
        """Observer only: tells the server the driver's state, returns the news since the
        last call (REPORTS metadata: `reports`, `clock`, ... and the arrays it carries).

        Args:
            epoch: Epochs the driver has completed.
            stop: The driver asks the workers to stop (a callback set `stop_training`).
            release: The driver has what it needs; the server's host may stop it.
            published: Fields the server publishes to its workers (e.g. `learning_rate`).
        """
        meta = {"epoch": int(epoch), "stop": bool(stop), "release": bool(release)}
        if published:
            meta["published"] = dict(published)
        reply = self._request(MsgType.WATCH, MsgType.REPORTS, meta)
        self.clock = reply.meta["clock"]
        return reply.meta, reply.arrays

    def shard(self, max_bytes: int = SHARD_CHUNK_BYTES) -> Iterator[list[np.ndarray]]:
        """Yields this worker's rows from the driver, a chunk of at most `max_bytes` at a time
        (one array per column), until the driver says it was the last."""
        limits = Limits(65536 + 256 * MAX_SHARD_COLUMNS, max_bytes, MAX_SHARD_COLUMNS)
        for chunk in itertools.count():
            meta = {"chunk": chunk, "max_bytes": max_bytes}
            reply = self._request(MsgType.SHARD_REQUEST, MsgType.SHARD, meta, limits=limits)
            yield reply.arrays
            if reply.meta["last"]:
                return

    def leave(self) -> None:
        """Round mode: this worker has no more data; removes it from the round set."""
        self._request(MsgType.LEAVE, MsgType.ACK)

    def close(self) -> None:
        """Says goodbye (best effort) and closes the connection; idempotent."""
        with self._lock:
            if self._stream is None:
                return
            try:
                self._stream.send(MsgType.GOODBYE)
            except OSError as exc:
                logger.debug("goodbye not delivered: %s", exc)
            self._abort()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
