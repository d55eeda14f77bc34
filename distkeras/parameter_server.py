"""ParameterServer: holds the center, authenticates clients, applies an injected rule under a lock.

Client: one worker's connection (pull, commit, report, leave). Framing and handshake live in
`distkeras.protocol`, update rules in the algorithms; nothing here knows about Spark.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from distkeras import protocol
from distkeras.errors import AuthenticationError, DistKerasError, ProtocolError
from distkeras.protocol import Limits, Message, MessageRejected, MsgType, PeerClosed

logger = logging.getLogger(__name__)

ServerRule = Callable[[list[np.ndarray], list[np.ndarray], int], None]
RoundRule = Callable[[list[np.ndarray], list[list[np.ndarray]]], None]
Address = tuple[str, int]

HANDSHAKE_TIMEOUT = 10.0  # seconds an unauthenticated peer may take to finish the handshake
LINGER_TIMEOUT = 1.0  # seconds spent draining a refused peer so that it can read our error
LINGER_BYTES = 256 << 20
JOIN_TIMEOUT = 5.0
SOCKET_BUFFER = 4 << 20
_REQUESTS = (MsgType.PULL, MsgType.COMMIT, MsgType.COMMIT_PULL, MsgType.REPORT, MsgType.LEAVE)
_SESSION_TYPES = frozenset(_REQUESTS + (MsgType.GOODBYE,))


def add_rule(center: list[np.ndarray], arrays: list[np.ndarray], staleness: int) -> None:
    """The default server rule (DOWNPOUR): adds each committed array to the center."""
    del staleness
    for c, a in zip(center, arrays):
        np.add(c, a, out=c)


def _configure(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)


def _all_finite(array: np.ndarray) -> bool:
    """True if `array` has no NaN or Inf (one allocation-free pass when it has none)."""
    if array.dtype.kind != "f" or np.isfinite(array.sum()):
        return True  # any NaN or Inf makes the sum non-finite
    return bool(np.isfinite(array).all())  # the sum may merely have overflowed


class _Connection:
    """Per-connection state, touched only by its own thread (counters are read by stats())."""

    def __init__(self, sock: socket.socket, peer: Any) -> None:
        self.sock = sock
        self.peer = peer
        self.worker_id: int | None = None
        self.thread: threading.Thread | None = None
        self.received = 0
        self.sent = 0
        self._payload: np.ndarray | None = None
        self._snapshot: list[np.ndarray] | None = None

    def recv_into(self, view: memoryview) -> int:
        n = self.sock.recv_into(view)
        self.received += n
        return n

    def send(self, msg_type: MsgType, meta: dict | None = None, arrays: Sequence = ()) -> None:
        self.sent += protocol.send(self.sock, msg_type, meta, arrays)

    def buffer_for(self, nbytes: int) -> memoryview:
        """A receive buffer reused across frames: commits are applied before the next read."""
        if self._payload is None or len(self._payload) < nbytes:
            self._payload = np.empty(nbytes, np.uint8)
        return memoryview(self._payload)

    def snapshot_of(self, center: list[np.ndarray]) -> list[np.ndarray]:
        """Copies `center` into this connection's reusable send buffer (caller holds the lock)."""
        if self._snapshot is None:
            self._snapshot = [np.empty_like(c) for c in center]
        for dst, src in zip(self._snapshot, center):
            np.copyto(dst, src)
        return self._snapshot


