"""Tests of distkeras.ps over real loopback sockets: service, faults, rounds."""

import contextlib
import os
import socket
import threading
import time
from unittest import mock

import numpy as np
import pytest

from distkeras.errors import AuthenticationError, DistKerasError, ProtocolError
from distkeras.parameter_server import Client, ParameterServer
from distkeras.ps.wire import framing, handshake
from distkeras.ps.wire.framing import HEADER, MAGIC, VERSION
from distkeras.ps.wire.schema import Limits, MsgType
from distkeras.ps.wire.stream import Stream

from .wire_helpers import frame_bytes

SHAPES = [(4, 3), (5,)]


def zeros():
    return [np.zeros(s, np.float32) for s in SHAPES]


def delta(value):
    """Integer-valued float32 deltas: sums are exact, so centers compare with ==."""
    return [np.full(s, value, np.float32) for s in SHAPES]


def assert_center(ps, total, updates):
    for got, want in zip(ps.get_weights(), delta(total)):
        np.testing.assert_array_equal(got, want)
    assert ps.num_updates == updates


def server_threads():
    return [t for t in threading.enumerate() if t.name.startswith("distkeras-ps")]


@pytest.fixture(autouse=True)
def no_leaked_threads():
    yield
    assert not server_threads()


@pytest.fixture
def ps():
    with ParameterServer(zeros()) as server:
        yield server


def connect(ps, authenticate=True, worker_id=0):
    """A raw Stream to `ps`, optionally past the handshake (the protocol's client half)."""
    stream = Stream(socket.create_connection(ps.address, timeout=5))
    if authenticate:
        handshake.answer_handshake(stream, ps.secret, worker_id)
    else:
        assert read(stream).type is MsgType.CHALLENGE
    return stream


def read(stream):
    return stream.read(Limits(1 << 20, 1 << 20, 16))


def expect_error(stream, keyword):
    reply = read(stream)
    assert reply.type is MsgType.ERROR, reply
    assert keyword in reply.meta["error"]


def commit_frame(arrays, worker_id=0, clock=0):
    buffers = framing.encode(MsgType.COMMIT, {"worker_id": worker_id, "clock": clock}, arrays)
    return b"".join(bytes(b) for b in buffers)


def header(msg_type=MsgType.PULL, meta_len=0, payload_len=0, magic=MAGIC, version=VERSION):
    return HEADER.pack(magic, version, msg_type, 0, meta_len, payload_len)


def still_serving(ps, total, updates):
    """A well-behaved client still works, and the center holds only the valid commits."""
    with Client(ps.address, ps.secret, worker_id=7) as client:
        client.pull()
        client.commit(delta(1))
    assert_center(ps, total + 1, updates + 1)


# ----------------------------------------------------------------------------- service


def test_pull_commit_and_commit_and_pull(ps):
    with Client(ps.address, ps.secret) as client:
        assert all((w == 0).all() for w in client.pull())
        client.commit(delta(2))
        weights = client.commit_and_pull(delta(3))
        assert client.clock == 2 == ps.clock
        np.testing.assert_array_equal(weights[0], delta(5)[0])
    assert_center(ps, 5, 2)
    stats = ps.stats()
    assert stats["bytes_received"] > 0 and stats["bytes_sent"] > 0
    assert stats["rejected"] == 0


def test_get_and_set_weights(ps):
    ps.set_weights(delta(4))
    assert_center(ps, 4, 0)
    ps.get_weights()[0][:] = 99  # a copy
    assert_center(ps, 4, 0)
    with pytest.raises(ValueError, match="shape"):
        ps.set_weights([np.zeros((3, 4), np.float32), np.zeros(5, np.float32)])
    with pytest.raises(ValueError, match="2 arrays"):
        ps.set_weights(delta(1)[:1])


