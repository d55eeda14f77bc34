"""The parameter server's documented limits (docs/protocol.md), each at its edge: the largest
value accepted and the next refused; sealed payloads in records of at most 1 MiB; the
connection cap."""

import json
import socket
import threading
import time

import numpy as np
import pytest

from distkeras.errors import ProtocolError
from distkeras.ps.wire import framing, handshake
from distkeras.ps.wire.framing import HEADER, MAGIC, VERSION
from distkeras.ps.wire.protection import TAG_SIZE, Sealed
from distkeras.ps.wire.schema import Limits, MsgType, padded
from distkeras.ps.wire.stream import Stream

from .wire_helpers import parse_frame

LIMITS = Limits(max_metadata=1 << 16, max_payload=1 << 16, max_arrays=4)


def commit(worker_id=0, clock=0, shape=(1,)) -> bytes:
    """An untagged COMMIT frame, its metadata written by hand (the encoder checks too)."""
    spec = {"dtype": "<f4", "shape": list(shape)}
    meta = json.dumps({"worker_id": worker_id, "clock": clock, "arrays": [spec]}).encode()
    payload = b"\0" * padded(4 * int(np.prod(shape, dtype=object)))
    header = HEADER.pack(MAGIC, VERSION, MsgType.COMMIT, 0, len(meta), len(payload))
    return header + meta + payload


@pytest.mark.parametrize(
    "field, largest",
    [("worker_id", 2**31 - 1), ("clock", 2**63 - 1)],
)
def test_integer_fields_accept_their_largest_value_and_refuse_the_next(field, largest):
    message = parse_frame(commit(**{field: largest}), LIMITS)
    assert message.meta[field] == largest
    with pytest.raises(ProtocolError, match=rf"'{field}' must be an integer in \[0, {largest}\]"):
        parse_frame(commit(**{field: largest + 1}), LIMITS)


def test_shapes_have_at_most_32_dimensions():
    message = parse_frame(commit(shape=(1,) * 32), LIMITS)
    assert message.arrays[0].shape == (1,) * 32
    with pytest.raises(ProtocolError, match="at most 32 integers"):
        parse_frame(commit(shape=(1,) * 33), LIMITS)


def sealed_pair():
    """Two Streams over a socketpair, sealed with the keys of one session."""
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    to_server, to_client = handshake.session_seals(b"s" * 32, b"shared secret of the test")
    client, server = Stream(a), Stream(b)
    client.protect(Sealed(send=to_server, recv=to_client))
    to_server, to_client = handshake.session_seals(b"s" * 32, b"shared secret of the test")
    server.protect(Sealed(send=to_client, recv=to_server))
    return client, server, (to_client, to_server)


def test_sealed_payloads_travel_in_records_of_one_mebibyte():
    """2.5 MiB of payload: three records (1 MiB, 1 MiB, the rest), each with its own tag,
    after the header and the sealed metadata; none of the plaintext is on the wire."""
    big = [np.arange(655_360, dtype=np.float32)]  # 2.5 MiB
    limits = Limits.for_specs([(a.dtype.str, a.shape) for a in big])
    meta = {"worker_id": 1, "clock": 0}
    client, server, server_seals = sealed_pair()
    relay, reader = socket.socketpair()
    with client.sock, server.sock, relay, reader:
        sender = threading.Thread(target=client.send, args=(MsgType.COMMIT, meta, big))
        sender.start()
        wire = bytearray()
        header = framing.encode(MsgType.COMMIT, meta, big)[0]
        expected = len(header) + TAG_SIZE + big[0].nbytes + 3 * TAG_SIZE
        while len(wire) < expected:
            wire += server.sock.recv(1 << 20)
        sender.join(10)
        assert not sender.is_alive()
        client.sock.shutdown(socket.SHUT_WR)
        assert server.sock.recv(1) == b""  # nothing more: exactly three payload records
        assert len(wire) == expected
        assert big[0][1000:1016].tobytes() not in wire
        pump = threading.Thread(target=relay.sendall, args=(bytes(wire),))
        pump.start()  # the receiving side opens what was on the wire
        reader.settimeout(10)
        opened = Stream(reader)
        opened.protect(Sealed(*server_seals))  # the server's keys, not yet used by `server`
        message = opened.read(limits)
        pump.join(10)
        np.testing.assert_array_equal(message.arrays[0], big[0])


def test_connections_beyond_the_cap_are_closed_at_once():
    """512 connections by default (docs/protocol.md); here a cap of 3: three authenticated
    clients fill it, a fourth connection is closed at once, and a place freed is taken."""
    import inspect

    from distkeras.parameter_server import Client, ParameterServer

    assert inspect.signature(ParameterServer).parameters["max_connections"].default == 512
    center = [np.zeros(4, np.float32)]
    with ParameterServer(center, max_connections=3) as ps:
        clients = [Client(ps.address, ps.secret, worker_id=i) for i in range(3)]
        try:
            for client in clients:
                client.pull()
            with socket.create_connection(ps.address, timeout=10) as extra:
                assert extra.recv(1) == b""  # closed, not left in a handshake
            clients.pop().close()
            deadline = time.monotonic() + 10
            while ps.stats()["connections"] > 2 and time.monotonic() < deadline:
                time.sleep(0.01)  # polls for the server to see the close; bounded
            assert ps.stats()["connections"] == 2
            clients.append(Client(ps.address, ps.secret, worker_id=3))
            assert len(clients[-1].pull()) == 1
        finally:
            for client in clients:
                client.close()
