"""The trainer's option groups: where its parameter server runs, and its checkpoints.

ServerOptions: host, port, placement and encryption of a run's parameter server.
CheckpointOptions: where and how often the center is saved, and where a run resumes from.
Each checks its values on construction and names the argument in its errors.
"""

from __future__ import annotations

import dataclasses

from distkeras import validation
from distkeras.net import WILDCARD_HOSTS
from distkeras.spark.placement import check_placement


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """Where a run's parameter server runs and how it talks.

    Attributes:
        host: address to bind and advertise; None: the loopback in local mode, else
            `spark.driver.host`. A wildcard ("0.0.0.0", "::") binds every interface and
            advertises `spark.driver.host`.
        port: the server's port; 0 picks a free one.
        placement: "client", "cluster" or "auto" (docs/cluster.md, "Spark Connect").
        encryption: seal the sessions (AES-256-GCM); None: whenever the server listens
            beyond loopback.
    """

    host: str | None = None
    port: int = 0
    placement: str = "auto"
    encryption: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port < 65536:
            raise ValueError(
                f"Expected `ps_port` to be a port number. Received: ps_port={self.port!r}"
            )
        if self.encryption not in (None, True, False):
            raise ValueError(
                "Expected `ps_encryption` to be None, True or False. "
                f"Received: ps_encryption={self.encryption!r}"
            )
        check_placement(self.placement)

    def bind_host(self, reachable: str) -> str:
        """The address to bind: the wildcard if one was given, else `reachable`."""
        return self.host if self.host in WILDCARD_HOSTS else reachable

    def reachable_host(self, client_host: str) -> str:
        """The address workers connect to: `host` unless it is a wildcard, else
        `client_host` (what the Spark session says executors reach this process at)."""
        if self.host and self.host not in WILDCARD_HOSTS:
            return self.host
        return client_host


@dataclasses.dataclass(frozen=True)
class CheckpointOptions:
    """Checkpoints of the center, and the checkpoint a run resumes from.

    Attributes:
        directory: folder for checkpoints (weights, clock, epoch); None: none are written.
        interval: seconds between two periodic checkpoints.
        resume_from: a checkpoint folder to continue from: its weights and its epoch.
    """

    directory: str | None = None
    interval: float = 600.0
    resume_from: str | None = None

    def __post_init__(self) -> None:
        validation.positive_number("checkpoint_interval", self.interval)
