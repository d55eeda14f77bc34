"""The parameter server under floods, stalled links and misbehaving workers (loopback only).

Honest workers `delay` seconds away (a proxy holding the server's challenge back) connect and
train through a flood of idle connections from one or many addresses; a burst of junk writes
a bounded number of log lines; a stalled or silent session frees its thread by the session
deadline; one live connection per worker id, while a task retry's reconnect gets in.
"""

import logging
import socket
import threading
import time

import numpy as np
import pytest

from distkeras.errors import DistKerasError
from distkeras.parameter_server import Client, ParameterServer
from distkeras.ps import server as server_module
from distkeras.ps.wire import handshake
from distkeras.ps.wire.schema import MsgType
from distkeras.ps.wire.stream import Stream

from .wire_helpers import frame_bytes, shut_down

SHAPES = [(4, 3), (5,)]
DEADLINE = 20.0  # seconds any thread or wait of these tests may take
FLOOD_RATE = 300.0  # connections per second: above the 143/s that locked workers out before
FLOOD_SOURCES = 16  # loopback addresses of the many-sources flood


def zeros():
    return [np.zeros(s, np.float32) for s in SHAPES]


def conn_threads():
    return [t for t in threading.enumerate() if t.name.startswith("distkeras-ps-conn")]


class DelayProxy:
    """Forwards each connection to `target` from 127.0.0.1, holding the server's first bytes
    (its challenge) back for `delay` seconds: a worker with that much extra round trip.

    The hold is the simulated network distance, not a synchronisation.
    """

    def __init__(self, target, delay):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(DEADLINE)
        self.address = self.listener.getsockname()
        self.target, self.delay = target, delay
        self.accepted = 0  # connections made through it: one per worker that got in at once
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.closed.is_set():  # close()'s wake-up call
                client.close()
                return
            self.accepted += 1
            server = socket.create_connection(
                self.target, timeout=DEADLINE, source_address=("127.0.0.1", 0)
            )
            for source, sink, hold in ((client, server, 0.0), (server, client, self.delay)):
                threading.Thread(target=_pump, args=(source, sink, hold), daemon=True).start()

    def close(self):
        self.closed.set()
        socket.create_connection(self.address, timeout=5).close()  # wakes the accept
        self.thread.join(DEADLINE)
        self.listener.close()


def _pump(source, sink, hold):
    source.settimeout(DEADLINE)
    try:
        while chunk := source.recv(1 << 16):
            if hold:
                time.sleep(hold)
                hold = 0.0
            sink.sendall(chunk)
    except OSError:
        pass
    shut_down(source, sink)


class Flood:
    """Opens idle connections to `target` at `rate` per second from `sources` in turn,
    keeping the latest 256 open, until `stop`."""

    def __init__(self, target, sources, rate=FLOOD_RATE):
        self.target, self.sources, self.rate = target, sources, rate
        self.opened = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        open_socks = []
        started = time.monotonic()
        try:
            while not self.stopped.is_set():
                source = self.sources[self.opened % len(self.sources)]
                try:
                    sock = socket.create_connection(
                        self.target, timeout=1, source_address=(source, 0)
                    )
                except OSError:
                    continue
                open_socks.append(sock)
                self.opened += 1
                if len(open_socks) > 256:
                    open_socks.pop(0).close()
                ahead = self.opened / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    self.stopped.wait(ahead)
        finally:
            for sock in open_socks:
                sock.close()

    def stop(self):
        self.stopped.set()
        self.thread.join(DEADLINE)


@pytest.mark.parametrize("sources", [1, FLOOD_SOURCES], ids=["one-source", "many-sources"])
def test_a_flood_does_not_lock_out_honest_workers_up_to_1s_away(sources):
    """At 300 idle connections per second (64 handshakes at most: each would live 0.2 s if
    the oldest went first), workers 0.3 s and 1 s away still get in and train."""
    flood_sources = [f"127.0.0.{2 + i}" for i in range(sources)]
    with ParameterServer(zeros()) as ps:
        proxies = {delay: DelayProxy(ps.address, delay) for delay in (0.3, 1.0)}
        flood = Flood(ps.address, flood_sources)
        results, errors = {}, {}

        def work(worker_id, delay):
            started = time.monotonic()
            try:
                with Client(
                    proxies[delay].address, ps.secret, worker_id, timeout=5, connect_timeout=8
                ) as client:
                    results[worker_id] = time.monotonic() - started
                    for _ in range(3):
                        client.commit([np.ones(s, np.float32) for s in SHAPES])
                        client.pull()
            except Exception as exc:  # reported below, with the flood's figures
                errors[worker_id] = exc

        try:
            while flood.opened < 64 and flood.thread.is_alive():  # the cap is reached
                flood.stopped.wait(0.01)
            workers = [
                threading.Thread(target=work, args=(i, delay))
                for i, delay in enumerate((0.3, 0.3, 1.0, 1.0))
            ]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(DEADLINE)
        finally:
            flood.stop()
            for proxy in proxies.values():
                proxy.close()
        assert not errors, (errors, flood.opened)
        assert ps.num_updates == 12
        assert flood.opened > 200, flood.opened  # the flood ran while the workers connected
        # Each got in at its first try (no handshake of theirs was dropped).
        assert [proxy.accepted for proxy in proxies.values()] == [2, 2], results


