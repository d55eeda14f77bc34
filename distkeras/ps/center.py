"""The center variable under its lock: what a commit does to it, and nothing about sockets.

Center: the arrays, the clock, staleness statistics, stop/epoch state and published fields.
AsyncCenter: applies each commit at once through the algorithm's server rule.
RoundCenter: gathers one commit per live worker, then applies the round rule once.

The center is a sequence of immutable versions: an update writes the next version into a
spare buffer (checked finite before it is published), so a reply can send the version it
pinned without copying it, while later commits go on.
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


MAX_SPARE = 2  # unpinned old versions kept for reuse as the next one's buffer


def add_rule(center: list[np.ndarray], arrays: list[np.ndarray], staleness: int) -> None:
    """The default server rule (DOWNPOUR): adds each committed array to the center."""
    del staleness
    for c, a in zip(center, arrays):
        np.add(c, a, out=c)


class Center:
    """The center weights and the counters that go with them, all guarded by one lock.

    Args:
        arrays: The initial center, owned from now on (not copied).
        finite_only: Refuse any update that would leave a NaN or Inf in the center.
    """

    round_mode = False

    def __init__(self, arrays: list[np.ndarray], finite_only: bool = True) -> None:
        self._arrays = arrays  # the current version: never written once published
        self._finite_only = finite_only
        self._pins: dict[int, int] = {}  # id(version) -> replies still sending it
        self._spare: list[list[np.ndarray]] = []
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
        return self.snapshot()[0]

    def snapshot(self) -> tuple[list[np.ndarray], int]:
        """A consistent copy of the center and the clock it is at."""
        with self._lock:
            return [c.copy() for c in self._arrays], self._clock

    def set_weights(self, arrays: Sequence[np.ndarray]) -> None:
        """Makes a copy of `arrays` (pre-checked to match) the center."""
        with self._lock:
            version = self._new_version()
            for c, a in zip(version, arrays):
                np.copyto(c, a)
            self._publish_version(version)

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

    def waiting(self) -> set[int]:
        """Workers whose commit waits for others (a round); none outside round mode."""
        return set()

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
        """The worker's connection ended, said goodbye or not (it may come back)."""

    def depart(self, worker_id: int) -> None:
        """The worker has no more data (LEAVE) or is done (GOODBYE)."""

    def status(self) -> dict[str, Any]:
        """Reply metadata: clock, stop flag and the published fields."""
        with self._lock:
            return self._status()

    def pull(self) -> tuple[dict[str, Any], list[np.ndarray]]:
        """The reply metadata and the current version, pinned: `release` it once sent."""
        with self._lock:
            self._raise_if_failed()
            return self._status(), self._pin()

    def release(self, version: list[np.ndarray]) -> None:
        """Unpins a version returned by `pull` or `commit`; its buffer may then be reused."""
        with self._lock:
            key = id(version)
            if self._pins[key] > 1:
                self._pins[key] -= 1
                return
            del self._pins[key]
            if version is not self._arrays:
                self._recycle(version)

    def commit(
        self, worker_id: int, clock: int, arrays: list[np.ndarray], pull: bool = False
    ) -> tuple[dict[str, Any], list[np.ndarray] | None]:
        """Applies one commit stamped with the worker's `clock`.

        Args:
            worker_id: The committing worker.
            clock: The clock of the worker's last pull.
            arrays: The commit, shaped like the center.
            pull: Also return the center right after this commit, pinned (see `pull`).

        Returns:
            (reply metadata, the pinned center or None).

        Raises:
            Refused: The commit was not applied.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers (lock held)

    def _status(self) -> dict[str, Any]:
        return {**self._published, "clock": self._clock, "stop": self._stop_requested}

    def _pin(self) -> list[np.ndarray]:
        key = id(self._arrays)
        self._pins[key] = self._pins.get(key, 0) + 1
        return self._arrays

    def _new_version(self) -> list[np.ndarray]:
        return self._spare.pop() if self._spare else [np.empty_like(a) for a in self._arrays]

    def _recycle(self, version: list[np.ndarray]) -> None:
        if len(self._spare) < MAX_SPARE:
            self._spare.append(version)

    def _publish_version(self, version: list[np.ndarray]) -> None:
        old, self._arrays = self._arrays, version
        if id(old) not in self._pins:
            self._recycle(old)

    def _apply(self, rule: Callable | None, operands: list[list[np.ndarray]]) -> str | None:
        """Publishes `rule(center, operands)` (the rule updates its first argument in place) as
        the next version, or, when that would leave a NaN or Inf in it, leaves the center as
        it was and returns which array. `operands`: lists of arrays shaped like the center.
        `rule` None: the sum of the center and the one operand, computed out of place.
        """
        version = self._new_version()
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught below
                if rule is None:
                    for new, old, delta in zip(version, self._arrays, operands[0]):
                        np.add(old, delta, out=new)
                else:
                    for new, old in zip(version, self._arrays):
                        np.copyto(new, old)
                    rule(version, operands)
            reason = nonfinite_reason(version, "center") if self._finite_only else None
        except BaseException:
            self._recycle(version)
            raise
        if reason is None:
            self._publish_version(version)
        else:
            self._recycle(version)
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

    def commit(self, worker_id, clock, arrays, pull=False):
        with self._lock:
            self._raise_if_failed()
            staleness = self._record_staleness(clock)

            def rule(center, ops):
                self._rule(center, ops[0], staleness)

            try:  # the plain sum (DOWNPOUR's, ADAG's rule) is computed out of place
                reason = self._apply(None if self._rule is add_rule else rule, [arrays])
            except Exception as exc:  # a broken rule may have half-updated the center: fatal
                logger.exception("server rule failed")
                self._fail(DistKerasError(f"server rule raised {exc!r}"))
                raise Refused(f"parameter server failed: {self._failure}") from exc
            if reason is not None:
                raise Refused(_nonfinite_refusal(arrays, reason))
            self._num_updates += 1
            self._clock += 1
            return self._status(), self._pin() if pull else None


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

    def waiting(self) -> set[int]:
        with self._lock:
            return set(self._pending)

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
        # A connection cut without GOODBYE or LEAVE keeps the worker in the round set: a
        # task retry reconnects it, and a worker that never comes back fails the round by
        # its timeout, naming it.
        with self._lock:
            self._attached.discard(worker_id)

    def depart(self, worker_id):
        with self._cond:
            if worker_id in self._live and worker_id not in self._pending:
                self._live.discard(worker_id)
                logger.info("worker %d left the round set", worker_id)
                self._complete_round_if_ready()

    def commit(self, worker_id, clock, arrays, pull=False):
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
            return self._status(), self._pin() if pull else None

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
            reason = self._apply(self._round_rule, commits)
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
