"""The center variable under its lock: what a commit does to it, and nothing about sockets.

Center: the arrays, the clock, staleness statistics, stop/epoch state and published fields.
AsyncCenter: applies each commit at once through the algorithm's server rule.
RoundCenter: gathers one commit per live worker, then applies the round rule once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from distkeras.errors import DistKerasError

logger = logging.getLogger(__name__)

ServerRule = Callable[[list[np.ndarray], list[np.ndarray], int], None]
RoundRule = Callable[[list[np.ndarray], list[list[np.ndarray]]], None]


class Refused(DistKerasError):
    """A request the center will not apply; the worker is told why, the center is untouched."""


def all_finite(array: np.ndarray) -> bool:
    """True if `array` has no NaN or Inf (one allocation-free pass when it has none)."""
    if array.dtype.kind != "f":
        return True
    with np.errstate(over="ignore", invalid="ignore"):
        total = array.sum()
    if np.isfinite(total):
        return True  # any NaN or Inf makes the sum non-finite
    return bool(np.isfinite(array).all())  # the sum may merely have overflowed


def nonfinite_reason(arrays: Sequence[np.ndarray], what: str) -> str | None:
    """Names the first of `arrays` holding a NaN or Inf, or None if all are finite."""
    for i, array in enumerate(arrays):
        if not all_finite(array):
            return f"{what} array {i} contains NaN or Inf"
    return None


def add_rule(center: list[np.ndarray], arrays: list[np.ndarray], staleness: int) -> None:
    """The default server rule (DOWNPOUR): adds each committed array to the center."""
    del staleness
    for c, a in zip(center, arrays):
        np.add(c, a, out=c)


class Center:
    """The center weights and the counters that go with them, all guarded by one lock.

    Args:
        arrays: The initial center, owned from now on (not copied).
        finite_only: Refuse any update that would leave a NaN or Inf in the center. The
            update is then computed on a copy and swapped in only when finite.
    """

    round_mode = False

    def __init__(self, arrays: list[np.ndarray], finite_only: bool = True) -> None:
        self._arrays = arrays
        self._finite_only = finite_only
        self._scratch: list[np.ndarray] | None = None
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._clock = 0
        self._num_updates = 0
        self._staleness_sum = 0
        self._staleness_count = 0
        self._staleness_max = 0
        self._rejected = 0
        self._stop_requested = False
        self._stopping = False
        self._failure: Exception | None = None
        self._published: dict[str, Any] = {"epoch": 0}

    # ------------------------------------------------------------------ driver side

    @property
    def clock(self) -> int:
        with self._lock:
            return self._clock

    @property
    def num_updates(self) -> int:
        with self._lock:
            return self._num_updates

    @property
    def failure(self) -> Exception | None:
        with self._lock:
            return self._failure

    def get_weights(self) -> list[np.ndarray]:
        """A consistent copy of the center."""
        with self._lock:
            return [c.copy() for c in self._arrays]

    def set_weights(self, arrays: Sequence[np.ndarray]) -> None:
        """Copies `arrays` (pre-checked to match) into the center."""
        with self._lock:
            for c, a in zip(self._arrays, arrays):
                np.copyto(c, a)

    def publish(self, **fields: Any) -> None:
        """Adds `fields` (JSON values) to the metadata of every later reply."""
        with self._lock:
            self._published.update(fields)

    def request_stop(self) -> None:
        with self._lock:
            self._stop_requested = True

    def shut_down(self) -> None:
        """Refuses every later request and wakes waiters."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def count_rejected(self) -> None:
        with self._lock:
            self._rejected += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            count = self._staleness_count
            return {
                "num_updates": self._num_updates,
                "clock": self._clock,
                "mean_staleness": self._staleness_sum / count if count else 0.0,
                "max_staleness": self._staleness_max,
                "rejected": self._rejected,
            }

    # ------------------------------------------------------------------ worker side

    def admit(self, worker_id: int) -> dict[str, Any]:
        """Registers a connecting worker; returns the WELCOME fields.

        Raises:
            Refused: If this worker may not join.
        """
        with self._lock:
            return {"clock": self._clock, "round_mode": self.round_mode}

    def detach(self, worker_id: int) -> None:
        """The worker's connection closed."""

    def depart(self, worker_id: int) -> None:
        """The worker has no more data (LEAVE)."""

    def status(self) -> dict[str, Any]:
        """Reply metadata: clock, stop flag and the published fields."""
        with self._lock:
            return self._status()

    def pull(self, snapshot: list[np.ndarray]) -> dict[str, Any]:
        """Copies the center into `snapshot`; returns the reply metadata."""
        with self._lock:
            self._raise_if_failed()
            self._copy_into(snapshot)
            return self._status()

    def commit(
        self,
        worker_id: int,
        clock: int,
        arrays: list[np.ndarray],
        snapshot: list[np.ndarray] | None = None,
    ) -> dict[str, Any]:
        """Applies one commit stamped with the worker's `clock`.

        Args:
            worker_id: The committing worker.
            clock: The clock of the worker's last pull.
            arrays: The commit, shaped like the center.
            snapshot: If given, receives the center right after this commit.

        Returns:
            The reply metadata.

        Raises:
            Refused: The commit was not applied.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers (lock held)

    def _status(self) -> dict[str, Any]:
        return {**self._published, "clock": self._clock, "stop": self._stop_requested}

    def _copy_into(self, snapshot: list[np.ndarray] | None) -> None:
        if snapshot is not None:
            for dst, src in zip(snapshot, self._arrays):
                np.copyto(dst, src)

    def _apply(self, update: Callable[[list[np.ndarray]], None]) -> str | None:
        """Applies `update` (in place) to the center, or, when that would leave a NaN or Inf
        in it, leaves the center as it was and returns which array.
        """
        if not self._finite_only:
            update(self._arrays)
            return None
        if self._scratch is None:
            self._scratch = [np.empty_like(a) for a in self._arrays]
        for dst, src in zip(self._scratch, self._arrays):
            np.copyto(dst, src)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught just below
            update(self._scratch)
        reason = nonfinite_reason(self._scratch, "center")
        if reason is None:
            self._arrays, self._scratch = self._scratch, self._arrays
        return reason

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise Refused(f"parameter server failed: {self._failure}")
        if self._stopping:
            raise Refused("parameter server is stopping")

    def _record_staleness(self, client_clock: int) -> int:
        if client_clock > self._clock:
            raise Refused(f"commit clock {client_clock} is ahead of the server clock {self._clock}")
        staleness = self._clock - client_clock
        self._staleness_sum += staleness
        self._staleness_count += 1
        self._staleness_max = max(self._staleness_max, staleness)
        return staleness

    def _fail(self, failure: Exception) -> None:
        """Records a fatal condition and wakes waiters."""
        if self._failure is None:
            self._failure = failure
            logger.error("parameter server failed: %s", failure)
        self._cond.notify_all()


class AsyncCenter(Center):
    """Applies each commit at once: `rule(center, arrays, staleness)` under the lock.

    Args:
        arrays: The initial center.
        rule: The algorithm's server rule, mutating the center in place.
    """

    def __init__(
        self, arrays: list[np.ndarray], rule: ServerRule | None = None, finite_only: bool = True
    ) -> None:
        super().__init__(arrays, finite_only)
        self._rule = rule or add_rule

    def commit(self, worker_id, clock, arrays, snapshot=None):
        with self._lock:
            self._raise_if_failed()
            staleness = self._record_staleness(clock)
            try:
                reason = self._apply(lambda center: self._rule(center, arrays, staleness))
            except Exception as exc:  # a broken rule may have half-updated the center: fatal
                logger.exception("server rule failed")
                self._fail(DistKerasError(f"server rule raised {exc!r}"))
                raise Refused(f"parameter server failed: {self._failure}") from exc
            if reason is not None:
                raise Refused(_nonfinite_refusal(arrays, reason))
            self._num_updates += 1
            self._clock += 1
            self._copy_into(snapshot)
            return self._status()


class RoundCenter(Center):
    """Commits of one round wait until every live worker 0..num_workers-1 has committed;
    then `round_rule(center, commits)` is applied once.

    Args:
        arrays: The initial center.
        round_rule: The algorithm's round rule, mutating the center in place.
        num_workers: Size of the round set.
        round_timeout: Seconds a round may wait for missing workers before the server fails.
        finite_only: Refuse a round whose result would hold a NaN or Inf: every commit of
            it gets the reason, the center is left as it was and the round starts over.
    """

    round_mode = True

    def __init__(
        self,
        arrays: list[np.ndarray],
        round_rule: RoundRule,
        num_workers: int,
        round_timeout: float,
        finite_only: bool = True,
    ) -> None:
        super().__init__(arrays, finite_only)
        self._round_rule = round_rule
        self._num_workers = num_workers
        self._round_timeout = round_timeout
        self._live: set[int] = set(range(num_workers))  # workers expected in every round
        self._attached: set[int] = set()  # worker ids with an open connection
        self._pending: dict[int, list[np.ndarray]] = {}  # this round's commits
        self._round_deadline = 0.0
        self._attempt = 0  # +1 per completed or refused round
        self._refusal: tuple[int, str] | None = None  # (attempt, reason) of a refused round

    def admit(self, worker_id):
        with self._lock:
            if worker_id >= self._num_workers:
                raise Refused(
                    f"worker id {worker_id} is outside the round set 0..{self._num_workers - 1}"
                )
            if worker_id not in self._live:
                raise Refused(f"worker {worker_id} has left the round set and cannot rejoin")
            if worker_id in self._attached:
                raise Refused(f"worker {worker_id} is already connected")
            self._attached.add(worker_id)
            return {"clock": self._clock, "round_mode": True, "round_timeout": self._round_timeout}

    def detach(self, worker_id):
        with self._lock:
            self._attached.discard(worker_id)
        self.depart(worker_id)

    def depart(self, worker_id):
        with self._cond:
            if worker_id in self._live and worker_id not in self._pending:
                self._live.discard(worker_id)
                logger.info("worker %d left the round set", worker_id)
                self._complete_round_if_ready()

    def commit(self, worker_id, clock, arrays, snapshot=None):
        with self._cond:
            self._raise_if_failed()
            if worker_id not in self._live:
                raise Refused(f"worker {worker_id} has left the round set")
            if worker_id in self._pending:
                raise Refused(f"worker {worker_id} already committed round {self._clock}")
            self._record_staleness(clock)
            round_, attempt = self._clock, self._attempt
            if not self._pending:
                self._round_deadline = time.monotonic() + self._round_timeout
            # The arrays view the connection's buffer, which stays untouched while we wait.
            self._pending[worker_id] = arrays
            self._complete_round_if_ready()
            while self._attempt == attempt and self._failure is None and not self._stopping:
                remaining = self._round_deadline - time.monotonic()
                if remaining <= 0:
                    missing = sorted(self._live - self._pending.keys())
                    self._fail(
                        DistKerasError(
                            f"round {round_} timed out after {self._round_timeout:g}s "
                            f"waiting for worker(s) {missing}"
                        )
                    )
                    break
                self._cond.wait(remaining)
            if self._clock == round_:
                if self._refusal is not None and self._refusal[0] == attempt:
                    raise Refused(self._refusal[1])
                self._raise_if_failed()
            self._copy_into(snapshot)
            return self._status()

    def _fail(self, failure):
        self._pending.clear()
        super()._fail(failure)

    def _complete_round_if_ready(self) -> None:
        """Applies the round rule once every live worker has committed (lock held)."""
        if not self._pending or not self._live <= self._pending.keys():
            return
        workers = sorted(self._pending)
        commits = [self._pending[w] for w in workers]
        try:
            reason = self._apply(lambda center: self._round_rule(center, commits))
        except Exception as exc:  # a broken rule may have half-updated the center: fatal
            logger.exception("round rule failed")
            self._fail(DistKerasError(f"round rule raised {exc!r}"))
            return
        self._pending.clear()
        if reason is None:
            self._num_updates += len(commits)
            self._clock += 1
        else:
            own = [(w, nonfinite_reason(c, "commit")) for w, c in zip(workers, commits)]
            causes = [f"worker {w}'s {r}" for w, r in own if r] or [
                f"applying it would leave a NaN or Inf in the center ({reason})"
            ]
            refusal = f"round {self._clock} refused: {'; '.join(causes)}; center left untouched"
            self._refusal = (self._attempt, refusal)
            logger.warning("%s", refusal)
        self._attempt += 1
        self._cond.notify_all()


def _nonfinite_refusal(commit: Sequence[np.ndarray], reason: str) -> str:
    """Why a commit was refused: its own NaN/Inf, else the overflow it would cause."""
    own = nonfinite_reason(commit, "commit")
    if own is not None:
        return f"{own}; the center was left untouched"
    return (
        f"applying it would leave a NaN or Inf in the center ({reason}); "
        "the center was left untouched"
    )
