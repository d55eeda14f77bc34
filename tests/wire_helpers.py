"""Helpers of the wire's tests: a frame parsed from bytes, the bytes a stream would send."""

import io
import socket

from distkeras.errors import ProtocolError
from distkeras.ps.wire.framing import PeerClosed, read_frame
from distkeras.ps.wire.protection import PLAIN
from distkeras.ps.wire.schema import Limits, Message


def parse_frame(data: bytes, limits: Limits) -> Message:
    """Parses exactly one plain frame from `data` (the socket path, over an in-memory stream).

    Raises:
        ProtocolError: If `data` is not exactly one valid frame.
    """
    stream = io.BytesIO(data)
    try:
        message, nbytes = read_frame(stream.readinto, limits, PLAIN)
    except PeerClosed:
        raise ProtocolError("empty input: no frame") from None
    if nbytes != len(data):
        raise ProtocolError(f"{len(data) - nbytes} trailing bytes after the frame")
    return message


class Recorder:
    """A socket stand-in that keeps the bytes sent to it."""

    def __init__(self) -> None:
        self.data = bytearray()

    def sendmsg(self, buffers) -> int:
        before = len(self.data)
        for buffer in buffers:
            self.data += buffer
        return len(self.data) - before

    def sendall(self, data) -> None:
        self.data += data


def frame_bytes(stream, msg_type, meta=None, arrays=()) -> bytes:
    """The bytes `stream` would send next, under its protection (which counts the frame)."""
    recorder = Recorder()
    stream.protection.send(recorder, msg_type, meta, arrays)
    return bytes(recorder.data)


def shut_down(*socks) -> None:
    """Shuts both directions of each socket down, ignoring the ones already closed."""
    for sock in socks:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
