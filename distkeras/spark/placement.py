"""Where a run's parameter server lives: on the client, or inside the cluster.

choose: the placement of a run (forced, or probed by a Spark stage: can the executors reach
the client?). The in-cluster server itself is executor.hosted's HostedServer; the driver
follows it through ps.remote's RemoteServer.
"""

from __future__ import annotations

import dataclasses
import logging
import socket

from distkeras.net import is_loopback
from distkeras.spark.facts import is_connect

logger = logging.getLogger(__name__)

PLACEMENTS = ("auto", "client", "cluster")
PROBE_TIMEOUT = 5.0  # seconds an executor tries to reach the client's server


@dataclasses.dataclass
class Placement:
    """A run's placement.

    Attributes:
        kind: "client" or "cluster".
        port: the port of the in-cluster server (kind "cluster").
        hosts: executor hosts the in-cluster server may be on (kind "cluster").
        tried: what the probe tried and found, for error messages.
    """

    kind: str
    port: int = 0
    hosts: list = dataclasses.field(default_factory=list)
    tried: str = ""


def check_placement(placement: str) -> str:
    """Returns `placement` if it is one of PLACEMENTS, else raises ValueError naming it."""
    if placement not in PLACEMENTS:
        raise ValueError(
            f"Expected `ps_placement` to be one of {list(PLACEMENTS)}. "
            f"Received: ps_placement={placement!r}"
        )
    return placement


def advertised(address: tuple) -> tuple:
    """The address executors are given for the client's server (the bound one)."""
    return address


def free_port() -> int:
    """A port that is free on this machine now (the in-cluster server's, if none is given)."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def choose(spark, placement: str, address: tuple, num_workers: int, port: int = 0) -> Placement:
    """Decides where the server of a run lives.

    "cluster" is taken as given. "client" and "auto" keep the server on the client on a
    classic session and wherever the address is a loopback one (the executors run here);
    on a remote Connect session a probe asks the executors: "auto" moves the server into
    the cluster when they cannot reach the client, "client" fails at once, by name.

    Args:
        spark: the session.
        placement: "auto", "client" or "cluster".
        address: where the client's server listens (host, port).
        num_workers: tasks of the probe (one barrier stage, like the training).
        port: the in-cluster server's port; 0 picks one.

    Raises:
        RuntimeError: a forced "client" placement the executors cannot reach.
    """
    target = advertised(address)
    if placement != "cluster" and (is_loopback(target[0]) or not is_connect(spark)):
        return Placement("client", tried=f"{target[0]}:{target[1]}")
    results = probe(spark, target, num_workers)
    failures = [r["error"] for r in results if r["error"]]
    tried = f"{target[0]}:{target[1]} (from the executors: {failures[0] if failures else 'ok'})"
    if not failures and placement != "cluster":
        return Placement("client", tried=tried)
    if placement == "client":
        raise RuntimeError(
            f"The executors cannot reach the parameter server on the client at {tried}. "
            "Use ps_placement='cluster' or 'auto', or a `ps_host` they can reach."
        )
    hosts = sorted({r["host"] for r in results})
    logger.info("parameter server placed in the cluster (client at %s)", tried)
    return Placement("cluster", port=port or free_port(), hosts=hosts, tried=tried)


def probe(spark, address: tuple, num_workers: int) -> list[dict]:
    """One barrier stage of `num_workers` tasks: each tries to reach `address` and returns
    its executor's host and the error it met (empty when it connected)."""
    host, port = address

    def attempt(batches):
        import pyarrow as pa
        from pyspark import BarrierTaskContext

        context = BarrierTaskContext.get()
        for _ in batches:
            pass
        try:
            with socket.create_connection((host, port), timeout=PROBE_TIMEOUT):
                error = ""
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc}"
        own = context.getTaskInfos()[context.partitionId()].address.rsplit(":", 1)[0]
        yield pa.RecordBatch.from_pylist([{"host": own, "error": error}])

    frame = spark.range(num_workers, numPartitions=num_workers)
    rows = frame.mapInArrow(attempt, "host string, error string", barrier=True).collect()
    return [row.asDict() for row in rows]


def observer_candidates(placement: Placement) -> list[tuple]:
    """The addresses the driver tries for the in-cluster server: each executor host."""
    return [(host, placement.port) for host in placement.hosts]