def test_a_burst_of_junk_connections_writes_few_log_lines(caplog):
    """300 connections sending junk (each refused by name) and 300 cut at once."""
    with caplog.at_level(logging.INFO, logger="distkeras"):
        with ParameterServer(zeros()) as ps:
            for i in range(300):
                with socket.create_connection(ps.address, timeout=5) as sock:
                    if i % 2:
                        sock.sendall(b"JUNK" * 8)
                        sock.settimeout(5)
                        sock.recv(1 << 16)  # the server's ERROR: it has seen the junk
            with socket.create_connection(ps.address, timeout=5) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            deadline = time.monotonic() + DEADLINE
            while ps.stats()["rejected"] < 150 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert ps.stats()["rejected"] >= 150
    lines = [r for r in caplog.records if r.name == "distkeras.ps.server" and r.levelno >= 20]
    assert len(lines) <= 6, [r.getMessage() for r in lines]
    assert any("held back" in r.getMessage() for r in lines) or len(lines) <= 3


def authenticated(ps, worker_id=0):
    stream = Stream(socket.create_connection(ps.address, timeout=5))
    handshake.answer_handshake(stream, ps.secret, worker_id)
    return stream


@pytest.mark.parametrize("stall", ["half-frame", "silent"])
def test_a_stalled_session_frees_its_thread_by_the_session_deadline(stall):
    """A commit cut off mid-way with the socket kept open, or a worker that says nothing:
    the server closes the session once `session_timeout` has passed."""
    with ParameterServer(zeros(), session_timeout=0.5) as ps:
        stream = authenticated(ps)
        with stream.sock:
            started = time.monotonic()
            if stall == "half-frame":
                meta = {"worker_id": 0, "clock": 0}
                data = frame_bytes(stream, MsgType.COMMIT, meta, zeros())
                stream.sock.sendall(data[: len(data) // 2])
            stream.sock.settimeout(5)
            assert stream.sock.recv(1) == b""  # the server closed the session
            elapsed = time.monotonic() - started
        assert 0.4 < elapsed < 3.0, elapsed
        deadline = time.monotonic() + 5
        while conn_threads() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not conn_threads()
        with Client(ps.address, ps.secret, 0, timeout=5) as client:  # the slot is free again
            client.pull()


def test_a_second_live_connection_under_a_worker_id_is_refused(monkeypatch, caplog):
    monkeypatch.setattr(server_module, "TAKEOVER_GRACE", 0.3)
    with ParameterServer(zeros()) as ps, Client(ps.address, ps.secret, 0, timeout=5) as first:
        with pytest.raises(DistKerasError, match="worker 0 is already connected"):
            Client(ps.address, ps.secret, 0, timeout=5, connect_timeout=5)
        first.pull()  # the first connection is untouched
        with Client(ps.address, ps.secret, 1, timeout=5) as other:
            other.pull()
    assert any("second connection as worker 0" in r.getMessage() for r in caplog.records)


def test_a_task_retry_reconnect_replaces_the_dead_session():
    """The old task's process died (its socket closed without a goodbye) just before the
    retry connects under the same id: the retry waits for the old session's end, then gets
    in."""
    with ParameterServer(zeros()) as ps:
        old = authenticated(ps, worker_id=0)
        old.sock.close()  # the dying process: no GOODBYE
        with Client(ps.address, ps.secret, 0, timeout=5, connect_timeout=5) as retry:
            retry.commit([np.ones(s, np.float32) for s in SHAPES])
        assert ps.num_updates == 1


def test_large_commits_arrive_under_a_short_session_deadline():
    big = [np.ones((512, 1024), np.float32)]
    with ParameterServer([np.zeros((512, 1024), np.float32)], session_timeout=2.0) as ps:
        with Client(ps.address, ps.secret, 0, timeout=5) as client:
            for _ in range(3):
                client.commit(big)
            np.testing.assert_array_equal(client.pull()[0], 3)
