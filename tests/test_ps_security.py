"""The parameter server against an on-path attacker without the secret (loopback only).

A Relay forwards one client's connection to the server and may flip, inject or repeat
bytes on the way; the center must not change by anything the relay did.
"""

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from distkeras.errors import DistKerasError
from distkeras.parameter_server import Client, ParameterServer
from distkeras.ps.wire import framing, protection
from distkeras.ps.wire.framing import HEADER_SIZE
from distkeras.ps.wire.protection import TAG_SIZE
from distkeras.ps.wire.schema import CLIENT_HANDSHAKE_LIMITS, MsgType
from distkeras.ps.wire.stream import Stream

from .wire_helpers import shut_down

SHAPES = [(4, 3), (5,)]
DEADLINE = 10.0  # seconds any relay or test loop may run


def zeros():
    return [np.zeros(s, np.float32) for s in SHAPES]


def ones():
    return [np.ones(s, np.float32) for s in SHAPES]


def response_size() -> int:
    """Bytes of the client's RESPONSE frame (fixed: hex digests and nonce, worker id 0)."""
    meta = {"digest": "00" * 32, "nonce": "00" * 32, "worker_id": 0}
    return HEADER_SIZE + len(json.dumps(meta, separators=(",", ":")))


def commit_size(arrays, clock=0) -> tuple[int, int]:
    """(bytes before the payload, total bytes) of a tagged or sealed COMMIT frame of
    `arrays`: a tag after the metadata, one after the payload (records of 1 MiB at most)."""
    buffers = framing.encode(MsgType.COMMIT, {"worker_id": 0, "clock": clock}, arrays)
    total = sum(memoryview(b).nbytes for b in buffers) + 2 * TAG_SIZE
    return len(buffers[0]) + TAG_SIZE, total


class Relay:
    """Forwards one connection to `target`, passing client-to-server bytes through `tamper`.

    Args:
        target: The server's address.
        tamper: `tamper(chunk, offset)` returns the bytes to forward for the client's bytes
            `chunk` starting at stream offset `offset`.
    """

    def __init__(self, target, tamper=lambda chunk, offset: chunk):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.target = target
        self.tamper = tamper
        self.recorded = bytearray()  # everything the client sent
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.listener.settimeout(DEADLINE)
        client, _ = self.listener.accept()
        server = socket.create_connection(self.target, timeout=DEADLINE)
        pumps = [
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True),
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True),
        ]
        for pump in pumps:
            pump.start()
        for pump in pumps:
            pump.join(DEADLINE)
        client.close()
        server.close()

    def _pump(self, source, sink, upstream):
        source.settimeout(DEADLINE)
        offset = 0
        try:
            while chunk := source.recv(1 << 16):
                if upstream:
                    self.recorded += chunk
                    data = self.tamper(chunk, offset)
                    offset += len(chunk)
                else:
                    data = chunk
                sink.sendall(data)
        except OSError:
            pass
        shut_down(source, sink)

    def close(self):
        self.thread.join(DEADLINE)
        self.listener.close()
        assert not self.thread.is_alive()


def at(position, edit):
    """A tamper function applying `edit(chunk, index)` to the chunk holding `position`."""

    def tamper(chunk, offset):
        if offset <= position < offset + len(chunk):
            return edit(chunk, position - offset)
        return chunk

    return tamper


def attack(tamper, encryption=False):
    """An honest client commits ones through a relay; returns (server, client's error)."""
    ps = ParameterServer(zeros(), encryption=encryption).start()
    relay = Relay(ps.address, tamper)
    error = None
    try:
        with Client(
            relay.address, ps.secret, timeout=5, connect_timeout=5, require_encryption=encryption
        ) as client:
            client.commit(ones())
            client.pull()
    except (DistKerasError, OSError) as exc:
        error = exc
    finally:
        relay.close()
        ps.stop()
    return ps, error


def assert_untouched(ps):
    assert ps.num_updates == 0
    for center in ps.get_weights():
        np.testing.assert_array_equal(center, 0)


