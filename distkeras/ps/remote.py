"""The driver's observer of an in-cluster parameter server.

RemoteServer follows the server worker 0 hosts (executor.hosted) over an authenticated
observer connection and stands in for a local ParameterServer in the TrainingMonitor.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from distkeras.errors import DistKerasError
from distkeras.ps.wire.handshake import KeyShare
from distkeras.ps.wire.schema import OBSERVER_ID

logger = logging.getLogger(__name__)

POLL_INTERVAL = 0.1  # seconds between two polls of an in-cluster server
LOST_GRACE = 30.0  # seconds a lost in-cluster server has for its Spark job to report why


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
        identity: KeyShare | None = None,
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
        self._weights_clock = 0  # the clock of the center in `_weights`
        self._stats: dict = {}
        self._epoch = 0
        self._stop = False
        self._published: dict = {}
        self._client = None
        self._error: Exception | None = None
        self._lost_at: float | None = None
        self._closing = threading.Event()
        # The server pins its public half (`observer_key`): only this driver observes.
        self._identity = identity or KeyShare()
        self._thread = threading.Thread(target=self._follow, name="distkeras-observer", daemon=True)

    @property
    def observer_key(self) -> str:
        """The public key the in-cluster server must pin for this observer (`observer_key`)."""
        return self._identity.nonce

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

    def waiting(self) -> set[int]:
        """Workers waiting in a round: unknown here (the observer sees only reports)."""
        return set()

    def start(self) -> RemoteServer:
        """Starts following the server (call once the Spark job runs)."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops following, keeps the center as it is now, and closes the connection."""
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(10.0)
        if self._client is not None:
            self._pull()
            self._client.close()

    def _pull(self) -> None:
        try:
            self._weights = self._client.pull()
            self._weights_clock = int(self._client.clock)
        except (OSError, DistKerasError) as exc:
            logger.debug("could not pull from the in-cluster server: %s", exc)

    def get_weights(self) -> list:
        """The center as last fetched (the final one once every worker finished)."""
        if self._client is not None and not self._closing.is_set():
            self._pull()
        return [np.array(w, copy=True) for w in self._weights]

    def snapshot(self) -> tuple[list, int]:
        """The center as `get_weights` gives it, and the clock it was pulled at."""
        weights = self.get_weights()
        return weights, self._weights_clock

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
                        identity=self._identity,
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
                    self.on_report(report)  # checks it: a bad report is refused there
                    if isinstance(report, dict) and report.get("finished") is True:
                        finished.add(report.get("worker_id"))
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
