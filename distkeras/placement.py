"""Where a run's parameter server lives: on the client, or inside the cluster.

choose: the placement of a run (forced, or probed: can the executors reach the client?).
HostedServer: in worker 0's task, the server of an in-cluster run; its address reaches the
other workers through the barrier's allGather. ReportRelay: its workers' reports, kept for
the driver. RemoteServer: on the driver, follows that server over an authenticated observer
connection and stands in for a local ParameterServer in the TrainingMonitor.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import socket
import threading
import time

import numpy as np

from distkeras.errors import DistKerasError
from distkeras.ps.protocol import OBSERVER_ID

logger = logging.getLogger(__name__)

PLACEMENTS = ("auto", "client", "cluster")
PROBE_TIMEOUT = 5.0  # seconds an executor tries to reach the client's server
POLL_INTERVAL = 0.1  # seconds between two polls of an in-cluster server
MAX_BATCH = 64  # reports per REPORTS reply (its metadata stays far below the frame limit)
LOST_GRACE = 30.0  # seconds a lost in-cluster server has for its Spark job to report why


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


@dataclasses.dataclass
class ServerPlan:
    """What worker 0 needs to host the server of an in-cluster run.

    Attributes:
        port: the port to bind on worker 0's host.
        num_workers: workers of the run (the round set of a synchronous algorithm).
        round_timeout: seconds a round may wait for missing workers.
        release_timeout: seconds worker 0 keeps serving after training, waiting for the
            driver to fetch the final weights.
        encryption: the server seals its sessions (and the driver and workers require it).
    """

    port: int
    num_workers: int
    round_timeout: float
    release_timeout: float = 120.0
    encryption: bool = False


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
    from distkeras.spark import is_connect

    target = advertised(address)
    loopback = target[0].startswith("127.") or target[0] == "localhost"
    if placement != "cluster" and (loopback or not is_connect(spark)):
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


# ---------------------------------------------------------------- in worker 0's task


class ReportRelay:
    """Keeps the workers' reports until the driver's observer fetches them (WATCH)."""

    def __init__(self) -> None:
        self.server = None
        self.released = threading.Event()
        self._reports: collections.deque = collections.deque()
        self._lock = threading.Lock()

    def on_report(self, report: dict) -> None:
        """The server's `on_report`: queues a report for the observer."""
        with self._lock:
            self._reports.append(report)

    def on_watch(self, meta: dict) -> tuple[dict, list]:
        """The server's `on_watch`: applies the driver's state, returns the queued reports."""
        self.server.set_epoch(meta["epoch"])
        if meta["stop"]:
            self.server.request_stop()
        rate = (meta.get("published") or {}).get("learning_rate")
        if type(rate) is float and math.isfinite(rate) and rate >= 0:  # a driver's callback set it
            self.server.publish(learning_rate=rate)
        if meta["release"]:
            self.released.set()
        with self._lock:
            batch = [self._reports.popleft() for _ in range(min(MAX_BATCH, len(self._reports)))]
        stats = json.loads(json.dumps(self.server.stats(), default=float))
        return {"reports": batch, "stats": stats}, []


class HostedServer:
    """Worker 0 hosts the run's server; every worker gets its address from allGather.

    Use as a context manager around a worker's training: it yields the server's address
    and, in worker 0, keeps serving until the driver has the final weights.
    """

    def __init__(self, plan, context) -> None:
        self.plan = plan
        self.context = context
        self.server = None
        self.relay = ReportRelay()

    def __enter__(self) -> tuple:
        from distkeras.ps import ParameterServer

        plan, server_plan = self.plan, self.plan.hosted
        message = None
        if self.context.partitionId() == 0:
            host = self.context.getTaskInfos()[0].address.rsplit(":", 1)[0]
            algorithm = plan.algorithm
            try:
                self.server = ParameterServer(
                    plan.model.weights,
                    rule=algorithm.server_rule,
                    host=host,
                    port=server_plan.port,
                    secret=plan.secret,
                    round_rule=algorithm.round_rule if algorithm.synchronous else None,
                    num_workers=server_plan.num_workers if algorithm.synchronous else None,
                    round_timeout=server_plan.round_timeout,
                    on_report=self.relay.on_report,
                    on_watch=self.relay.on_watch,
                    encryption=server_plan.encryption,
                ).start()
                self.relay.server = self.server
                message = json.dumps({"address": list(self.server.address)})
            except OSError as exc:
                message = json.dumps({"error": f"cannot serve on {host}:{server_plan.port}: {exc}"})
        gathered = json.loads(self.context.allGather(message or "null")[0])
        if "error" in gathered:
            self._stop()
            raise RuntimeError(f"worker 0 {gathered['error']}; set `ps_port` to a free port")
        return tuple(gathered["address"])

    def __exit__(self, exc_type, *exc_info) -> None:
        try:
            if self.server is not None and exc_type is None:
                if not self.relay.released.wait(self.plan.hosted.release_timeout):
                    logger.warning("the driver did not fetch the final weights; stopping")
        finally:
            self._stop()

    def _stop(self) -> None:
        if self.server is not None:
            self.server.stop()