def test_relay_passing_bytes_unchanged_is_harmless():
    ps, error = attack(lambda chunk, offset: chunk)
    assert error is None
    assert ps.num_updates == 1


@pytest.mark.parametrize("where", ["header", "metadata", "payload", "tag"])
def test_byte_flipping_relay_changes_nothing(where):
    before_payload, total = commit_size(ones())
    offset = {"header": 12, "metadata": HEADER_SIZE + 2, "payload": before_payload + 4}
    position = response_size() + offset.get(where, total - 1)

    def flip(chunk, index):
        return chunk[:index] + bytes([chunk[index] ^ 0x01]) + chunk[index + 1 :]

    ps, error = attack(at(position, flip))
    assert error is not None  # the honest client learns its connection was tampered with
    assert_untouched(ps)
    assert ps.stats()["rejected"] == 1


@pytest.mark.parametrize("flags", [0, framing.FLAG_TAGGED, framing.FLAG_SEALED])
def test_injecting_relay_changes_nothing(flags):
    """After the honest handshake, the relay slips in its own COMMIT of huge values (plain,
    with a made-up tag, or as made-up sealed records on an encrypting server)."""
    head, *payload = framing.encode(
        MsgType.COMMIT,
        {"worker_id": 0, "clock": 0},
        [np.full(s, 1e6, np.float32) for s in SHAPES],
        flags,
    )
    tag = b"\x00" * TAG_SIZE
    payload = b"".join(bytes(b) for b in payload)
    injected = {
        0: bytes(head) + payload,
        framing.FLAG_TAGGED: bytes(head) + payload + tag,
        framing.FLAG_SEALED: bytes(head) + tag + payload + tag,
    }[flags]
    tamper = at(response_size(), lambda chunk, i: chunk[:i] + injected + chunk[i:])
    ps, error = attack(tamper, encryption=flags == framing.FLAG_SEALED)
    assert error is not None
    assert_untouched(ps)


@pytest.mark.parametrize("encryption", [False, True])
def test_relay_repeating_a_commit_applies_it_once(encryption):
    _, total = commit_size(ones())
    start = response_size()

    seen = bytearray()

    def repeat(chunk, offset):  # once the commit has passed, send it again
        seen.extend(chunk)
        end = start + total
        if offset < end <= offset + len(chunk):
            i = end - offset
            return chunk[:i] + bytes(seen[start:end]) + chunk[i:]
        return chunk

    ps, error = attack(repeat, encryption)
    assert error is not None
    assert ps.num_updates == 1  # the original, never its replay
    for center in ps.get_weights():
        np.testing.assert_array_equal(center, 1)