class ParameterServer:
    """Serves the center weights to authenticated workers over TCP, from background threads.

    Async mode (default): each commit is applied at once through `rule`, under the lock.
    Round mode (`round_rule` given): commits of one round wait until every live worker of
    ids 0..num_workers-1 has committed, then `round_rule` is applied once.

    Args:
        weights: Initial center; copied into preallocated arrays.
        rule: `rule(center, arrays, staleness)` mutating `center` in place; default adds.
        host: Address to bind; one the executors can reach.
        port: Port to bind; 0 picks a free one.
        secret: Shared HMAC key; random 32 bytes when None.
        on_report: Called from a server thread (serialized) with each progress report dict.
        reject_nonfinite: Refuse commits holding NaN or Inf.
        round_rule: `round_rule(center, commits)`; enables round (synchronous) mode, in
            which `rule` is unused.
        num_workers: Size of the round set; required with `round_rule`.
        round_timeout: Seconds a round may wait for missing workers before the server fails.

    Raises:
        ValueError: For invalid arguments (named in the message).
        TypeError: For weights with a non-numeric dtype or a non-bytes secret.
    """

    def __init__(
        self,
        weights: Sequence[np.ndarray],
        rule: ServerRule | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        secret: bytes | None = None,
        on_report: Callable[[dict], None] | None = None,
        reject_nonfinite: bool = True,
        round_rule: RoundRule | None = None,
        num_workers: int | None = None,
        round_timeout: float = 600.0,
    ) -> None:
        if isinstance(weights, np.ndarray) or not isinstance(weights, Sequence) or not weights:
            raise ValueError(
                "Expected `weights` to be a non-empty list of arrays. "
                f"Received: weights of type {type(weights).__name__}"
            )
        if secret is not None and (not isinstance(secret, bytes) or not secret):
            raise TypeError(f"Expected `secret` to be non-empty bytes. Received: secret={secret!r}")
        if type(port) is not int or not 0 <= port <= 65535:
            raise ValueError(f"Expected `port` to be an int in [0, 65535]. Received: port={port!r}")
        if round_rule is not None and (type(num_workers) is not int or num_workers < 1):
            raise ValueError(
                "Expected `num_workers` to be a positive int when `round_rule` is given. "
                f"Received: num_workers={num_workers!r}"
            )
        if not round_timeout > 0:
            raise ValueError(
                "Expected `round_timeout` to be positive. "
                f"Received: round_timeout={round_timeout!r}"
            )
        self._center = [
            np.array(protocol.wire_array(w, f"weights[{i}]"), copy=True)
            for i, w in enumerate(weights)
        ]
        self._specs = protocol.array_specs(self._center)
        n = len(self._center)
        budget = Limits.for_specs([(c.dtype.str, c.shape) for c in self._center], itemsize=8)
        # Room for a commit with the wrong dtype or extra arrays, so it is refused by name.
        self._limits = Limits(budget.max_metadata, budget.max_payload, 2 * n + 16)
        self._rule = rule or add_rule
        self._round_rule = round_rule
        self._num_workers = num_workers
        self._round_timeout = float(round_timeout)
        self._host = host
        self._port = port
        self._secret = secret if secret is not None else os.urandom(32)
        self._on_report = on_report
        self._reject_nonfinite = reject_nonfinite

        # Model state: guarded by _lock (_cond wraps the same lock).
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._clock = 0
        self._num_updates = 0
        self._staleness_sum = 0
        self._staleness_count = 0
        self._staleness_max = 0
        self._rejected = 0
        self._stop_requested = False
        self._epoch = 0
        self._failure: Exception | None = None
        live = set(range(num_workers)) if round_rule is not None else set()
        self._live: set[int] = live  # round mode: workers expected in every round
        self._attached: set[int] = set()  # round mode: worker ids with an open connection
        self._pending: dict[int, list[np.ndarray]] = {}  # round mode: this round's commits
        self._round_deadline = 0.0

        # Lifecycle: guarded by _state_lock.
        self._state_lock = threading.Lock()
        self._report_lock = threading.Lock()
        self._stopping = False
        self._listener: socket.socket | None = None
        self._address: Address | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._accept_thread: threading.Thread | None = None
        self._connections: set[_Connection] = set()
        self._threads: list[threading.Thread] = []
        self._closed_received = 0
        self._closed_sent = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> ParameterServer:
        """Binds, listens and starts the accept thread; a no-op if already started.

        Returns:
            self.

        Raises:
            RuntimeError: If the server was stopped (a server is not restartable).
            OSError: If the address cannot be bound.
        """
        with self._state_lock:
            if self._stopping:
                raise RuntimeError("ParameterServer was stopped; create a new one")
            if self._listener is not None:
                return self
            family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
            listener = socket.create_server((self._host, self._port), family=family, backlog=128)
            listener.setblocking(False)
            self._listener = listener
            self._address = listener.getsockname()[:2]
            self._wake = socket.socketpair()
            self._accept_thread = threading.Thread(
                target=self._accept_loop, name=f"distkeras-ps-accept-{self.address[1]}"
            )
            self._accept_thread.daemon = True
            self._accept_thread.start()
        logger.info("parameter server listening on %s:%d", *self.address)
        return self

    def stop(self) -> None:
        """Closes the listener and every connection, joins all threads; safe to call twice."""
        with self._state_lock:
            if self._stopping:
                return
            self._stopping = True
        with self._cond:
            self._cond.notify_all()  # round waiters give up
        if self._wake is not None:
            self._wake[1].send(b"x")
        if self._accept_thread is not None:
            self._accept_thread.join()
        for sock in (self._listener, *(self._wake or ())):
            if sock is not None:
                sock.close()
        with self._state_lock:  # no new connection can appear: the accept thread is gone
            connections = list(self._connections)
            threads = list(self._threads)
        for conn in connections:
            _shutdown(conn.sock)
        for thread in threads:
            thread.join(JOIN_TIMEOUT)
            if thread.is_alive():
                logger.warning(
                    "server thread %s did not finish within %ss", thread.name, JOIN_TIMEOUT
                )
        logger.info("parameter server stopped after %d updates", self.num_updates)

    def __enter__(self) -> ParameterServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ driver API

    @property
    def address(self) -> Address:
        """(host, port) actually bound."""
        if self._address is None:
            raise RuntimeError("ParameterServer is not started; call start() first")
        return self._address

    @property
    def secret(self) -> bytes:
        """The shared HMAC key clients must know."""
        return self._secret

    @property
    def num_updates(self) -> int:
        """Commits applied (round mode: commits of completed rounds)."""
        with self._lock:
            return self._num_updates

    @property
    def clock(self) -> int:
        """+1 per applied commit (async) or per completed round (round mode)."""
        with self._lock:
            return self._clock

    @property
    def failure(self) -> Exception | None:
        """None, or the fatal server-side condition (round timeout, failing rule)."""
        with self._lock:
            return self._failure

    def get_weights(self) -> list[np.ndarray]:
        """Returns a consistent copy of the center."""
        with self._lock:
            return [c.copy() for c in self._center]

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        """Replaces the center's values.

        Raises:
            ValueError: If the number, shapes or dtypes differ from the center's.
        """
        arrays = [np.asarray(w) for w in weights]
        if len(arrays) != len(self._center):
            raise ValueError(
                f"Expected {len(self._center)} arrays in `weights`. Received: {len(arrays)}"
            )
        for i, (a, c) in enumerate(zip(arrays, self._center)):
            if a.shape != c.shape or a.dtype != c.dtype:
                raise ValueError(
                    f"Expected weights[{i}] with shape {c.shape} and dtype {c.dtype}. "
                    f"Received: shape={a.shape}, dtype={a.dtype}"
                )
        with self._lock:
            for a, c in zip(arrays, self._center):
                np.copyto(c, a)

    def set_epoch(self, epoch: int) -> None:
        """Records the epochs the driver has completed; every later WEIGHTS reply carries it,
        so that a worker of a retried stage resumes at that epoch instead of the first.
        """
        with self._lock:
            self._epoch = int(epoch)

    def request_stop(self) -> None:
        """Makes every later reply to a pull or commit carry stop=True."""
        with self._lock:
            self._stop_requested = True

    def stats(self) -> dict[str, Any]:
        """Returns counters: updates, clock, staleness, traffic, refusals, open connections."""
        with self._state_lock:
            received = self._closed_received + sum(c.received for c in self._connections)
            sent = self._closed_sent + sum(c.sent for c in self._connections)
            connections = len(self._connections)
        with self._lock:
            count = self._staleness_count
            return {
                "num_updates": self._num_updates,
                "clock": self._clock,
                "mean_staleness": self._staleness_sum / count if count else 0.0,
                "max_staleness": self._staleness_max,
                "bytes_received": received,
                "bytes_sent": sent,
                "rejected": self._rejected,
                "connections": connections,
            }

    # ------------------------------------------------------------------ connections

    def _accept_loop(self) -> None:
        assert self._listener is not None and self._wake is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake[0], selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is self._wake[0]:
                        return
                    try:
                        sock, peer = self._listener.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as exc:
                        logger.warning("accept failed: %s", exc)
                        continue
                    self._spawn(sock, peer)

    def _spawn(self, sock: socket.socket, peer: Any) -> None:
        _configure(sock)
        sock.settimeout(HANDSHAKE_TIMEOUT)
        conn = _Connection(sock, peer)
        with self._state_lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            conn.thread = threading.Thread(
                target=self._serve, args=(conn,), name=f"distkeras-ps-conn-{peer[1]}", daemon=True
            )
            self._connections.add(conn)
            self._threads.append(conn.thread)
        conn.thread.start()

    def _serve(self, conn: _Connection) -> None:
        """Runs one connection: handshake, then request/reply until goodbye or error."""
        try:
            self._handshake(conn)
            self._session(conn)
        except PeerClosed:
            logger.debug("peer %s closed the connection", conn.peer)
        except ProtocolError as exc:  # includes AuthenticationError
            self._count_rejected()
            logger.warning("refused peer %s: %s", conn.peer, exc)
            self._refuse(conn, exc)
        except OSError as exc:  # timeouts, resets, and our own shutdown in stop()
            level = logging.DEBUG if self._stopping else logging.INFO
            logger.log(level, "connection to %s lost: %s", conn.peer, exc)
        finally:
            if conn.worker_id is not None and self._round_rule is not None:
                with self._cond:
                    self._attached.discard(conn.worker_id)
                self._depart(conn.worker_id)
            conn.sock.close()
            with self._state_lock:
                self._connections.discard(conn)
                self._closed_received += conn.received
                self._closed_sent += conn.sent

    def _handshake(self, conn: _Connection) -> None:
        nonce = protocol.new_nonce()
        conn.send(MsgType.CHALLENGE, {"nonce": nonce})
        msg, _ = protocol.read_frame(conn.recv_into, protocol.HANDSHAKE_LIMITS)
        if msg.type is not MsgType.RESPONSE:
            raise ProtocolError(f"expected RESPONSE during the handshake, got {msg.type.name}")
        expected = protocol.client_digest(self._secret, nonce)
        protocol.verify_digest(expected, msg.meta["digest"], "client")
        worker_id = msg.meta["worker_id"]
        with self._cond:
            if self._round_rule is not None:
                self._check_round_member(worker_id)
                self._attached.add(worker_id)
            conn.worker_id = worker_id
            clock = self._clock
        welcome = {
            "digest": protocol.server_digest(self._secret, msg.meta["nonce"]),
            "clock": clock,
            "center": self._specs,
            "round_mode": self._round_rule is not None,
            "round_timeout": self._round_timeout,
        }
        conn.send(MsgType.WELCOME, welcome)
        conn.sock.settimeout(None)  # workers may compute for long between requests
        logger.debug("worker %d connected from %s", worker_id, conn.peer)

    def _check_round_member(self, worker_id: int) -> None:
        assert self._num_workers is not None
        if worker_id >= self._num_workers:
            raise ProtocolError(
                f"worker id {worker_id} is outside the round set 0..{self._num_workers - 1}"
            )
        if worker_id not in self._live:
            raise ProtocolError(f"worker {worker_id} has left the round set and cannot rejoin")
        if worker_id in self._attached:
            raise ProtocolError(f"worker {worker_id} is already connected")

    def _session(self, conn: _Connection) -> None:
        validate = functools.partial(self._validate, conn)
        while True:
            try:
                msg, _ = protocol.read_frame(
                    conn.recv_into, self._limits, validate, conn.buffer_for
                )
                if msg.type is MsgType.GOODBYE:
                    logger.debug("worker %s said goodbye", conn.worker_id)
                    return
                reply = self._dispatch(conn, msg)
            except MessageRejected as exc:
                self._count_rejected()
                logger.warning("refused a message from worker %s: %s", conn.worker_id, exc)
                conn.send(MsgType.ERROR, {"error": str(exc)})
                continue
            conn.send(*reply)

    def _refuse(self, conn: _Connection, exc: ProtocolError) -> None:
        """Sends an error, then drains the peer briefly so that it can read it before the close."""
        meta = {"error": str(exc)}
        if isinstance(exc, AuthenticationError):
            meta["kind"] = "auth"
        try:
            conn.send(MsgType.ERROR, meta)
            conn.sock.shutdown(socket.SHUT_WR)
            conn.sock.settimeout(LINGER_TIMEOUT)
            scratch = memoryview(bytearray(1 << 16))
            drained = 0
            while drained < LINGER_BYTES and not self._stopping:
                n = conn.sock.recv_into(scratch)
                if not n:
                    break
                drained += n
        except OSError as err:
            logger.debug("could not deliver the error to %s: %s", conn.peer, err)

    def _count_rejected(self) -> None:
        with self._lock:
            self._rejected += 1

    # ------------------------------------------------------------------ messages

    def _validate(self, conn: _Connection, msg_type: MsgType, meta: dict) -> None:
        """Checks a frame's metadata before its payload is read (a refusal drains the payload)."""
        if msg_type not in _SESSION_TYPES:
            raise ProtocolError(f"{msg_type.name} is not a request a client may send")
        if msg_type not in (MsgType.COMMIT, MsgType.COMMIT_PULL):
            return
        if meta["worker_id"] != conn.worker_id:
            raise ProtocolError(
                f"commit names worker {meta['worker_id']} on the connection of "
                f"worker {conn.worker_id}"
            )
        specs = meta["arrays"]
        if len(specs) != len(self._specs):
            raise ProtocolError(
                f"commit has {len(specs)} arrays, expected {len(self._specs)} like the center"
            )
        for i, (got, want) in enumerate(zip(specs, self._specs)):
            if got["shape"] != want["shape"]:
                raise ProtocolError(
                    f"commit array {i} has shape {got['shape']}, expected {want['shape']}"
                )
            if got["dtype"] != want["dtype"]:
                raise ProtocolError(
                    f"commit array {i} has dtype {got['dtype']}, expected {want['dtype']}"
                )

    def _dispatch(self, conn: _Connection, msg: Message) -> tuple[MsgType, dict, list]:
        if msg.type is MsgType.PULL:
            with self._lock:
                self._raise_if_failed()
                return self._weights_reply(conn)
        if msg.type in (MsgType.COMMIT, MsgType.COMMIT_PULL):
            if self._reject_nonfinite:
                for i, array in enumerate(msg.arrays):
                    if not _all_finite(array):
                        raise MessageRejected(
                            f"commit array {i} contains NaN or Inf; the center was left untouched"
                        )
            commit = self._commit_round if self._round_rule is not None else self._commit_async
            return commit(conn, msg, msg.type is MsgType.COMMIT_PULL)
        if msg.type is MsgType.REPORT:
            self._report(conn, msg.meta["fields"])
        elif msg.type is MsgType.LEAVE:
            self._depart(conn.worker_id)
        with self._lock:
            return MsgType.ACK, {"clock": self._clock, "stop": self._stop_requested}, []

    def _weights_reply(self, conn: _Connection) -> tuple[MsgType, dict, list]:
        """WEIGHTS reply with a snapshot of the center (caller holds the lock)."""
        meta = {"clock": self._clock, "stop": self._stop_requested, "epoch": self._epoch}
        return MsgType.WEIGHTS, meta, conn.snapshot_of(self._center)

    def _reply_after_commit(self, conn: _Connection, pull: bool) -> tuple[MsgType, dict, list]:
        if pull:
            return self._weights_reply(conn)
        return MsgType.ACK, {"clock": self._clock, "stop": self._stop_requested}, []

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise MessageRejected(f"parameter server failed: {self._failure}")
        if self._stopping:
            raise MessageRejected("parameter server is stopping")

    def _record_staleness(self, client_clock: int) -> int:
        if client_clock > self._clock:
            raise MessageRejected(
                f"commit clock {client_clock} is ahead of the server clock {self._clock}"
            )
        staleness = self._clock - client_clock
        self._staleness_sum += staleness
        self._staleness_count += 1
        self._staleness_max = max(self._staleness_max, staleness)
        return staleness

    def _fail(self, failure: Exception) -> None:
        """Records a fatal condition and wakes round waiters (caller holds the lock)."""
        if self._failure is None:
            self._failure = failure
            logger.error("parameter server failed: %s", failure)
        self._pending.clear()
        self._cond.notify_all()

    def _commit_async(self, conn: _Connection, msg: Message, pull: bool):
        with self._lock:
            self._raise_if_failed()
            staleness = self._record_staleness(msg.meta["clock"])
            try:
                self._rule(self._center, msg.arrays, staleness)
            except Exception as exc:  # a broken rule may have half-updated the center: fatal
                logger.exception("server rule failed")
                self._fail(DistKerasError(f"server rule raised {exc!r}"))
                raise MessageRejected(f"parameter server failed: {self._failure}") from exc
            self._num_updates += 1
            self._clock += 1
            return self._reply_after_commit(conn, pull)

    def _commit_round(self, conn: _Connection, msg: Message, pull: bool):
        worker_id = conn.worker_id
        with self._cond:
            self._raise_if_failed()
            if worker_id not in self._live:
                raise MessageRejected(f"worker {worker_id} has left the round set")
            if worker_id in self._pending:
                raise MessageRejected(f"worker {worker_id} already committed round {self._clock}")
            self._record_staleness(msg.meta["clock"])
            round_ = self._clock
            if not self._pending:
                self._round_deadline = time.monotonic() + self._round_timeout
            # The arrays view this connection's buffer, which stays untouched while we wait.
            self._pending[worker_id] = msg.arrays
            self._complete_round_if_ready()
            while self._clock == round_ and self._failure is None and not self._stopping:
                remaining = self._round_deadline - time.monotonic()
                if remaining <= 0:
                    missing = sorted(self._live - self._pending.keys())
                    self._fail(
                        DistKerasError(
                            f"round {round_} timed out after {self._round_timeout:g}s "
                            f"waiting for worker(s) {missing}"
                        )
                    )
                    break
                self._cond.wait(remaining)
            if self._clock == round_:
                self._raise_if_failed()
            return self._reply_after_commit(conn, pull)

    def _complete_round_if_ready(self) -> None:
        """Applies the round rule once every live worker has committed (caller holds the lock)."""
        if not self._pending or not self._live <= self._pending.keys():
            return
        commits = [self._pending[w] for w in sorted(self._pending)]
        assert self._round_rule is not None
        try:
            self._round_rule(self._center, commits)
        except Exception as exc:  # a broken rule may have half-updated the center: fatal
            logger.exception("round rule failed")
            self._fail(DistKerasError(f"round rule raised {exc!r}"))
            return
        self._pending.clear()
        self._num_updates += len(commits)
        self._clock += 1
        self._cond.notify_all()

    def _depart(self, worker_id: int | None) -> None:
        """Round mode: removes a worker from the round set; may complete the current round."""
        if self._round_rule is None or worker_id is None:
            return
        with self._cond:
            if worker_id in self._live and worker_id not in self._pending:
                self._live.discard(worker_id)
                logger.info("worker %d left the round set", worker_id)
                self._complete_round_if_ready()

    def _report(self, conn: _Connection, fields: dict) -> None:
        report = dict(fields, worker_id=conn.worker_id)
        if self._on_report is None:
            return
        with self._report_lock:
            try:
                self._on_report(report)
            except Exception as exc:  # the driver's callback failed: tell the worker
                logger.exception("on_report failed")
                raise MessageRejected(f"on_report failed on the driver: {exc!r}") from exc


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError as exc:  # already closed by its thread
        logger.debug("shutdown: %s", exc)


