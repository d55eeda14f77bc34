"""Stream: one connected socket's framed I/O, counted each way, under its session's protection.

The protection is plain until the handshake gives the stream its keys (`protect`); reads
can be bounded by a deadline. `check_reply` reads a server's reply the way every client
request does. `configure` sets the socket options every connection uses.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from typing import Any

from distkeras.errors import AuthenticationError, DistKerasError, ProtocolError
from distkeras.ps.wire.framing import BufferFor, Validator, read_frame
from distkeras.ps.wire.protection import PLAIN, Protection
from distkeras.ps.wire.schema import Limits, Message, MsgType

SOCKET_BUFFER = 4 << 20


def configure(sock: socket.socket) -> None:
    """No Nagle delay and large buffers: frames are big and come as request/reply."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)


class Stream:
    """Framed I/O over one connected socket, counting the bytes each way.

    Args:
        sock: A connected socket.

    Attributes:
        protection: How frames are sent and which are accepted (`PLAIN` until `protect`).
        deadline: A `time.monotonic()` by which every read must end, or None.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = 0
        self.sent = 0
        self.deadline: float | None = None
        self.protection: Protection = PLAIN

    def protect(self, protection: Protection) -> None:
        """From now on every frame is sent, and must be received, under `protection`."""
        self.protection = protection

    def recv_into(self, view: memoryview) -> int:
        """`socket.recv_into`, counted, and bounded by `deadline` when it is set.

        Raises:
            TimeoutError: The deadline passed.
        """
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("deadline passed")
            self.sock.settimeout(remaining)
        n = self.sock.recv_into(view)
        self.received += n
        return n

    def send(
        self, msg_type: MsgType, meta: dict[str, Any] | None = None, arrays: Sequence = ()
    ) -> None:
        """Encodes and sends one frame under the session's protection."""
        self.sent += self.protection.send(self.sock, msg_type, meta, arrays)

    def read(
        self,
        limits: Limits,
        validate: Validator | None = None,
        buffer_for: BufferFor | None = None,
    ) -> Message:
        """Reads one frame under the session's protection (see `framing.read_frame`)."""
        return read_frame(self.recv_into, limits, self.protection, validate, buffer_for)[0]


def check_reply(msg: Message, expected: MsgType, during: str) -> Message:
    """Returns `msg` if it has type `expected`; raises with the server's text for an ERROR.

    Raises:
        AuthenticationError: An ERROR of kind "auth".
        DistKerasError: Any other ERROR (the stream is still in sync).
        ProtocolError: A reply of another type.
    """
    if msg.type is MsgType.ERROR:
        error = msg.meta["error"]
        if msg.meta.get("kind") == "auth":
            raise AuthenticationError(f"parameter server refused the handshake: {error}")
        raise DistKerasError(f"parameter server refused {during}: {error}")
    if msg.type is not expected:
        raise ProtocolError(f"expected {expected.name} in reply to {during}, got {msg.type.name}")
    return msg