def test_recorded_session_replayed_verbatim_changes_nothing():
    ps = ParameterServer(zeros()).start()
    try:
        relay = Relay(ps.address)
        with Client(relay.address, ps.secret, timeout=5) as client:
            client.commit(ones())
        relay.close()
        assert ps.num_updates == 1
        with socket.create_connection(ps.address, timeout=5) as sock:
            stream = Stream(sock)
            assert stream.read(CLIENT_HANDSHAKE_LIMITS).type is MsgType.CHALLENGE
            sock.sendall(bytes(relay.recorded))
            reply = stream.read(CLIENT_HANDSHAKE_LIMITS)
            assert reply.type is MsgType.ERROR and "wrong secret" in reply.meta["error"]
        deadline = time.monotonic() + DEADLINE
        while ps.stats()["rejected"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ps.num_updates == 1
        for center in ps.get_weights():
            np.testing.assert_array_equal(center, 1)
    finally:
        ps.stop()


# ----------------------------------------------------------------------------- deadlines, caps


def server_threads():
    return [t for t in threading.enumerate() if t.name.startswith("distkeras-ps-conn")]


def honest_round_trip(ps) -> float:
    started = time.monotonic()
    with Client(ps.address, ps.secret, worker_id=1, timeout=5, connect_timeout=5) as client:
        client.pull()
    return time.monotonic() - started


def test_trickling_and_idle_peers_cannot_hold_the_server():
    """200 peers sending a byte every 0.5 s and 200 silent ones: each is dropped by the
    handshake deadline (or for a newer one past the cap), and an honest client is served
    within a second throughout."""
    handshake = 2.0
    ps = ParameterServer(zeros(), handshake_timeout=handshake).start()
    peers = []
    try:
        for _ in range(400):
            peers.append(socket.create_connection(ps.address, timeout=5))
        last_connect = time.monotonic()
        tricklers = peers[::2]
        waits, peak = [], 0
        while time.monotonic() < last_connect + handshake + 1.0:  # bounded by time
            for sock in tricklers:
                try:
                    sock.send(b"D")
                except OSError:
                    pass  # dropped by the server: the point
            waits.append(honest_round_trip(ps))
            peak = max(peak, len(server_threads()))
            time.sleep(0.5)
        assert max(waits) < 1.0, waits
        assert peak <= 64 + 2  # the cap on handshakes in progress (plus the honest client)
        deadline = time.monotonic() + 5.0
        while server_threads() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server_threads()
        assert ps.stats()["unauthenticated"] == 0
        assert honest_round_trip(ps) < 1.0
    finally:
        for sock in peers:
            sock.close()
        ps.stop()


def test_refused_peer_trickling_is_dropped_within_a_second():
    with ParameterServer(zeros()) as ps, socket.create_connection(ps.address, timeout=5) as sock:
        sock.sendall(b"\x00junk" + bytes(100))
        refused = time.monotonic()
        closed = False
        while not closed and time.monotonic() - refused < 5.0:
            try:
                sock.send(b"x")
                closed = sock.recv(1 << 16, socket.MSG_DONTWAIT) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed = True
            time.sleep(0.1)
        assert closed and time.monotonic() - refused < 1.5


def test_failed_thread_start_refuses_one_connection_only(monkeypatch):
    start = threading.Thread.start
    failures = []

    def start_or_fail(thread):
        if thread.name.startswith("distkeras-ps-conn") and not failures:
            failures.append(thread.name)
            raise RuntimeError("can't start new thread")
        return start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_or_fail)
    ps = ParameterServer(zeros()).start()
    try:
        # The first connection is closed at once; the client retries the cut handshake.
        with Client(ps.address, ps.secret, timeout=2, connect_timeout=2) as client:
            client.pull()
        assert len(failures) == 1
        assert honest_round_trip(ps) < 1.0  # the accept loop lives on
    finally:
        ps.stop()  # never raises for the thread that never started
    assert not server_threads()