# ---------------------------------------------------------------- on the driver


class RemoteServer:
    """The driver's view of an in-cluster server, shaped like a ParameterServer for the
    TrainingMonitor: reports are handed to `on_report` from a polling thread.

    Args:
        candidates: (host, port) addresses to try, in order.
        secret: the run's secret.
        weights: the initial center (returned until the server's is known).
        num_workers: workers of the run; the observer releases the server once all finished.
        on_report: the monitor's `on_report`.
        connect_timeout: seconds to find the server (it starts with the Spark job).
        tried: what the probe tried, for the error message.
        encrypted: the in-cluster server seals its sessions (the observer requires it).
    """

    def __init__(
        self,
        candidates,
        secret: bytes,
        weights,
        num_workers: int,
        on_report,
        connect_timeout: float,
        tried: str = "",
        encrypted: bool = False,
    ) -> None:
        self.candidates = list(candidates)
        self.encrypted = encrypted
        self.secret = secret
        self.num_workers = num_workers
        self.on_report = on_report
        self.connect_timeout = connect_timeout
        self.tried = tried
        self.num_updates = 0
        self.clock = 0
        self._weights = [np.array(w, copy=True) for w in weights]
        self._stats: dict = {}
        self._epoch = 0
        self._stop = False
        self._published: dict = {}
        self._client = None
        self._error: Exception | None = None
        self._lost_at: float | None = None
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="distkeras-observer", daemon=True)

    @property
    def address(self) -> tuple | None:
        """The server's address once found."""
        return self._client.address if self._client is not None else None

    @property
    def advertised_address(self) -> tuple | None:
        """As `address`: workers learn the in-cluster server's address from worker 0."""
        return self.address

    @property
    def failure(self) -> Exception | None:
        """Why the server could not be followed (after a grace period for a lost one)."""
        if self._lost_at is not None and time.monotonic() - self._lost_at < LOST_GRACE:
            return None
        return self._error

    def start(self) -> RemoteServer:
        """Starts following the server (call once the Spark job runs)."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops following and closes the connection."""
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(10.0)
        if self._client is not None:
            self._client.close()

    def get_weights(self) -> list:
        """The center as last fetched (the final one once every worker finished)."""
        client = self._client
        if client is not None and not self._closing.is_set():
            try:
                self._weights = client.pull()
            except (OSError, DistKerasError) as exc:
                logger.debug("could not pull from the in-cluster server: %s", exc)
        return [np.array(w, copy=True) for w in self._weights]

    def set_epoch(self, epoch: int) -> None:
        """Sent with the next poll."""
        self._epoch = int(epoch)

    def request_stop(self) -> None:
        """Sent with the next poll."""
        self._stop = True

    def publish(self, **fields) -> None:
        """Fields for the server to publish to its workers; sent with the next poll."""
        self._published.update(fields)

    def stats(self) -> dict:
        """The server's counters as of the last poll."""
        return {**self._stats, "placement": "cluster"}

    def _connect(self):
        from distkeras.ps import Client

        deadline = time.monotonic() + self.connect_timeout
        errors: dict = {}
        while not self._closing.is_set():
            for address in self.candidates:
                try:
                    return Client(
                        address,
                        self.secret,
                        OBSERVER_ID,
                        connect_timeout=0.5,
                        require_encryption=self.encrypted,
                    )
                except (OSError, DistKerasError) as exc:
                    errors[f"{address[0]}:{address[1]}"] = str(exc).splitlines()[0]
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        names = ", ".join(f"{a} ({e})" for a, e in errors.items()) or "none"
        raise ConnectionError(
            "Neither placement of the parameter server works: the executors cannot reach the "
            f"client at {self.tried}, and the client cannot reach the in-cluster server at "
            f"{names} within {self.connect_timeout:g} s."
        )

    def _follow(self) -> None:
        finished: set = set()
        try:
            self._client = self._connect()
            logger.info("following the in-cluster parameter server at %s:%d", *self.address)
            while not self._closing.is_set():
                meta, _ = self._client.watch(self._epoch, self._stop, published=self._published)
                self._take(meta)
                for report in meta["reports"]:
                    if report.get("finished"):
                        finished.add(report["worker_id"])
                    self.on_report(report)
                if len(finished) == self.num_workers:
                    self._weights = self._client.pull()
                    self._take(self._client.watch(self._epoch, self._stop, release=True)[0])
                    self._closing.set()  # released: the server may be gone from now on
                    return
                self._closing.wait(POLL_INTERVAL)
        except (OSError, DistKerasError) as exc:
            if self._client is not None:
                self._lost_at = time.monotonic()
            self._error = exc

    def _take(self, meta: dict) -> None:
        self._stats = meta.get("stats", self._stats)
        self.num_updates = int(self._stats.get("num_updates", self.num_updates))
        self.clock = int(meta["clock"])
