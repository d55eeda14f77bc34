"""ParameterServer: the listener, one thread per connection, and each connection's session.

Sockets, threads, handshakes and the dispatch of requests live here; what a commit does to
the weights lives in `distkeras.ps.center`, the bytes on the wire in `distkeras.ps.wire`.
No model math, nothing about Spark.
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from distkeras.errors import AuthenticationError, ProtocolError
from distkeras.net import WILDCARD_HOSTS, is_loopback, route_address
from distkeras.ps.center import AsyncCenter, Center, Refused, RoundCenter, RoundRule, ServerRule
from distkeras.ps.ratelimit import RateLimitedLog
from distkeras.ps.wire import handshake, schema
from distkeras.ps.wire.framing import MessageRejected, PeerClosed
from distkeras.ps.wire.schema import Address, Limits, Message, MsgType
from distkeras.ps.wire.stream import Stream, configure

logger = logging.getLogger(__name__)

Reply = tuple[MsgType, dict, Sequence[np.ndarray]]
ShardProvider = Callable[[int, int, int], tuple[Sequence[np.ndarray], bool]]

HANDSHAKE_TIMEOUT = 10.0  # seconds from accept an unauthenticated peer has to authenticate
LINGER_TIMEOUT = 1.0  # seconds spent draining a refused peer so that it can read our error
LINGER_BYTES = 256 << 20
JOIN_TIMEOUT = 5.0
MAX_UNAUTHENTICATED = 64  # handshakes in progress; beyond it one is dropped for a new one
MAX_CONNECTIONS = 512
ARRIVAL_HALF_LIFE = 10.0  # seconds over which a source's connections count as recent
MAX_SOURCES = 4096  # sources whose recent connections are remembered
SESSION_TIMEOUT = 600.0  # seconds an authenticated session may take to send its next frame
TAKEOVER_GRACE = 2.0  # seconds a reconnecting worker waits for its old connection to end
BACKOFF = (0.05, 1.0)  # accept back-off when out of descriptors: first and longest wait
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class _Arrivals:
    """Connections per source address, each counting less as it ages (a half-life): the
    sources that connect most are the ones flooding, whose handshakes go first."""

    def __init__(self, half_life: float = ARRIVAL_HALF_LIFE, max_sources: int = MAX_SOURCES):
        self._decay = math.log(2) / half_life
        self._max_sources = max_sources
        self._scores: dict[str, tuple[float, float]] = {}  # source -> (score, as of)

    def add(self, source: str, now: float) -> None:
        """Counts one new connection from `source`."""
        self._scores[source] = (self.score(source, now) + 1.0, now)
        if len(self._scores) > self._max_sources:  # keep the heaviest half
            kept = sorted(self._scores, key=lambda s: self.score(s, now))[len(self._scores) // 2 :]
            self._scores = {s: self._scores[s] for s in kept}

    def score(self, source: str, now: float) -> float:
        """`source`'s recent connections, the older ones counting less."""
        score, then = self._scores.get(source, (0.0, now))
        return score * math.exp(-self._decay * (now - then))


class _Connection:
    """Per-connection state, touched only by its own thread (byte counters read by stats())."""

    def __init__(self, sock: socket.socket, peer: Any) -> None:
        self.stream = Stream(sock)
        self.sock = sock
        self.peer = peer
        self.source = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        self.worker_id: int | None = None
        self.thread: threading.Thread | None = None
        self.accepted = time.monotonic()
        self.authenticated = False
        self.evicted = False
        self._payload: np.ndarray | None = None
        self.pinned: list[np.ndarray] | None = None  # the center version being sent, if any

    def buffer_for(self, nbytes: int) -> memoryview:
        """A receive buffer reused across frames: commits are applied before the next read."""
        if self._payload is None or len(self._payload) < nbytes:
            self._payload = np.empty(nbytes, np.uint8)
        return memoryview(self._payload)

    @property
    def proved(self) -> bool:
        """Whether the peer has started answering the challenge (an idle flood has not)."""
        return self.stream.received > 0


