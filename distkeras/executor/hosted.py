"""The parameter server of an in-cluster run, hosted in worker 0's Spark task.

ServerPlan: what worker 0 needs to host it. HostedServer: starts it in worker 0 and hands its
address to every worker through the barrier's allGather. ReportRelay: keeps the workers'
reports until the driver's observer (ps.remote.RemoteServer) fetches them.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import threading

logger = logging.getLogger(__name__)

MAX_BATCH = 64  # reports per REPORTS reply (its metadata stays far below the frame limit)


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
        session_timeout: seconds a session may stay silent (the driver's hang timeout).
        observer_key: the public key of the driver's observer, which the server pins.
    """

    port: int
    num_workers: int
    round_timeout: float
    release_timeout: float = 120.0
    encryption: bool = False
    session_timeout: float = 600.0
    observer_key: str | None = None


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
    """Worker 0 hosts the run's server; every worker gets its address and public key (to
    pin) from allGather.

    Use as a context manager around a worker's training: it yields the server's address
    and public key and, in worker 0, keeps serving until the driver has the final weights.
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
                    session_timeout=server_plan.session_timeout,
                    on_report=self.relay.on_report,
                    on_watch=self.relay.on_watch,
                    encryption=server_plan.encryption,
                    observer_key=server_plan.observer_key,
                ).start()
                self.relay.server = self.server
                message = json.dumps(
                    {"address": list(self.server.address), "key": self.server.public_key}
                )
            except OSError as exc:
                message = json.dumps({"error": f"cannot serve on {host}:{server_plan.port}: {exc}"})
        gathered = json.loads(self.context.allGather(message or "null")[0])
        if "error" in gathered:
            self._stop()
            raise RuntimeError(f"worker 0 {gathered['error']}; set `ps_port` to a free port")
        return tuple(gathered["address"]), gathered["key"]

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
