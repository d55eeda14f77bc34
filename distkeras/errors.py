"""Exceptions raised by distkeras.

DistKerasError is the root; ProtocolError and AuthenticationError describe problems on
the wire between workers and the parameter server; WorkerError carries a failed worker's
cause back to the driver; DeviceError says a task cannot use the GPUs Spark gave it.
"""


class DistKerasError(Exception):
    """Base class of every distkeras-specific error."""


class ProtocolError(DistKerasError):
    """A peer sent bytes that do not follow the distkeras wire protocol."""


class AuthenticationError(ProtocolError):
    """A peer failed the HMAC challenge/response handshake."""


class WorkerError(DistKerasError):
    """A training worker failed; the message names the worker and the cause."""


class DeviceError(DistKerasError, RuntimeError):
    """A task cannot use the GPUs Spark gave it; the message names them and what the
    framework sees."""
