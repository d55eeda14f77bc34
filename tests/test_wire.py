"""Tests of distkeras.ps.wire: framing, metadata validation, handshake digests, tags, fuzzing."""

import io
import json
import socket
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distkeras.errors import AuthenticationError, ProtocolError
from distkeras.ps.wire import framing, handshake, schema
from distkeras.ps.wire.framing import HEADER, MAGIC, VERSION
from distkeras.ps.wire.protection import PLAIN, TAG_SIZE, FrameSeal, Tagged
from distkeras.ps.wire.schema import Limits, MsgType
from distkeras.ps.wire.stream import Stream

from .wire_helpers import parse_frame

ARRAYS = [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.array(2.5, dtype=np.float16),  # 0-d, 2 bytes: the next array needs padding
    np.array([True, False, True]),
    np.arange(5, dtype=np.int64),
    np.zeros((0, 3), dtype=np.float64),
]
TRANSCRIPT = handshake.transcript_hash(b"a challenge", b"a response")
LIMITS = Limits.for_specs([(a.dtype.str, a.shape) for a in ARRAYS])


def frame(msg_type=MsgType.COMMIT, meta=None, arrays=ARRAYS) -> bytes:
    meta = {"worker_id": 1, "clock": 0} if meta is None else meta
    return b"".join(bytes(b) for b in framing.encode(msg_type, meta, arrays))


def raw_frame(meta: bytes, payload: bytes = b"", msg_type=MsgType.PULL, **fields) -> bytes:
    values = {"magic": MAGIC, "version": VERSION, "flags": 0, "payload_len": len(payload)}
    values.update(fields)
    fields = (values["magic"], values["version"], msg_type, values["flags"])
    return HEADER.pack(*fields, len(meta), values["payload_len"]) + meta + payload


def test_round_trip_keeps_dtypes_shapes_and_values():
    message = parse_frame(frame(), LIMITS)
    assert message.type is MsgType.COMMIT
    assert message.meta["worker_id"] == 1
    for got, want in zip(message.arrays, ARRAYS):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_payload_arrays_are_aligned():
    data = frame()
    meta_len = HEADER.unpack(data[: HEADER.size])[4]
    payload = np.frombuffer(data, np.uint8, offset=HEADER.size + meta_len)
    message = parse_frame(data, LIMITS)
    assert len(payload) % schema.ALIGNMENT == 0
    base = message.arrays[0].ctypes.data
    assert all((a.ctypes.data - base) % schema.ALIGNMENT == 0 for a in message.arrays)


def test_wire_array_rejects_object_dtype_and_converts_big_endian():
    with pytest.raises(TypeError, match="dtype"):
        schema.wire_array(np.array([object()]), "arrays[0]")
    with pytest.raises(TypeError, match="dtype"):
        schema.wire_array(np.array(["text"]))
    big = schema.wire_array(np.arange(3, dtype=">f4"))
    assert big.dtype.str == "<f4"
    np.testing.assert_array_equal(big, [0, 1, 2])
    assert schema.wire_array(np.float32(1)).shape == ()


@pytest.mark.parametrize(
    "data, keyword",
    [
        (raw_frame(b"{}", magic=b"XXXX"), "magic"),
        (raw_frame(b"{}", version=VERSION + 1), "version"),
        (raw_frame(b"{}", flags=1), "flags"),
        (raw_frame(b"{}", msg_type=99), "unknown message type"),
        (raw_frame(b"{}", payload_len=2**62), "exceeds the limit"),
        (raw_frame(b"x" * (LIMITS.max_metadata + 1)), "metadata length"),
        (raw_frame(b"{not json"), "JSON"),
        (raw_frame(b"\xff\xfe"), "JSON"),
        (raw_frame(b"[" * 5000 + b"]" * 5000), "JSON"),
        (raw_frame(b"[1, 2]"), "JSON object"),
        (raw_frame(b"{}", msg_type=MsgType.COMMIT), "lacks field"),
        (raw_frame(b'{"error": 3}', msg_type=MsgType.ERROR), "type str"),
        (raw_frame(b'{"worker_id": true, "clock": 0, "arrays": []}', msg_type=11), "integer"),
        (raw_frame(b'{"worker_id": 0, "clock": -1, "arrays": []}', msg_type=11), "integer"),
        (
            raw_frame(
                b'{"worker_id": 0, "clock": 0, "arrays": [{"dtype": "|O", "shape": [1]}]}',
                b"\0" * 8,
                msg_type=11,
            ),
            "disallowed dtype",
        ),
        (
            raw_frame(
                b'{"worker_id": 0, "clock": 0, "arrays": [{"dtype": "<f4", "shape": [-1]}]}',
                msg_type=11,
            ),
            "integer",
        ),
        (
            raw_frame(
                b'{"worker_id": 0, "clock": 0, "arrays": [{"dtype": "<f4", "shape": [3]}]}',
                b"\0" * 8,
                msg_type=11,
            ),
            "describe 16 bytes",
        ),
        (raw_frame(b'{"nonce": "zz"}', msg_type=MsgType.CHALLENGE), "hex"),
        (frame()[:-3], "mid-frame"),
        (frame()[:10], "mid-frame"),
        (frame() + b"\0", "trailing"),
        (b"", "empty"),
    ],
)
def test_malformed_frames_raise_protocol_error_naming_the_problem(data, keyword):
    with pytest.raises(ProtocolError, match=keyword):
        parse_frame(data, LIMITS)