def test_out_of_descriptors_backs_off_quietly_and_recovers():
    job = Path(__file__).parent / "jobs" / "out_of_descriptors.py"
    done = subprocess.run([sys.executable, str(job)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert 1 <= result["log_lines"] <= 3, result  # it happened, and was logged once or so
    assert result["cpu_seconds"] < 0.5, result  # no spinning on a readable listener
    assert result["recovered_in"] < 3.0, result


# ----------------------------------------------------------------------------- addresses


@pytest.mark.parametrize("host, family", [("0.0.0.0", socket.AF_INET), ("::", socket.AF_INET6)])
def test_wildcard_bind_advertises_a_reachable_host(host, family, caplog):
    if family == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    with caplog.at_level("WARNING", logger="distkeras"):
        with ParameterServer(zeros(), host=host, advertise_host="127.0.0.1") as ps:
            assert ps.address[0] == host
            assert ps.advertised_address == ("127.0.0.1", ps.address[1])
            assert ps.encrypted  # beyond loopback: encrypted by default
            address = ps.advertised_address
            with Client(address, ps.secret, timeout=5, require_encryption=True) as client:
                client.pull()
    assert "all interfaces" in caplog.text
    assert ps.secret.hex() not in caplog.text


def test_wildcard_bind_without_advertise_host_gives_this_machines_address():
    with ParameterServer(zeros(), host="0.0.0.0") as ps:
        host, port = ps.advertised_address
        assert host not in ("0.0.0.0", "::", "")
        with Client((host, port), ps.secret, timeout=5, require_encryption=True) as client:
            client.pull()


# ----------------------------------------------------------------------------- encryption

MARK = np.float32(1234.5678).tobytes() * 4  # a recognisable run of weights


def marked():
    return [np.full(s, 1234.5678, np.float32) for s in SHAPES]


@pytest.mark.parametrize("encryption", [False, True])
def test_weights_are_readable_on_the_wire_only_without_encryption(encryption):
    with ParameterServer(zeros(), encryption=encryption) as ps:
        assert ps.encrypted == encryption
        relay = Relay(ps.address)
        with Client(relay.address, ps.secret, timeout=5) as client:
            client.commit(marked())
            pulled = client.pull()
        relay.close()
        np.testing.assert_array_equal(pulled[0], marked()[0])
        assert (MARK in bytes(relay.recorded)) != encryption


def test_byte_flipping_relay_changes_nothing_when_encrypted():
    chunks = []

    def flip_after_the_handshake(chunk, offset):
        # Chunk 1 is the RESPONSE; from 2 on, the sealed COMMIT (the client waits for the
        # server's WELCOME between them, so they arrive apart).
        chunks.append(len(chunk))
        if len(chunks) < 2:
            return chunk
        return chunk[:-1] + bytes([chunk[-1] ^ 1])

    ps, error = attack(flip_after_the_handshake, encryption=True)
    assert len(chunks) >= 2 and error is not None
    assert_untouched(ps)


def test_a_client_requiring_encryption_refuses_a_server_without_it():
    with ParameterServer(zeros(), encryption=False) as ps:
        with pytest.raises(DistKerasError, match="does not encrypt"):
            Client(ps.address, ps.secret, timeout=5, require_encryption=True)
        assert ps.num_updates == 0


def test_an_encrypting_server_seals_the_session_of_any_client():
    """The server decides: a client that does not require encryption gets it all the same."""
    with ParameterServer(zeros(), encryption=True) as ps:
        relay = Relay(ps.address)
        with Client(relay.address, ps.secret, timeout=5) as client:
            client.commit(marked())
        relay.close()
        assert ps.num_updates == 1
        assert MARK not in bytes(relay.recorded)
        deadline = time.monotonic() + 3.0
        while server_threads() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server_threads()


# ----------------------------------------------------------------------------- version 4


@pytest.mark.parametrize("field", ["nonce", "worker_id"])
def test_a_flipped_handshake_byte_fails_before_admission(field):
    """A relay flips a byte of the RESPONSE (the client's nonce, its worker id): the server
    refuses the handshake before admitting anyone, so the round-mode worker is not removed
    from the round set and connects afterwards."""
    meta = {"digest": "00" * 32, "nonce": "00" * 32, "worker_id": 0}
    raw = json.dumps(meta, separators=(",", ":"))
    value = raw.index(f'"{field}":') + len(field) + {"nonce": 4, "worker_id": 3}[field]
    position = response_size() - len(raw) + value  # the value's first digit

    def flip(chunk, index):
        return chunk[:index] + bytes([chunk[index] ^ 0x01]) + chunk[index + 1 :]

    ps = ParameterServer(zeros(), round_rule=lambda center, commits: None, num_workers=1)
    with ps:
        relay = Relay(ps.address, at(position, flip))
        with pytest.raises(DistKerasError):
            Client(relay.address, ps.secret, 0, timeout=5, connect_timeout=5)
        relay.close()
        assert ps.stats()["rejected"] == 1
        with Client(ps.address, ps.secret, 0, timeout=5) as client:  # still in the round set
            client.commit(ones())
        assert ps.num_updates == 1


def test_an_encrypted_session_updates_its_keys_at_the_budget(monkeypatch):
    monkeypatch.setattr(protection, "KEY_BUDGET", 200)  # bytes: every few records
    with ParameterServer(zeros(), encryption=True) as ps:
        with Client(ps.address, ps.secret, timeout=5, require_encryption=True) as client:
            for _ in range(5):
                client.commit(ones())
                client.pull()
            seals = client._stream.protection
            assert seals.send_seal.updates > 2 and seals.recv_seal.updates > 2
        assert ps.num_updates == 5
        for center in ps.get_weights():
            np.testing.assert_array_equal(center, 5)