class Client:
    """One worker's connection to a `ParameterServer` (thread-safe, one request at a time).

    Args:
        address: (host, port) of the server.
        secret: The server's HMAC key.
        worker_id: This worker's id (0..num_workers-1 in round mode).
        timeout: Seconds allowed for every socket operation after connecting.
        connect_timeout: Seconds spent retrying the connection, with exponential backoff.

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
    ) -> None:
        if not isinstance(secret, bytes) or not secret:
            raise TypeError(f"Expected `secret` to be non-empty bytes. Received: {type(secret)}")
        if type(worker_id) is not int or not 0 <= worker_id <= protocol.MAX_WORKER_ID:
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
        self._secret = secret
        self._timeout = float(timeout)
        self._lock = threading.Lock()
        self._limits = protocol.CLIENT_HANDSHAKE_LIMITS
        self._commit_timeout = self._timeout
        self._sock: socket.socket | None = self._connect(float(connect_timeout))

    def _connect(self, connect_timeout: float) -> socket.socket:
        deadline = time.monotonic() + connect_timeout
        delay = 0.05
        while True:
            remaining = deadline - time.monotonic()
            try:
                sock = socket.create_connection(
                    self.address, timeout=max(min(self._timeout, remaining), 0.01)
                )
                break
            except OSError as exc:
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
        try:
            _configure(sock)
            sock.settimeout(self._timeout)
            self._handshake(sock)
        except BaseException:
            sock.close()
            raise
        return sock

    def _handshake(self, sock: socket.socket) -> None:
        challenge = self._expect(sock, MsgType.CHALLENGE, "the handshake")
        nonce = protocol.new_nonce()
        response = {
            "digest": protocol.client_digest(self._secret, challenge.meta["nonce"]),
            "nonce": nonce,
            "worker_id": self.worker_id,
        }
        protocol.send(sock, MsgType.RESPONSE, response)
        welcome = self._expect(sock, MsgType.WELCOME, "the handshake")
        expected = protocol.server_digest(self._secret, nonce)
        protocol.verify_digest(expected, welcome.meta["digest"], "parameter server")
        self.clock = welcome.meta["clock"]
        self.round_mode = welcome.meta["round_mode"]
        round_timeout = welcome.meta.get("round_timeout", 0.0)
        if type(round_timeout) not in (int, float) or not 0 <= round_timeout < 1e9:
            raise ProtocolError(f"WELCOME has an invalid round_timeout {round_timeout!r}")
        # A round-mode commit waits server-side for the slowest worker, up to round_timeout.
        self._commit_timeout = self._timeout + (round_timeout if self.round_mode else 0.0)
        layout = [(s["dtype"], tuple(s["shape"])) for s in welcome.meta["center"]]
        self._limits = Limits.for_specs(layout)

    def _expect(self, sock: socket.socket, msg_type: MsgType, during: str) -> Message:
        """Reads one reply of type `msg_type`; an ERROR reply raises with the server's text."""
        try:
            msg, _ = protocol.read_frame(sock.recv_into, self._limits)
        except PeerClosed:
            raise ConnectionError("the parameter server closed the connection") from None
        if msg.type is MsgType.ERROR:
            error = msg.meta["error"]
            if msg.meta.get("kind") == "auth":
                raise AuthenticationError(f"parameter server refused the handshake: {error}")
            raise DistKerasError(f"parameter server refused {during}: {error}")
        if msg.type is not msg_type:
            raise ProtocolError(
                f"expected {msg_type.name} in reply to {during}, got {msg.type.name}"
            )
        if msg.meta.get("stop"):
            self.stop_requested = True
        return msg

    def _request(
        self,
        msg_type: MsgType,
        reply_type: MsgType,
        meta: dict | None = None,
        arrays: Sequence[np.ndarray] = (),
        timeout: float | None = None,
    ) -> Message:
        with self._lock:
            sock = self._sock
            if sock is None:
                raise ConnectionError("Client is closed")
            try:
                sock.settimeout(timeout or self._timeout)
                protocol.send(sock, msg_type, meta, arrays)
                return self._expect(sock, reply_type, msg_type.name)
            except DistKerasError as exc:
                if type(exc) is not DistKerasError:  # a protocol error: the stream is unusable
                    self._abort()
                raise
            except OSError:
                self._abort()
                raise

    def _abort(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _wire(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [protocol.wire_array(a, f"arrays[{i}]") for i, a in enumerate(arrays)]

    def pull(self) -> list[np.ndarray]:
        """Returns a snapshot of the center; records its clock in `self.clock` and the epochs
        the driver has completed in `self.epoch`.
        """
        reply = self._request(MsgType.PULL, MsgType.WEIGHTS)
        self.clock = reply.meta["clock"]
        self.epoch = int(reply.meta.get("epoch", 0))
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

    def leave(self) -> None:
        """Round mode: this worker has no more data; removes it from the round set."""
        self._request(MsgType.LEAVE, MsgType.ACK)

    def close(self) -> None:
        """Says goodbye (best effort) and closes the connection; idempotent."""
        with self._lock:
            if self._sock is None:
                return
            try:
                protocol.send(self._sock, MsgType.GOODBYE)
            except OSError as exc:
                logger.debug("goodbye not delivered: %s", exc)
            self._abort()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