def test_too_many_arrays_is_refused():
    limits = Limits(max_metadata=4096, max_payload=4096, max_arrays=1)
    with pytest.raises(ProtocolError, match="limit of 1"):
        parse_frame(frame(arrays=ARRAYS[:3]), limits)


def test_validator_refusal_consumes_the_payload():
    data = frame() + frame(MsgType.PULL, {}, ())
    stream = io.BytesIO(data)

    def refuse(msg_type, meta):
        if msg_type is MsgType.COMMIT:
            raise ProtocolError("not today")

    with pytest.raises(framing.MessageRejected, match="not today"):
        framing.read_frame(stream.readinto, LIMITS, PLAIN, refuse)
    message, _ = framing.read_frame(stream.readinto, LIMITS, PLAIN, refuse)
    assert message.type is MsgType.PULL  # still in sync with the stream


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(data):
    _parse_or_protocol_error(data)


def _valid_frames():
    candidates = [
        frame(),
        frame(MsgType.PULL, {}, ()),
        frame(MsgType.REPORT, {"fields": {"epoch": 1}}, ()),
        frame(MsgType.ACK, {"clock": 3, "stop": False}, ()),
    ]
    return st.sampled_from(candidates)


@settings(max_examples=400, deadline=None)
@given(_valid_frames(), st.data())
def test_fuzz_mutated_valid_frames(data, draw):
    """Flip, drop or insert bytes of valid frames: deeper coverage than pure noise."""
    buf = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 4))):
        action = draw.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = draw.draw(st.integers(0, len(buf) - 1)) if buf else 0
        if action == "flip" and buf:
            buf[pos] ^= draw.draw(st.integers(1, 255))
        elif action == "cut":
            del buf[pos:]
        else:
            buf[pos:pos] = draw.draw(st.binary(min_size=1, max_size=8))
    _parse_or_protocol_error(bytes(buf))


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids),
        max_leaves=10,
    ),
    st.sampled_from(list(MsgType)),
    st.binary(max_size=64),
)
def test_fuzz_metadata_json(meta, msg_type, payload):
    """Well-framed headers with arbitrary JSON metadata of every message type."""
    _parse_or_protocol_error(raw_frame(json.dumps(meta).encode(), payload, msg_type=msg_type))


def _parse_or_protocol_error(data: bytes) -> None:
    try:
        message = parse_frame(data, LIMITS)
    except ProtocolError:
        return
    assert isinstance(message.type, MsgType)
    assert isinstance(message.meta, dict)
    for array in message.arrays:
        assert array.dtype.str in schema.ALLOWED_DTYPES


def test_send_buffers_handles_partial_sends_and_many_buffers():
    arrays = [np.full(n % 7 + 1, n, np.int16) for n in range(700)]  # > one sendmsg's iovecs
    arrays.append(np.arange(3_000_000, dtype=np.float32))  # larger than a socket buffer
    a, b = socket.socketpair()
    limits = Limits.for_specs([(x.dtype.str, x.shape) for x in arrays])
    with a, b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        meta = {"clock": 1, "stop": False}
        sender = threading.Thread(target=PLAIN.send, args=(a, MsgType.WEIGHTS, meta, arrays))
        sender.start()
        message, nbytes = framing.read_frame(b.recv_into, limits, PLAIN)
        sender.join(30)
    assert nbytes > 12_000_000
    for got, want in zip(message.arrays, arrays, strict=True):
        np.testing.assert_array_equal(got, want)