class ParameterServer:
    """Serves the center weights to authenticated workers over TCP, from background threads.

    Async mode (default): each commit is applied at once through `rule`, under the lock.
    Round mode (`round_rule` given): commits of one round wait until every live worker of
    ids 0..num_workers-1 has committed, then `round_rule` is applied once.

    Args:
        weights: Initial center; copied into preallocated arrays.
        rule: `rule(center, arrays, staleness)` mutating `center` in place; default adds.
        host: Address to bind; one the executors can reach. "0.0.0.0" or "::" binds every
            interface, and the workers are given `advertise_host` (or this machine's
            outbound address) to connect to.
        port: Port to bind; 0 picks a free one.
        secret: Shared HMAC key, at least 16 bytes; random 32 bytes when None.
        advertise_host: With a wildcard `host`, the host name or address workers are told
            to connect to (e.g. Spark's `spark.driver.host`).
        encryption: Seal every frame after the handshake (AES-256-GCM under keys agreed by
            X25519 within the handshake; see docs/protocol.md). None (default): on unless
            `host` is a loopback address. False: off, also beyond loopback (the weights then
            travel in clear; frames stay authenticated).
        on_report: Called from a server thread (serialized) with each progress report dict.
        on_watch: Answers an observer's WATCH (see `schema.OBSERVER_ID`): called with its
            metadata, returns the REPORTS metadata and arrays. None: observers are refused.
        shards: `shards(worker_id, chunk, max_bytes) -> (arrays, last)`: the rows a worker
            receives over its connection (SHARD_REQUEST), chunk by chunk; None: no data.
        reject_nonfinite: Refuse a commit (or a round) whose application would leave a NaN
            or Inf in the center; the center is left as it was.
        round_rule: `round_rule(center, commits)`; enables round (synchronous) mode, in
            which `rule` is unused.
        num_workers: Size of the round set; required with `round_rule`.
        round_timeout: Seconds a round may wait for missing workers before the server fails.
        handshake_timeout: Seconds from accept within which a peer must authenticate.
        session_timeout: Seconds an authenticated session may take to send its next frame,
            waiting included; past it the session is closed (a trainer passes what its
            monitor allows a silent worker, so that both agree on a hung worker).
        max_unauthenticated: Handshakes in progress at once; a new connection beyond it
            drops one of the source that connected most (recent connections counting
            more), a peer that has sent nothing before one answering, then the oldest.
            One source holds a quarter of them at most (its own oldest goes first).
        max_connections: Connections at once; beyond it (and with no handshake to drop) a
            new connection is closed at once.
        observer_key: The public key (64 hex digits) the observer must hold (the driver
            following an in-cluster server); None: the observer proves the secret only.

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
        on_watch: Callable[[dict], tuple[dict, Sequence[np.ndarray]]] | None = None,
        reject_nonfinite: bool = True,
        round_rule: RoundRule | None = None,
        num_workers: int | None = None,
        round_timeout: float = 600.0,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        session_timeout: float = SESSION_TIMEOUT,
        max_unauthenticated: int = MAX_UNAUTHENTICATED,
        max_connections: int = MAX_CONNECTIONS,
        advertise_host: str | None = None,
        encryption: bool | None = None,
        shards: ShardProvider | None = None,
        observer_key: str | None = None,
    ) -> None:
        if isinstance(weights, np.ndarray) or not isinstance(weights, Sequence) or not weights:
            raise ValueError(
                "Expected `weights` to be a non-empty list of arrays. "
                f"Received: weights of type {type(weights).__name__}"
            )
        if secret is not None:
            handshake.check_secret(secret)
        if observer_key is not None:
            handshake.check_public_key(observer_key, "observer_key")
        if type(port) is not int or not 0 <= port <= 65535:
            raise ValueError(f"Expected `port` to be an int in [0, 65535]. Received: port={port!r}")
        if round_rule is not None and (type(num_workers) is not int or num_workers < 1):
            raise ValueError(
                "Expected `num_workers` to be a positive int when `round_rule` is given. "
                f"Received: num_workers={num_workers!r}"
            )
        for name, value in (
            ("round_timeout", round_timeout),
            ("handshake_timeout", handshake_timeout),
            ("session_timeout", session_timeout),
        ):
            if not value > 0:
                raise ValueError(f"Expected `{name}` to be positive. Received: {name}={value!r}")
        for name, value in (
            ("max_unauthenticated", max_unauthenticated),
            ("max_connections", max_connections),
        ):
            if type(value) is not int or value < 1:
                raise ValueError(
                    f"Expected `{name}` to be a positive int. Received: {name}={value!r}"
                )
        arrays = [
            np.array(schema.wire_array(w, f"weights[{i}]"), copy=True)
            for i, w in enumerate(weights)
        ]
        self._specs = schema.array_specs(arrays)
        self._shapes = [(a.shape, a.dtype) for a in arrays]
        n = len(arrays)
        budget = Limits.for_specs([(a.dtype.str, a.shape) for a in arrays], itemsize=8)
        # Room for a commit with the wrong dtype or extra arrays, so it is refused by name.
        self._limits = Limits(budget.max_metadata, budget.max_payload, 2 * n + 16)
        self._center: Center = (
            RoundCenter(arrays, round_rule, num_workers, float(round_timeout), reject_nonfinite)
            if round_rule is not None
            else AsyncCenter(arrays, rule, reject_nonfinite)
        )
        self._host = host
        self._advertise_host = advertise_host
        self._encrypted = not is_loopback(host) if encryption is None else bool(encryption)
        self._port = port
        self._secret = secret if secret is not None else os.urandom(32)
        self._static = handshake.KeyShare()  # its public half is what workers pin
        self._observer_key = observer_key
        self._on_report = on_report
        self._on_watch = on_watch
        self._shards = shards
        self._handshake_timeout = float(handshake_timeout)
        self._session_timeout = float(session_timeout)
        self._max_unauthenticated = max_unauthenticated
        self._max_per_source = max(1, max_unauthenticated // 4)
        self._arrivals = _Arrivals()
        self._max_connections = max_connections
        self._accept_log = RateLimitedLog(logger)
        self._refusal_log = RateLimitedLog(logger)  # what unauthenticated peers cause
        self._message_log = RateLimitedLog(logger)  # what authenticated peers' bad messages cause
        # One handler per request type: a new message is a schema entry plus a line here.
        self._handlers: dict[MsgType, Callable[[_Connection, Message], Reply]] = {
            MsgType.PULL: self._on_pull,
            MsgType.COMMIT: self._on_commit,
            MsgType.COMMIT_PULL: self._on_commit,
            MsgType.REPORT: self._on_report_message,
            MsgType.LEAVE: self._on_leave,
            MsgType.WATCH: self._on_watch_message,
            MsgType.SHARD_REQUEST: self._on_shard,
        }

        # Lifecycle: guarded by _state_lock.
        self._state_lock = threading.Lock()
        self._slot_freed = threading.Condition(self._state_lock)
        self._slots: dict[int, _Connection] = {}  # worker id -> its one live connection
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
            if not self._encrypted and not is_loopback(self._host):
                logger.warning(
                    "encryption is off on %s: weights travel in clear (frames stay authenticated)",
                    self._host,
                )
            family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
            dualstack = self._host == "::" and socket.has_dualstack_ipv6()  # IPv4 too
            listener = socket.create_server(
                (self._host, self._port), family=family, backlog=128, dualstack_ipv6=dualstack
            )
            listener.setblocking(False)
            self._listener = listener
            self._address = listener.getsockname()[:2]
            self._wake = socket.socketpair()
            # Made here, not in the thread: the loop must never need a new descriptor.
            selector = selectors.DefaultSelector()
            selector.register(listener, selectors.EVENT_READ)
            selector.register(self._wake[0], selectors.EVENT_READ)
            self._accept_thread = threading.Thread(
                target=self._accept_loop,
                args=(selector,),
                name=f"distkeras-ps-accept-{self.address[1]}",
            )
            self._accept_thread.daemon = True
            self._accept_thread.start()
        if self._host in WILDCARD_HOSTS:
            logger.warning(
                "parameter server listening on all interfaces (%s port %d); workers connect to %s",
                self._host or "0.0.0.0",
                self.address[1],
                self.advertised_address[0],
            )
        else:
            logger.info("parameter server listening on %s:%d", *self.address)
        return self

    def stop(self) -> None:
        """Closes the listener and every connection, joins all threads; safe to call twice."""
        with self._state_lock:
            if self._stopping:
                return
            self._stopping = True
        self._center.shut_down()  # round waiters give up
        with self._slot_freed:
            self._slot_freed.notify_all()  # reconnects waiting for a slot give up
        if self._wake is not None:
            try:
                self._wake[1].send(b"x")
            except OSError as exc:  # the accept loop still sees _stopping at its next wake-up
                logger.debug("could not wake the accept loop: %s", exc)
        if self._accept_thread is not None:
            self._accept_thread.join()
        for sock in (self._listener, *(self._wake or ())):
            if sock is not None:
                sock.close()
        with self._state_lock:  # no new connection can appear: the accept thread is gone
            connections = list(self._connections)
            threads = [t for t in self._threads if t.ident is not None]  # started ones
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
    def advertised_address(self) -> Address:
        """(host, port) workers should connect to: the bound address, or for a server bound
        to every interface, `advertise_host` or this machine's outbound address."""
        host, port = self.address
        if self._host not in WILDCARD_HOSTS:
            return host, port
        return self._advertise_host or route_address(), port

    @property
    def encrypted(self) -> bool:
        """Whether sessions are sealed (clients should then `require_encryption`)."""
        return self._encrypted

    @property
    def public_key(self) -> str:
        """The server's static public key (64 hex digits): pass it to clients as `server_key`
        so that they refuse any other server, even one that knows the secret."""
        return self._static.nonce

    @property
    def secret(self) -> bytes:
        """The shared HMAC key clients must know."""
        return self._secret

    @property
    def num_updates(self) -> int:
        """Commits applied (round mode: commits of completed rounds)."""
        return self._center.num_updates

    @property
    def clock(self) -> int:
        """+1 per applied commit (async) or per completed round (round mode)."""
        return self._center.clock

    @property
    def failure(self) -> Exception | None:
        """None, or the fatal server-side condition (round timeout, failing rule)."""
        return self._center.failure

    def waiting(self) -> set[int]:
        """Workers whose commit waits in a round for the others (none in async mode)."""
        return self._center.waiting()

    def get_weights(self) -> list[np.ndarray]:
        """Returns a consistent copy of the center."""
        return self._center.get_weights()

    def snapshot(self) -> tuple[list[np.ndarray], int]:
        """Returns a consistent copy of the center and the clock it is at (a checkpoint's)."""
        return self._center.snapshot()

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        """Replaces the center's values.

        Raises:
            ValueError: If the number, shapes or dtypes differ from the center's.
        """
        arrays = [np.asarray(w) for w in weights]
        if len(arrays) != len(self._shapes):
            raise ValueError(
                f"Expected {len(self._shapes)} arrays in `weights`. Received: {len(arrays)}"
            )
        for i, (a, (shape, dtype)) in enumerate(zip(arrays, self._shapes)):
            if a.shape != shape or a.dtype != dtype:
                raise ValueError(
                    f"Expected weights[{i}] with shape {shape} and dtype {dtype}. "
                    f"Received: shape={a.shape}, dtype={a.dtype}"
                )
        self._center.set_weights(arrays)

    def set_epoch(self, epoch: int) -> None:
        """Records the epochs the driver has completed; every later reply carries it,
        so that a worker of a retried stage resumes at that epoch instead of the first.
        """
        self.publish(epoch=int(epoch))

    def publish(self, **fields: Any) -> None:
        """Adds JSON-able `fields` to the metadata of every later reply to a worker
        (`Client.published` holds the latest values on the worker side).
        """
        self._center.publish(**fields)

    def request_stop(self) -> None:
        """Makes every later reply to a pull or commit carry stop=True."""
        self._center.request_stop()

    def stats(self) -> dict[str, Any]:
        """Returns counters: updates, clock, staleness, traffic, refusals, open connections."""
        with self._state_lock:
            streams = [c.stream for c in self._connections]
            pending = sum(not c.authenticated for c in self._connections)
            received = self._closed_received + sum(s.received for s in streams)
            sent = self._closed_sent + sum(s.sent for s in streams)
        stats = self._center.stats()
        return {
            **stats,
            "bytes_received": received,
            "bytes_sent": sent,
            "rejected": stats.pop("rejected"),
            "connections": len(streams),
            "unauthenticated": pending,
        }

    # ------------------------------------------------------------------ connections

    def _accept_loop(self, selector: selectors.BaseSelector) -> None:
        assert self._listener is not None and self._wake is not None
        backoff = BACKOFF[0]
        paused = False  # out of descriptors: the listener stays readable, so stop watching it
        with selector:
            while True:
                events = selector.select(backoff if paused else None)
                if any(key.fileobj is self._wake[0] for key, _ in events):
                    return
                if paused:  # the back-off has passed: try again
                    selector.register(self._listener, selectors.EVENT_READ)
                    paused = False
                    continue
                try:
                    sock, peer = self._listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    if exc.errno in _OUT_OF_DESCRIPTORS:
                        self._accept_log.warning("accept failed: %s; backing off", exc)
                        selector.unregister(self._listener)
                        paused = True
                        backoff = min(2 * backoff, BACKOFF[1])
                    else:
                        self._accept_log.warning("accept failed: %s", exc)
                    continue
                backoff = BACKOFF[0]
                self._spawn(sock, peer)

    def _spawn(self, sock: socket.socket, peer: Any) -> None:
        """Starts a thread for a new connection, within the caps; refuses it otherwise."""
        conn = _Connection(sock, peer)
        with self._state_lock:
            self._arrivals.add(conn.source, conn.accepted)
            self._threads = [t for t in self._threads if t.is_alive()]
            live = [c for c in self._connections if not c.evicted]
            pending = [c for c in live if not c.authenticated]
            if len(live) >= self._max_connections and not pending:
                self._refusal_log.warning(
                    "refused a connection from %s: %d connections open", peer, len(live)
                )
                sock.close()
                return
            victim = self._victim(conn, live, pending)
            if victim is not None:
                victim.evicted = True
                _shutdown(victim.sock)  # its thread ends and cleans up
                self._refusal_log.warning(
                    "dropped an unauthenticated connection from %s for a new one from %s",
                    victim.peer,
                    peer,
                )
            conn.thread = threading.Thread(
                target=self._serve, args=(conn,), name=f"distkeras-ps-conn-{peer[1]}", daemon=True
            )
            self._connections.add(conn)
            self._threads.append(conn.thread)
        try:
            configure(sock)
            sock.settimeout(self._handshake_timeout)
            conn.thread.start()
        except (RuntimeError, OSError) as exc:  # e.g. "can't start new thread"
            self._refusal_log.warning("refused a connection from %s: %s", peer, exc)
            with self._state_lock:
                self._connections.discard(conn)
                self._threads.remove(conn.thread)
            sock.close()

    def _victim(
        self, conn: _Connection, live: list[_Connection], pending: list[_Connection]
    ) -> _Connection | None:
        """The handshake to drop for `conn`, if a cap is reached (lock held): from `conn`'s
        own source when it holds its share, else from the source connecting most; within
        it, a peer that has sent nothing before one mid-handshake, then the oldest."""
        mine = [c for c in pending if c.source == conn.source]
        if len(mine) >= self._max_per_source:
            candidates = mine
        elif pending and (
            len(pending) >= self._max_unauthenticated or len(live) >= self._max_connections
        ):
            scores = {c.source: self._arrivals.score(c.source, conn.accepted) for c in pending}
            heaviest = max(scores.values())
            candidates = [c for c in pending if scores[c.source] == heaviest]
        else:
            return None
        return min(candidates, key=lambda c: (c.proved, c.accepted))

    def _serve(self, conn: _Connection) -> None:
        """Runs one connection: handshake, then request/reply until goodbye or error."""
        try:
            conn.stream.deadline = conn.accepted + self._handshake_timeout
            conn.worker_id = handshake.serve_handshake(
                conn.stream,
                self._secret,
                functools.partial(self._admit, conn),
                self._encrypted,
                self._static,
                self._observer_key,
            )
            with self._state_lock:
                conn.authenticated = True
            logger.debug("worker %d connected from %s", conn.worker_id, conn.peer)
            self._session(conn)
        except PeerClosed:
            logger.debug("peer %s closed the connection", conn.peer)
        except ProtocolError as exc:  # includes AuthenticationError
            self._center.count_rejected()
            self._refusal_log.warning("refused peer %s: %s", conn.peer, exc)
            self._refuse(conn, exc)
        except OSError as exc:  # timeouts, resets, and our own shutdown in stop()
            if self._stopping:
                logger.debug("connection to %s lost: %s", conn.peer, exc)
            else:
                self._refusal_log.info("connection to %s lost: %s", conn.peer, exc)
        finally:
            if conn.worker_id is not None:
                self._center.detach(conn.worker_id)
            conn.sock.close()
            with self._state_lock:
                self._connections.discard(conn)
                self._closed_received += conn.stream.received
                self._closed_sent += conn.stream.sent
                if conn.worker_id is not None and self._slots.get(conn.worker_id) is conn:
                    del self._slots[conn.worker_id]
                    self._slot_freed.notify_all()

    def _admit(self, conn: _Connection, worker_id: int) -> dict[str, Any]:
        """WELCOME fields for an authenticated worker, or a refusal naming the reason."""
        if worker_id == schema.OBSERVER_ID:
            if self._on_watch is None:
                raise ProtocolError("this parameter server takes no observer")
            status = self._center.status()
            return {"clock": status["clock"], "round_mode": False, "center": self._specs}
        self._take_slot(conn, worker_id)
        try:
            fields = self._center.admit(worker_id)
        except Refused as exc:
            with self._state_lock:
                del self._slots[worker_id]
                self._slot_freed.notify_all()
            raise ProtocolError(str(exc)) from None
        conn.worker_id = worker_id  # admitted: detach it and free its slot when it ends
        return {**fields, "center": self._specs}

    def _take_slot(self, conn: _Connection, worker_id: int) -> None:
        """Makes `conn` the one live connection of `worker_id`. A task retry reconnects
        while the old connection of its dead process is still closing: wait for that end
        a moment, and refuse only a worker id whose connection stays alive.

        Raises:
            ProtocolError: Another live connection holds the worker id.
        """
        with self._slot_freed:
            if not self._slot_freed.wait_for(
                lambda: worker_id not in self._slots or self._stopping, TAKEOVER_GRACE
            ):
                held = self._slots[worker_id]
                self._message_log.warning(
                    "refused a second connection as worker %d from %s: %s holds it",
                    worker_id,
                    conn.peer,
                    held.peer,
                )
                raise ProtocolError(
                    f"worker {worker_id} is already connected (from {held.peer[0]})"
                )
            self._slots[worker_id] = conn

    def _session(self, conn: _Connection) -> None:
        validate = functools.partial(self._validate, conn)
        while True:
            try:
                # The whole next frame, waiting included: a silent worker, or a frame cut
                # off by a stalled link, frees this thread.
                conn.stream.deadline = time.monotonic() + self._session_timeout
                msg = conn.stream.read(self._limits, validate, conn.buffer_for)
                conn.stream.deadline = None
                conn.sock.settimeout(self._session_timeout)  # the reply's sends
                if msg.type is MsgType.GOODBYE:  # an authenticated close: the worker is done
                    logger.debug("worker %s said goodbye", conn.worker_id)
                    self._center.depart(conn.worker_id)
                    return
                reply = self._handlers[msg.type](conn, msg)
            except (MessageRejected, Refused) as exc:
                self._center.count_rejected()
                self._message_log.warning(
                    "refused a message from worker %s: %s", conn.worker_id, exc
                )
                conn.stream.send(MsgType.ERROR, {"error": str(exc)})
                continue
            try:
                conn.stream.send(*reply)
            finally:
                self._unpin(conn)

    def _unpin(self, conn: _Connection) -> None:
        if conn.pinned is not None:
            self._center.release(conn.pinned)
            conn.pinned = None

    def _refuse(self, conn: _Connection, exc: ProtocolError) -> None:
        """Sends an error, then drains the peer briefly so that it can read it before the close."""
        meta = {"error": str(exc)}
        if isinstance(exc, AuthenticationError):
            meta["kind"] = "auth"
        try:
            conn.sock.settimeout(LINGER_TIMEOUT)
            conn.stream.send(MsgType.ERROR, meta)
            conn.sock.shutdown(socket.SHUT_WR)
            conn.stream.deadline = time.monotonic() + LINGER_TIMEOUT  # trickling changes nothing
            scratch = memoryview(bytearray(1 << 16))
            drained = 0
            while drained < LINGER_BYTES and not self._stopping and not conn.evicted:
                n = conn.stream.recv_into(scratch)
                if not n:
                    break
                drained += n
        except OSError as err:
            logger.debug("could not deliver the error to %s: %s", conn.peer, err)

    # ------------------------------------------------------------------ messages

    def _validate(self, conn: _Connection, msg_type: MsgType, meta: dict) -> None:
        """Checks a frame's metadata before its payload is read (a refusal drains the payload)."""
        if msg_type not in self._handlers and msg_type is not MsgType.GOODBYE:
            raise ProtocolError(f"{msg_type.name} is not a request a client may send")
        observer = conn.worker_id == schema.OBSERVER_ID
        if observer != (msg_type is MsgType.WATCH) and msg_type not in _ANYONE:
            raise ProtocolError(f"{msg_type.name} is not a request this client may send")
        if msg_type is MsgType.REPORT:
            schema.check_report(meta["fields"])
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
            for key in ("shape", "dtype"):
                if got[key] != want[key]:
                    raise ProtocolError(
                        f"commit array {i} has {key} {got[key]}, expected {want[key]}"
                    )

    def _on_pull(self, conn: _Connection, msg: Message) -> Reply:
        meta, conn.pinned = self._center.pull()
        return MsgType.WEIGHTS, meta, conn.pinned

    def _on_commit(self, conn: _Connection, msg: Message) -> Reply:
        pull = msg.type is MsgType.COMMIT_PULL
        meta, conn.pinned = self._center.commit(conn.worker_id, msg.meta["clock"], msg.arrays, pull)
        if pull:
            return MsgType.WEIGHTS, meta, conn.pinned
        return MsgType.ACK, meta, ()

    def _on_report_message(self, conn: _Connection, msg: Message) -> Reply:
        if self._on_report is not None:
            report = dict(msg.meta["fields"], worker_id=conn.worker_id)
            with self._report_lock:
                try:
                    self._on_report(report)
                except Exception as exc:  # the driver's callback failed: tell the worker
                    logger.exception("on_report failed")
                    raise Refused(f"on_report failed on the driver: {exc!r}") from exc
        return MsgType.ACK, self._center.status(), ()

    def _on_watch_message(self, conn: _Connection, msg: Message) -> Reply:
        meta, arrays = self._on_watch(msg.meta)
        return MsgType.REPORTS, {**self._center.status(), **meta}, arrays

    def _on_leave(self, conn: _Connection, msg: Message) -> Reply:
        self._center.depart(conn.worker_id)
        return MsgType.ACK, self._center.status(), ()

    def _on_shard(self, conn: _Connection, msg: Message) -> Reply:
        if self._shards is None:
            raise Refused("this run sends no data over the parameter server")
        try:
            arrays, last = self._shards(conn.worker_id, msg.meta["chunk"], msg.meta["max_bytes"])
        except ValueError as exc:
            raise Refused(str(exc)) from None
        wire = [schema.wire_array(a, f"shard[{i}]") for i, a in enumerate(arrays)]
        return MsgType.SHARD, {"last": bool(last)}, wire


_ANYONE = (MsgType.PULL, MsgType.GOODBYE)  # workers and the observer alike


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError as exc:  # already closed by its thread
        logger.debug("shutdown: %s", exc)
