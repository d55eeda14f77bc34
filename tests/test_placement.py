"""Tests of distkeras.placement without Spark: a server hosted as worker 0 would host it,
followed by the driver's RemoteServer over a real socket; the observer's limits."""

from __future__ import annotations

import time

import numpy as np
import pytest

from distkeras.errors import AuthenticationError, DistKerasError
from distkeras.executor.hosted import MAX_BATCH, ReportRelay
from distkeras.ps import Client, ParameterServer
from distkeras.ps.remote import RemoteServer
from distkeras.ps.wire.handshake import KeyShare
from distkeras.ps.wire.schema import OBSERVER_ID
from distkeras.spark import placement

SECRET = b"s" * 32


OBSERVER = KeyShare()  # the driver's observer key, which the hosted server pins


@pytest.fixture
def hosted():
    """A server with a ReportRelay, as worker 0 of an in-cluster run starts it."""
    relay = ReportRelay()
    server = ParameterServer(
        [np.zeros(3, np.float32)],
        secret=SECRET,
        on_report=relay.on_report,
        on_watch=relay.on_watch,
        observer_key=OBSERVER.nonce,
    ).start()
    relay.server = server
    yield server, relay
    server.stop()


def test_remote_server_follows_reports_and_releases_with_the_final_weights(hosted):
    server, relay = hosted
    reports = []
    remote = RemoteServer(
        [("192.0.2.3", 9), server.address],  # the first candidate answers nothing
        SECRET,
        [np.zeros(3, np.float32)],
        num_workers=2,
        on_report=reports.append,
        connect_timeout=20.0,
        identity=OBSERVER,
    ).start()
    try:
        with Client(server.address, SECRET, 0) as a, Client(server.address, SECRET, 1) as b:
            a.pull()
            a.commit([np.ones(3, np.float32)])
            a.report(epoch=0, samples=10, epoch_done=True)
            remote.set_epoch(1)
            remote.publish(learning_rate=0.25)  # a rate a driver's callback set
            remote.request_stop()
            deadline = time.monotonic() + 10
            while not b.stop_requested and time.monotonic() < deadline:
                b.pull()
                time.sleep(0.05)
            assert b.stop_requested and b.epoch == 1
            assert b.published["learning_rate"] == 0.25
            b.commit([np.ones(3, np.float32)])
            a.report(finished=True, samples=10)
            b.report(finished=True, samples=0)
        assert relay.released.wait(10)
    finally:
        remote.stop()
    assert [r["worker_id"] for r in reports] == [0, 0, 1]
    assert reports[0]["epoch_done"] is True
    np.testing.assert_array_equal(remote.get_weights()[0], [2, 2, 2])
    assert remote.num_updates == 2 and remote.stats()["placement"] == "cluster"
    assert remote.failure is None


def test_observer_and_workers_keep_to_their_requests(hosted):
    server, _ = hosted
    with Client(server.address, SECRET, 0) as worker:
        with pytest.raises(DistKerasError, match="WATCH is not a request this client"):
            worker.watch(0)
    with Client(server.address, SECRET, OBSERVER_ID, identity=OBSERVER) as observer:
        assert observer.watch(0)[0]["reports"] == []
        with pytest.raises(DistKerasError, match="COMMIT is not a request this client"):
            observer.commit([np.ones(3, np.float32)])


def test_a_server_without_on_watch_refuses_observers():
    with ParameterServer([np.zeros(2, np.float32)], secret=SECRET) as server:
        with pytest.raises(DistKerasError, match="no observer"):
            Client(server.address, SECRET, OBSERVER_ID, connect_timeout=2.0)


def test_an_unreachable_server_fails_naming_every_address_in_time():
    remote = RemoteServer(
        [("192.0.2.4", 9), ("127.0.0.1", 9)],
        SECRET,
        [np.zeros(1)],
        num_workers=1,
        on_report=lambda report: None,
        connect_timeout=2.0,
        tried="192.0.2.5:7 (from the executors: timed out)",
    )
    started = time.monotonic()
    remote.start()
    while remote.failure is None and time.monotonic() - started < 30:
        time.sleep(0.1)
    remote.stop()
    assert time.monotonic() - started < 30
    message = str(remote.failure)
    for address in ("192.0.2.5:7", "192.0.2.4:9", "127.0.0.1:9"):
        assert address in message


def test_placement_names_are_checked():
    assert placement.check_placement("cluster") == "cluster"
    with pytest.raises(ValueError, match="ps_placement='server'"):
        placement.check_placement("server")


def test_relay_hands_reports_over_in_bounded_batches(hosted):
    server, relay = hosted
    for i in range(MAX_BATCH + 5):
        relay.on_report({"worker_id": 0, "samples": i})
    first, _ = relay.on_watch({"epoch": 0, "stop": False, "release": False})
    second, _ = relay.on_watch({"epoch": 0, "stop": False, "release": False})
    assert len(first["reports"]) == MAX_BATCH and len(second["reports"]) == 5
    assert not relay.released.is_set()


@pytest.mark.parametrize("identity", [None, "another"], ids=["no-key", "another-key"])
def test_a_worker_holding_the_secret_cannot_pose_as_the_observer(hosted, identity):
    """The observer proves the key the hosted server pins; the run's secret is not enough."""
    server, _ = hosted
    key = KeyShare() if identity else None
    with pytest.raises(AuthenticationError, match="observer"):
        Client(server.address, SECRET, OBSERVER_ID, connect_timeout=2.0, identity=key)
    assert server.stats()["connections"] <= 1  # refused: nothing was admitted


def test_a_party_holding_the_secret_cannot_pose_as_the_pinned_server():
    """A second server with the run's secret (what any worker could start) is refused by a
    client pinning the run's server key; the real one is accepted."""
    weights = [np.zeros(2, np.float32)]
    with (
        ParameterServer(weights, secret=SECRET) as real,
        ParameterServer(weights, secret=SECRET) as impostor,
    ):
        with pytest.raises(AuthenticationError, match="not the pinned one"):
            Client(impostor.address, SECRET, 0, connect_timeout=2.0, server_key=real.public_key)
        assert impostor.num_updates == 0
        with Client(real.address, SECRET, 0, server_key=real.public_key) as client:
            client.commit([np.ones(2, np.float32)])
        assert real.num_updates == 1