def test_peer_closing_mid_frame_raises_instead_of_spinning():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(frame()[:50])
        a.close()
        with pytest.raises(ProtocolError, match="mid-frame"):
            framing.read_frame(b.recv_into, LIMITS, PLAIN)


def test_peer_closing_between_frames_is_peer_closed():
    a, b = socket.socketpair()
    with b:
        a.close()
        with pytest.raises(framing.PeerClosed):
            framing.read_frame(b.recv_into, LIMITS, PLAIN)


def test_digests_are_role_bound_and_compared():
    secret = b"k" * 32
    ns, nc = handshake.transcript_hash(b"challenge"), handshake.new_nonce()
    expected = handshake.client_digest(secret, ns, nc, 0)
    assert expected != handshake.server_digest(secret, ns)
    assert expected != handshake.client_digest(secret, ns, nc, 1)  # the worker id is bound
    other = handshake.transcript_hash(b"challengf")
    assert expected != handshake.client_digest(secret, other, nc, 0)  # and the transcript
    handshake.verify_digest(expected, handshake.client_digest(secret, ns, nc, 0), "client")
    with pytest.raises(AuthenticationError, match="client"):
        handshake.verify_digest(expected, handshake.client_digest(b"x" * 32, ns, nc, 0), "client")


def session_pair():
    """Two Streams over a socketpair, authenticated with the keys of one session."""
    a, b = socket.socketpair()
    a.settimeout(10)  # every read and write of these tests is bounded
    b.settimeout(10)
    to_server, to_client = handshake.session_macs(b"k" * 32, TRANSCRIPT)
    client, server = Stream(a), Stream(b)
    client.protect(Tagged(send=to_server, recv=to_client))
    to_server, to_client = handshake.session_macs(b"k" * 32, TRANSCRIPT)
    server.protect(Tagged(send=to_client, recv=to_server))
    return client, server


def test_tagged_frames_round_trip_in_order():
    client, server = session_pair()
    with client.sock, server.sock:
        for clock in range(3):
            client.send(MsgType.COMMIT, {"worker_id": 1, "clock": clock}, ARRAYS)
        for clock in range(3):
            message = server.read(LIMITS)
            assert message.meta["clock"] == clock
            np.testing.assert_array_equal(message.arrays[1], ARRAYS[1])
        server.send(MsgType.ACK, {"clock": 3, "stop": False})
        assert client.read(LIMITS).type is MsgType.ACK


@pytest.mark.parametrize("where", ["header", "metadata", "payload", "tag"])
def test_any_flipped_byte_fails_the_tag(where):
    client, server = session_pair()
    with client.sock, server.sock:
        client.send(MsgType.COMMIT, {"worker_id": 1, "clock": 0}, ARRAYS)
        data = bytearray(server.sock.recv(1 << 20))
        offset = {"header": 12, "metadata": HEADER.size + 3, "payload": -TAG_SIZE - 5, "tag": -1}
        data[offset[where]] ^= 0x01
        relay, reader = socket.socketpair()
        with relay, reader:
            relay.sendall(data)
            relay.shutdown(socket.SHUT_WR)
            with pytest.raises(ProtocolError):  # the tag, or the header check before it
                framing.read_frame(reader.recv_into, LIMITS, server.protection)