def test_constructor_validates_arguments():
    with pytest.raises(ValueError, match="weights"):
        ParameterServer([])
    with pytest.raises(TypeError, match="dtype"):
        ParameterServer([np.array(["a"])])
    with pytest.raises(ValueError, match="num_workers"):
        ParameterServer(zeros(), round_rule=lambda c, commits: None)
    with pytest.raises(TypeError, match="secret"):
        ParameterServer(zeros(), secret="text")
    with pytest.raises(ValueError, match="at least 16 bytes") as short:
        ParameterServer(zeros(), secret=b"hunter2")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Client(("127.0.0.1", 9), b"hunter2")
    assert "hunter2" not in str(short.value)


def test_sixteen_clients_commit_at_once(ps):
    barrier = threading.Barrier(16)
    errors = []

    def work(worker_id):
        try:
            with Client(ps.address, ps.secret, worker_id=worker_id) as client:
                barrier.wait()
                for step in range(5):
                    client.commit_and_pull(delta(worker_id + step))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    total = sum(w + s for w in range(16) for s in range(5))
    assert_center(ps, total, 80)
    assert ps.clock == 80


def test_a_snapshot_is_the_center_at_its_clock_while_commits_land(ps):
    """Each commit adds 1: a snapshot's weights equal its clock, however commits interleave
    (a checkpoint of the center at one clock with the clock of another failed this)."""
    stop = threading.Event()

    def commit_ones(worker_id):
        with Client(ps.address, ps.secret, worker_id=worker_id) as client:
            while not stop.is_set():
                client.commit_and_pull(delta(1))

    threads = [threading.Thread(target=commit_ones, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        snapshots = [ps.snapshot()]
        deadline = time.monotonic() + 10
        while snapshots[-1][1] < 200 and time.monotonic() < deadline:
            snapshots.append(ps.snapshot())
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert snapshots[-1][1] >= 200, len(snapshots)  # commits landed while it read
    for weights, clock in snapshots:
        for got in weights:
            assert (got == clock).all(), (float(got.flat[0]), clock)


def test_staleness_is_server_clock_minus_pull_clock():
    seen = []

    def rule(center, arrays, staleness):
        seen.append(staleness)
        for c, a in zip(center, arrays):
            c += a

    with ParameterServer(zeros(), rule=rule) as ps:
        with Client(ps.address, ps.secret, 0) as slow, Client(ps.address, ps.secret, 1) as fast:
            slow.pull()
            for _ in range(3):
                fast.pull()
                fast.commit(delta(1))
            slow.commit(delta(1))
            assert slow.clock == 0  # commit alone does not move the pull clock
        assert seen == [0, 0, 0, 3]
        stats = ps.stats()
        assert stats["max_staleness"] == 3 and stats["mean_staleness"] == 0.75
        assert_center(ps, 4, 4)


def test_commit_clock_from_the_future_is_refused(ps):
    stream = connect(ps)
    with stream.sock:
        stream.send(MsgType.COMMIT, {"worker_id": 0, "clock": 99}, delta(1))
        expect_error(stream, "ahead of the server clock")
    still_serving(ps, 0, 0)


def test_request_stop_propagates(ps):
    with Client(ps.address, ps.secret) as client:
        client.pull()
        assert not client.stop_requested
        ps.request_stop()
        client.commit(delta(1))
        assert client.stop_requested
    assert_center(ps, 1, 1)


def test_pull_tells_the_epochs_the_driver_completed(ps):
    with Client(ps.address, ps.secret) as client:
        client.pull()
        assert client.epoch == 0
        ps.set_epoch(2)
        client.commit(delta(1))
        assert client.epoch == 0  # only a pull reads it
        client.pull()
        assert client.epoch == 2


def test_on_report_receives_dicts():
    reports = []
    with ParameterServer(zeros(), on_report=reports.append) as ps:
        with Client(ps.address, ps.secret, worker_id=3) as client:
            client.report(epoch=1, samples=640, logs={"loss": 0.25}, epoch_done=True)
            with pytest.raises(TypeError, match="JSON"):
                client.report(bad=object())
    assert reports == [
        {"epoch": 1, "samples": 640, "logs": {"loss": 0.25}, "epoch_done": True, "worker_id": 3}
    ]


@pytest.mark.parametrize(
    "fields, keyword",
    [
        ({"epoch": "abc"}, "'epoch' must be an integer"),
        ({"rows": 1e999}, "'rows' must be an integer"),
        ({"samples": -1}, "'samples' must be an integer"),
        ({"epoch": True}, "'epoch' must be an integer"),
        ({"epoch_done": 1}, "'epoch_done' must be of type bool"),
        ({"logs": {"loss": "low"}}, "must be a number"),
        ({"logs": [1.0]}, "'logs' must be of type dict"),
        ({"center": [1, 2]}, "unknown report field 'center'"),
    ],
)
def test_ill_typed_reports_are_refused_and_the_driver_keeps_running(fields, keyword):
    reports = []
    with ParameterServer(zeros(), on_report=reports.append) as ps:
        with Client(ps.address, ps.secret) as client:
            with pytest.raises(DistKerasError, match=keyword):
                client.report(**fields)
            client.report(epoch=0, samples=1, logs={"loss": float("nan")})  # still served
        assert ps.stats()["rejected"] == 1
    assert [r["samples"] for r in reports] == [1]


def test_failing_on_report_is_reported_to_the_worker():
    def explode(report):
        raise RuntimeError("progress bar broke")

    with ParameterServer(zeros(), on_report=explode) as ps:
        with Client(ps.address, ps.secret) as client:
            with pytest.raises(DistKerasError, match="progress bar broke"):
                client.report(epoch=0)
            client.commit(delta(1))  # the connection survives
        assert_center(ps, 1, 1)


def test_failing_rule_sets_failure():
    def rule(center, arrays, staleness):
        raise ArithmeticError("bad rule")

    with ParameterServer(zeros(), rule=rule) as ps:
        with Client(ps.address, ps.secret) as client:
            with pytest.raises(DistKerasError, match="bad rule"):
                client.commit(delta(1))
            with pytest.raises(DistKerasError, match="failed"):
                client.pull()
        assert "bad rule" in str(ps.failure)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("authenticated", [False, True])
def test_random_bytes(ps, authenticated):
    stream = connect(ps, authenticate=authenticated)
    with stream.sock:
        stream.sock.sendall(b"\x00junk" + os.urandom(200))
        expect_error(stream, "magic")
    still_serving(ps, 0, 0)
    assert ps.stats()["rejected"] == 1


@pytest.mark.parametrize(
    "frame, keyword",
    [
        (header(magic=b"HTTP"), "magic"),
        (header(version=VERSION + 1), "version"),
        (header(MsgType.COMMIT, 10, 2**62), "exceeds the limit"),
        (header(MsgType.COMMIT, 2**32 - 1, 0), "exceeds the limit"),
    ],
)
def test_bad_headers_are_refused_before_allocating(ps, frame, keyword):
    stream = connect(ps)
    with stream.sock:
        stream.sock.sendall(frame)
        expect_error(stream, keyword)
        assert stream.sock.recv(1) == b""  # then the server closes the connection
    still_serving(ps, 0, 0)


@pytest.mark.parametrize("cut", [10, HEADER.size + 5, -20])
def test_client_disconnecting_mid_commit(ps, cut):
    with Client(ps.address, ps.secret) as client:
        client.commit(delta(2))
    stream = connect(ps)
    meta = {"worker_id": 0, "clock": 0}
    stream.sock.sendall(frame_bytes(stream, MsgType.COMMIT, meta, delta(1))[:cut])
    stream.sock.close()
    deadline = time.monotonic() + 5
    while ps.stats()["rejected"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ps.stats()["rejected"] == 1
    still_serving(ps, 2, 1)


def test_failed_handshake_wrong_secret(ps):
    with pytest.raises(AuthenticationError, match="wrong secret"):
        Client(ps.address, b"not the right secret", connect_timeout=2)
    still_serving(ps, 0, 0)
    assert ps.stats()["rejected"] == 1


@pytest.mark.parametrize(
    "frame, keyword",
    [
        (header(MsgType.PULL), "expected RESPONSE"),
        (commit_frame(delta(1)), "exceeds the limit of 0"),  # no payload before the handshake
    ],
)
def test_skipped_handshake(ps, frame, keyword):
    stream = connect(ps, authenticate=False)
    with stream.sock:
        stream.sock.sendall(frame)
        expect_error(stream, keyword)
    still_serving(ps, 0, 0)


def test_client_authenticates_the_server_too():
    """A fake server that cannot answer the client's challenge is refused by the client."""
    listener = socket.create_server(("127.0.0.1", 0))

    def impostor():
        sock, _ = listener.accept()
        with sock:
            stream = Stream(sock)
            key = handshake.KeyShare().nonce  # v4: the challenge announces the server's key
            stream.send(MsgType.CHALLENGE, {"nonce": key, "sealed": False, "server_key": key})
            read(stream)
            welcome = {"digest": "00" * 32, "clock": 0, "center": [], "round_mode": False}
            stream.send(MsgType.WELCOME, welcome)
            with contextlib.suppress(OSError):  # the client closes (or resets) the connection
                sock.recv(1)

    thread = threading.Thread(target=impostor)
    thread.start()
    with listener, pytest.raises(AuthenticationError, match="parameter server"):
        Client(listener.getsockname(), b"s" * 32, connect_timeout=2)
    thread.join(30)


@pytest.mark.parametrize(
    "arrays, keyword",
    [
        (delta(1)[:1], "1 arrays, expected 2"),
        (delta(1) + [np.ones(1, np.float32)], "3 arrays, expected 2"),
        ([np.ones((3, 4), np.float32), np.ones(5, np.float32)], "shape [3, 4]"),
        ([a.astype(np.float64) for a in delta(1)], "dtype <f8"),
        ([a.astype(np.int32) for a in delta(1)], "dtype <i4"),
    ],
)
def test_commit_with_wrong_arrays_is_refused(ps, arrays, keyword):
    with Client(ps.address, ps.secret) as client:
        client.commit(delta(1))
        with pytest.raises(DistKerasError, match=keyword.replace("[", r"\[")):
            client.commit(arrays)
        client.commit(delta(1))  # the same connection keeps working
    assert_center(ps, 2, 2)
    assert ps.stats()["rejected"] == 1


def test_commit_larger_than_the_limit_closes_the_connection(ps):
    with Client(ps.address, ps.secret) as client:
        with pytest.raises(DistKerasError, match="exceeds the limit"):
            client.commit(delta(1) * 3)
        with pytest.raises((ConnectionError, ProtocolError)):
            client.pull()
    still_serving(ps, 0, 0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_commit_is_refused(ps, bad):
    arrays = delta(1)
    arrays[1][2] = bad
    with Client(ps.address, ps.secret) as client:
        with pytest.raises(DistKerasError, match="NaN or Inf"):
            client.commit_and_pull(arrays)
        client.commit(delta(1))
    assert_center(ps, 1, 1)


def test_commit_that_would_overflow_the_center_is_refused(ps):
    big = [np.full(s, 3e38, np.float32) for s in SHAPES]  # finite, but twice overflows float32
    with Client(ps.address, ps.secret) as client:
        client.commit(big)
        with pytest.raises(DistKerasError, match="would leave a NaN or Inf in the center"):
            client.commit(big)
        client.commit(delta(-3e38))  # the connection and the center are fine
    assert_center(ps, 0, 2)


def test_failing_rule_leaves_the_center_as_it_was():
    def half_then_fail(center, arrays, staleness):
        center[0] += 1
        raise ArithmeticError("bad rule")

    with ParameterServer(zeros(), rule=half_then_fail) as ps:
        with Client(ps.address, ps.secret) as client, pytest.raises(DistKerasError):
            client.commit(delta(1))
        assert_center(ps, 0, 0)


def test_nonfinite_commit_accepted_when_allowed():
    with ParameterServer(zeros(), reject_nonfinite=False) as ps:
        with Client(ps.address, ps.secret) as client:
            client.commit([np.full(s, np.inf, np.float32) for s in SHAPES])
        assert np.isinf(ps.get_weights()[0]).all()


def test_unexpected_message_type_is_refused(ps):
    stream = connect(ps)
    with stream.sock:
        stream.send(MsgType.WEIGHTS, {"clock": 0, "stop": False}, delta(1))
        expect_error(stream, "not a request")
        stream.send(MsgType.PULL)  # still in sync
        assert read(stream).type is MsgType.WEIGHTS


# ----------------------------------------------------------------------------- lifecycle


def test_stop_joins_threads_releases_port_and_is_idempotent():
    ps = ParameterServer(zeros()).start()
    port = ps.address[1]
    client = Client(ps.address, ps.secret)
    client.commit(delta(1))
    idle = socket.create_connection(ps.address)  # stuck in the handshake
    time.sleep(0.05)
    assert len(server_threads()) == 3
    ps.stop()
    ps.stop()
    assert not server_threads()
    with pytest.raises((ConnectionError, ProtocolError, TimeoutError)):
        client.pull()
    client.close()
    client.close()
    idle.close()
    with ParameterServer(zeros(), port=port) as again:
        assert again.address[1] == port
    with pytest.raises(RuntimeError, match="stopped"):
        ps.start()


def test_client_retries_until_the_server_comes_up():
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    secret = b"s" * 32
    result = {}

    def connect_late():
        with Client(("127.0.0.1", port), secret, connect_timeout=10) as client:
            result["weights"] = client.pull()

    refused = threading.Event()  # the client has failed to connect at least once
    connect = socket.create_connection

    def counted(*args, **kwargs):
        try:
            return connect(*args, **kwargs)
        except ConnectionRefusedError:
            refused.set()
            raise

    thread = threading.Thread(target=connect_late)
    with mock.patch("socket.create_connection", counted):
        thread.start()
        assert refused.wait(10)  # a retry is sure to come, whatever the machine's pace
        with ParameterServer(zeros(), port=port, secret=secret):
            thread.join(30)
    assert not thread.is_alive()
    assert len(result["weights"]) == 2


def test_client_gives_up_after_connect_timeout():
    probe = socket.create_server(("127.0.0.1", 0))
    address = probe.getsockname()
    probe.close()
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="could not reach"):
        Client(address, b"s" * 32, connect_timeout=0.3)
    assert time.monotonic() - start < 3


def test_client_times_out_on_a_silent_server():
    with socket.create_server(("127.0.0.1", 0)) as silent:
        with pytest.raises(TimeoutError):
            Client(silent.getsockname(), b"s" * 32, timeout=0.2)


# ----------------------------------------------------------------------------- round mode


def mean_rule(center, commits):
    for i, c in enumerate(center):
        c += sum(commit[i] for commit in commits) / len(commits)


def run_workers(target, ids):
    results, errors = {}, {}

    def run(worker_id):
        try:
            results[worker_id] = target(worker_id)
        except Exception as exc:  # surfaced to the test
            errors[worker_id] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results, errors


def round_server(num_workers=3, round_timeout=10.0):
    return ParameterServer(
        zeros(), round_rule=mean_rule, num_workers=num_workers, round_timeout=round_timeout
    )


def test_round_completes_with_round_rule_result():
    with round_server() as ps:

        def work(worker_id):
            with Client(ps.address, ps.secret, worker_id) as client:
                client.pull()
                first = client.commit_and_pull(delta(3 * (worker_id + 1)))
                client.commit(delta(3))
                return first, client.clock

        results, errors = run_workers(work, range(3))
        assert not errors
        for first, clock in results.values():
            np.testing.assert_array_equal(first[0], delta(6)[0])  # mean of 3, 6, 9
            assert clock == 1
        assert_center(ps, 9, 6)
        assert ps.clock == 2


def test_worker_leaving_early_does_not_stall_the_others():
    with round_server() as ps:

        def work(worker_id):
            with Client(ps.address, ps.secret, worker_id) as client:
                if worker_id == 2:
                    client.commit(delta(30))  # one round, then out of data
                    client.leave()
                    return None
                for _ in range(3):
                    client.commit(delta(6))
                return client.clock

        results, errors = run_workers(work, range(3))
        assert not errors
        assert_center(ps, 14 + 6 + 6, 7)  # mean(6, 6, 30) then two rounds of mean(6, 6)


def test_disconnect_mid_round_does_not_deadlock():
    with round_server() as ps:
        dropout = Client(ps.address, ps.secret, 2)

        def work(worker_id):
            with Client(ps.address, ps.secret, worker_id) as client:
                return client.commit_and_pull(delta(4))

        threading.Timer(0.2, dropout.close).start()
        results, errors = run_workers(work, range(2))
        assert not errors
        assert_center(ps, 4, 2)


def test_round_timeout_names_missing_workers():
    with round_server(round_timeout=0.3) as ps:

        def work(worker_id):
            with Client(ps.address, ps.secret, worker_id) as client:
                client.commit(delta(1))

        start = time.monotonic()
        results, errors = run_workers(work, [0, 2])
        assert time.monotonic() - start < 5
        assert set(errors) == {0, 2}
        assert all("[1]" in str(e) for e in errors.values())
        assert "[1]" in str(ps.failure) and "timed out" in str(ps.failure)
        assert_center(ps, 0, 0)


def test_round_that_would_overflow_is_refused_to_every_worker_then_retried():
    def sum_rule(center, commits):
        for i, c in enumerate(center):
            c += sum(commit[i] for commit in commits)

    with ParameterServer(zeros(), round_rule=sum_rule, num_workers=2, round_timeout=10) as ps:

        def work(worker_id):
            with Client(ps.address, ps.secret, worker_id) as client:
                with pytest.raises(DistKerasError, match="round 0 refused.*center left untouched"):
                    client.commit(delta(3e38))  # 2 x 3e38 overflows float32
                client.commit(delta(1))  # the round starts over with finite commits
                return client.pull()

        results, errors = run_workers(work, range(2))
        assert not errors, errors
        assert_center(ps, 2, 2)


def test_round_mode_refuses_unknown_and_duplicate_worker_ids():
    with round_server() as ps:
        with pytest.raises(DistKerasError, match="outside the round set"):
            Client(ps.address, ps.secret, worker_id=3)
        with Client(ps.address, ps.secret, worker_id=1):
            with pytest.raises(DistKerasError, match="already connected"):
                Client(ps.address, ps.secret, worker_id=1)
        with pytest.raises(DistKerasError, match="cannot rejoin"):
            Client(ps.address, ps.secret, worker_id=1)


def test_leave_is_harmless_in_async_mode(ps):
    with Client(ps.address, ps.secret) as client:
        client.leave()
        client.commit(delta(1))
    assert_center(ps, 1, 1)


def test_a_cut_connection_detaches_a_round_worker_and_its_reconnect_commits_the_round():
    """Worker 1's task dies (no GOODBYE, no LEAVE) and is retried: the round waits for it and
    completes with its reconnect's commit, instead of going on without it for good."""
    with round_server(num_workers=2) as ps:
        dying = connect(ps, worker_id=1)
        dying.sock.close()  # the task's process is gone
        results = {}
        first = threading.Thread(target=lambda: results.update(w0=commit_round(ps, 0)))
        first.start()
        results["w1"] = commit_round(ps, 1)  # the retry
        first.join(10)
        assert not first.is_alive()
        assert ps.num_updates == 2  # one round of both commits
        for arrays in results.values():
            np.testing.assert_array_equal(arrays[0], 4)


def commit_round(ps, worker_id):
    with Client(ps.address, ps.secret, worker_id, timeout=10, connect_timeout=5) as client:
        return client.commit_and_pull(delta(4))