def test_reordered_replayed_and_untagged_frames_fail():
    a, b = socket.socketpair()
    sender = Stream(a)
    sender.protect(Tagged(*handshake.session_macs(b"k" * 32, TRANSCRIPT)))
    with a, b:
        for clock in range(2):
            sender.send(MsgType.COMMIT, {"worker_id": 1, "clock": clock}, ARRAYS)
        a.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := b.recv(1 << 16):
            data += chunk
    size = len(data) // 2
    first, second = data[:size], data[size:]

    def read_all(stream_bytes):
        to_server, to_client = handshake.session_macs(b"k" * 32, TRANSCRIPT)
        stream = io.BytesIO(stream_bytes)
        receiver = Tagged(send=to_client, recv=to_server)
        return [
            framing.read_frame(stream.readinto, LIMITS, receiver)[0].meta["clock"] for _ in range(2)
        ]

    assert read_all(first + second) == [0, 1]
    for tampered in (second + first, first + first):  # reordered; replayed
        with pytest.raises(AuthenticationError, match="failed authentication"):
            read_all(tampered)
    with pytest.raises(AuthenticationError, match="untagged COMMIT"):
        to_server, to_client = handshake.session_macs(b"k" * 32, TRANSCRIPT)
        receiver = Tagged(send=to_client, recv=to_server)
        framing.read_frame(io.BytesIO(frame()).readinto, LIMITS, receiver)
    with pytest.raises(ProtocolError, match="flags"):  # a tagged frame outside a session
        parse_frame(first, LIMITS)


def test_large_tagged_frame_is_tagged_while_sent_and_checked():
    """Frames over 1 MiB are tagged piece by piece as they are sent; one flipped bit fails."""
    big = [np.arange(600_000, dtype=np.float32), np.ones(5, np.float32)]
    limits = Limits.for_specs([(a.dtype.str, a.shape) for a in big])
    for flip in (False, True):
        client, server = session_pair()
        relay, reader = socket.socketpair()
        with client.sock, server.sock, relay, reader:
            meta = {"worker_id": 1, "clock": 0}
            sender = threading.Thread(target=client.send, args=(MsgType.COMMIT, meta, big))
            sender.start()
            data = bytearray()
            while len(data) < 2_400_000 + 100:
                data += server.sock.recv(1 << 20)
            sender.join(10)
            client.sock.shutdown(socket.SHUT_WR)
            while chunk := server.sock.recv(1 << 20):
                data += chunk
            if flip:
                data[1_000_000] ^= 0x01
            pump = threading.Thread(target=relay.sendall, args=(bytes(data),))
            pump.start()
            if flip:
                with pytest.raises(AuthenticationError, match="failed authentication"):
                    framing.read_frame(reader.recv_into, limits, server.protection)
            else:
                message, _ = framing.read_frame(reader.recv_into, limits, server.protection)
                np.testing.assert_array_equal(message.arrays[0], big[0])
            pump.join(10)


# ----------------------------------------------------------------------------- version 4


def test_corrupted_metadata_is_an_authentication_error_not_a_parse_error():
    """The metadata's tag is checked before the metadata is parsed."""
    client, server = session_pair()
    with client.sock, server.sock:
        client.send(MsgType.COMMIT, {"worker_id": 1, "clock": 0}, ARRAYS)
        data = bytearray(server.sock.recv(1 << 20))
        data[HEADER.size + 1] ^= 0x20  # '"worker_id"' becomes invalid JSON
        with pytest.raises(AuthenticationError, match="COMMIT frame failed authentication"):
            framing.read_frame(io.BytesIO(bytes(data)).readinto, LIMITS, server.protection)


@pytest.mark.parametrize("nonce", [" 0" * 32, "AB" * 32, "0x" + "0" * 62])
def test_nonces_are_strict_lowercase_hex(nonce):
    data = raw_frame(json.dumps({"nonce": nonce, "sealed": False}).encode(), msg_type=1)
    with pytest.raises(ProtocolError, match="lowercase hexadecimal"):
        parse_frame(data, LIMITS)


def test_version_3_peers_are_refused_by_name():
    with pytest.raises(ProtocolError, match="unsupported protocol version 3 \\(expected 4\\)"):
        parse_frame(raw_frame(b"{}", version=3), LIMITS)


def test_sealed_records_move_to_the_next_key_at_the_budget_on_both_sides():
    key = bytes(range(32))
    sender, receiver = FrameSeal(key, budget=3000), FrameSeal(key, budget=3000)
    record, opened = bytearray(1000 + TAG_SIZE), bytearray(1000)
    for i in range(10):
        data = bytes([i]) * 1000
        sender.seal_into(data, b"", record)
        receiver.open_into(record, b"", opened)
        assert opened == data
    assert sender.updates == receiver.updates == 3
    stale = FrameSeal(key, budget=10**9)  # a peer that does not update cannot follow
    with pytest.raises(AuthenticationError):
        for _ in range(4):
            sender.seal_into(b"x" * 1000, b"", record)
            stale.open_into(record, b"", opened)
