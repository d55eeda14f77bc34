"""The driver's room where workers' progress reports come in and Keras callback events go out.

TrainingMonitor turns the reports the workers send through the parameter server into the
events `keras.Model.fit` fires, on the driver's main thread: epoch and train-batch events from
the reports, test events from validating the center. It draws nothing and keeps no history:
Keras' ProgbarLogger (the progress bar) and History are ordinary callbacks in the CallbackList,
added as `model.fit` adds them, and validation is Keras' `evaluate` with that same list.
"""

from __future__ import annotations

import logging
import queue
import time
from typing import Any

from distkeras.errors import ProtocolError, WorkerError
from distkeras.ps.ratelimit import RateLimitedLog
from distkeras.ps.wire.schema import Report
from distkeras.trainers.learning_rate import RatePublisher

logger = logging.getLogger(__name__)

STARTUP_GRACE = 180.0  # seconds a worker may take to start before its first report
MAX_INVALID_REPORTS = 3  # invalid reports from one worker before the run fails naming it


class TrainingMonitor:
    """Follows one training run and fires its callback events.

    What a batch is: one worker's local step on `batch_size` rows. An epoch has `steps` batches,
    the sum over workers of their batches per epoch (the first report of each worker gives
    its count); `steps` is in the callbacks' params once every worker has started, and it is
    what the progress bar counts to.

    When batch hooks fire: once per worker report, not once per step. A worker reports after a
    window of local steps once `report_interval` (0.5 s) has passed since its last report, and
    at the end of each of its epochs. `on_train_batch_begin(first)` and
    `on_train_batch_end(last, logs)` then name the first and last step the report adds, 0-based
    within the epoch and counted over all workers (as `model.fit` does with
    `steps_per_execution` > 1), so the indices only grow and the last one of an epoch is
    `steps - 1`. The logs are the epoch's running loss and metrics over every worker's steps so
    far (each worker's running means, weighted by its steps). Steps a worker runs in an epoch
    the driver has not begun yet are announced when that epoch begins. Batch hooks wait until
    every worker has started.

    When an epoch ends: once every worker has finished it. The model then gets the center as
    it was at that moment, validation runs on it (`on_test_begin`, `on_test_batch_*`,
    `on_test_end`), and `on_epoch_end` gets the epoch's logs plus `val_*`. A callback that sets
    `model.stop_training` (EarlyStopping, TerminateOnNaN) asks the server to stop the workers
    at their next exchange; the epoch they are in still ends, as in `model.fit`.

    After every event it hands what callbacks changed to the server: a stop request, and the
    driver optimizer's learning rate, which workers take from their next exchange
    (distkeras.learning_rate). Left to Keras: drawing, History, and what each callback does.

    Args:
        model: the driver's compiled Keras model; it receives the center weights at every
            epoch end, before validation and callbacks see it.
        callbacks: a keras.callbacks.CallbackList (with History and, unless silent, a
            ProgbarLogger) bound to `model`.
        num_workers: workers in the run.
        epochs: epochs each worker trains.
        validation: an optional inputs.ValidationSet, evaluated on the center weights at
            the ends of the epochs it selects.
        worker_timeout: seconds a worker may stay silent before the run fails.
        first_epoch: the first epoch of this run (a resumed run starts later).
        checkpointer: an optional checkpoint.Checkpointer, asked at every loop turn.
        rate_scale: the workers' learning rate over the driver's (RunPlan.rate_scale): a
            rate a callback sets is published times this.
    """

    def __init__(
        self,
        model,
        callbacks,
        num_workers: int,
        epochs: int,
        validation=None,
        worker_timeout: float = 600.0,
        first_epoch: int = 0,
        checkpointer=None,
        rate_scale: float = 1.0,
    ):
        self.model = model
        self.server = None
        self.callbacks = callbacks
        self.num_workers = num_workers
        self.epochs = epochs
        self.validation = validation
        self.worker_timeout = worker_timeout
        self.reports: queue.Queue = queue.Queue()
        self.rows: dict[int, int] = {}
        self.steps_per_epoch: dict[int, int] = {}  # worker -> its steps per epoch
        self.last_heard: dict[int, float] = {}
        self.done: set[int] = set()
        self._steps: dict[int, dict[int, int]] = {}  # epoch -> worker -> steps done
        self._logs: dict[int, dict[int, dict]] = {}  # epoch -> worker -> running logs
        self._finished: dict[int, set[int]] = {}  # epoch -> workers that finished it
        self._done_by_epoch: dict[int, set[int]] = {}  # written by on_report only
        self._centers: dict[int, tuple[list, int]] = {}  # epoch -> (center, updates) at its end
        self._announced = 0  # steps of the current epoch announced to the callbacks
        self.epoch = first_epoch
        self.checkpointer = checkpointer
        self.retries = 0
        self.starts: dict[int, int] = {}
        self.invalid_reports: dict[int | None, tuple[int, str]] = {}  # worker -> (count, last)
        self._invalid_log = RateLimitedLog(logger)
        self.epoch_logs: dict = {}
        self.stopped = False
        self._stop_sent = False
        # Built before on_train_begin: the workers keep their own rate until a callback sets one.
        self._rates = RatePublisher(model.optimizer, rate_scale)

    def attach(self, server) -> None:
        """Binds the run's ParameterServer (or placement.RemoteServer), before it serves."""
        self.server = server

    def begin(self) -> None:
        """Fires the first epoch's `on_epoch_begin`, before any worker starts."""
        self._begin_epoch(self.epoch)

    def on_report(self, report: dict) -> None:
        """Receives a report from a server thread (the server serialises these calls).

        The report completing an epoch carries a snapshot of the center and of the server's
        update count taken right then, so that validation and the epoch's update count are
        those of that epoch even when the driver gets to them after the workers moved on.
        A report that `Report.parse` refuses never raises here: it is counted and dropped
        (and logged, once per interval); `follow` fails the run once a worker sent
        `MAX_INVALID_REPORTS` of them.
        """
        try:
            parsed = Report.parse(report, self.num_workers)
        except ProtocolError as exc:
            self._refuse(report, exc)
            return
        center = None
        if parsed.epoch_done:
            done = self._done_by_epoch.setdefault(parsed.epoch, set())
            done.add(parsed.worker_id)
            if len(done) == self.num_workers:
                center = (self.server.get_weights(), self.server.num_updates)
        self.reports.put((parsed, center))

    def _refuse(self, report: Any, exc: ProtocolError) -> None:
        worker = report.get("worker_id") if isinstance(report, dict) else None
        worker = worker if type(worker) is int else None
        count = self.invalid_reports.get(worker, (0, ""))[0] + 1
        self.invalid_reports[worker] = (count, str(exc))
        self._invalid_log.warning("refused a report of worker %s: %s", worker, exc)

    def follow(self, job) -> None:
        """Handles reports until `job` (a thread running the Spark job) ends.

        Args:
            job: the thread running the workers' Spark job; `attach` came first.

        Raises:
            WorkerError: a worker stayed silent longer than `worker_timeout`.
            Exception: the server's failure, if it reports one.
        """
        started = time.monotonic()
        self.last_heard = {worker: started for worker in range(self.num_workers)}
        while job.is_alive():
            self._drain(timeout=0.1)
            if self.server.failure is not None:
                raise self.server.failure
            self._check_silence()
            self._check_invalid()
            if self.checkpointer is not None and self.checkpointer.due():
                self.checkpoint()
        self._drain(timeout=0)

    def checkpoint(self) -> None:
        """Writes the server's center, clock and the epochs completed, if checkpointing."""
        if self.checkpointer is not None and self.server is not None:
            weights, clock = self.server.snapshot()  # one read: the clock of these weights
            self.checkpointer.write(self.model, weights, clock, self.epoch)

    def _drain(self, timeout: float) -> None:
        try:
            report = self.reports.get(timeout=timeout) if timeout else self.reports.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(report)
            try:
                report = self.reports.get_nowait()
            except queue.Empty:
                return

    def _check_silence(self) -> None:
        now = time.monotonic()
        # A worker whose commit waits in a round is not hung: the round's own timeout names
        # the workers it waits for.
        waiting = self.server.waiting()
        for worker, heard in self.last_heard.items():
            if worker in waiting:
                continue
            # Before its first report a worker is still starting (Python, TensorFlow, model).
            allowed = (
                self.worker_timeout
                if worker in self.rows
                else max(self.worker_timeout, STARTUP_GRACE)
            )
            if now - heard > allowed and worker not in self.done:
                raise WorkerError(
                    f"worker {worker} sent no progress for {now - heard:.0f} s "
                    f"(worker_timeout={self.worker_timeout})"
                )

    def _check_invalid(self) -> None:
        for worker, (count, last) in list(self.invalid_reports.items()):
            if count >= MAX_INVALID_REPORTS:
                raise WorkerError(f"worker {worker} sent {count} invalid reports; the last: {last}")

    def _handle(self, item: tuple[Report, tuple | None]) -> None:
        report, center = item
        worker = report.worker_id
        self.last_heard[worker] = time.monotonic()
        if report.finished:
            self.done.add(worker)
            return
        if report.rows is not None:  # a worker's first report: a second means a retried stage
            self._started(worker, report)
        epoch = report.epoch
        if report.steps is not None:
            self._steps.setdefault(epoch, {})[worker] = report.steps
        if report.logs:
            self._logs.setdefault(epoch, {})[worker] = report.logs
        if center is not None:
            self._centers[epoch] = center
        if report.epoch_done:
            self._finished.setdefault(epoch, set()).add(worker)
        self._announce_steps()
        while not self.stopped and self.epoch < self.epochs and self._epoch_complete(self.epoch):
            self._close_epoch(self.epoch)

    def _started(self, worker: int, report: Report) -> None:
        self.starts[worker] = self.starts.get(worker, 0) + 1
        self.retries = max(self.retries, self.starts[worker] - 1)
        self.rows[worker] = report.rows
        self.steps_per_epoch[worker] = report.steps_per_epoch
        if len(self.steps_per_epoch) == self.num_workers and self._steps_total() is None:
            steps = sum(self.steps_per_epoch.values())
            self.callbacks.set_params({**self.callbacks.params, "steps": steps})
            for callback in self.callbacks.callbacks:
                # ProgbarLogger made its bar at on_epoch_begin, before the count was known;
                # Keras itself sets a bar's target late when it learns it (_finalize_progbar).
                progbar = getattr(callback, "progbar", None)
                if progbar is not None and progbar.target is None:
                    progbar.target = steps

    def _steps_total(self) -> int | None:
        return (self.callbacks.params or {}).get("steps")

    def _epoch_complete(self, epoch: int) -> bool:
        return len(self._finished.get(epoch, ())) == self.num_workers

    def _announce_steps(self) -> None:
        """Fires one pair of batch hooks for the steps of the current epoch not yet announced."""
        total = self._steps_total()
        if total is None or self.stopped or self.epoch >= self.epochs:
            return
        done = min(sum(self._steps.get(self.epoch, {}).values()), total)
        if done <= self._announced:
            return
        first, self._announced = self._announced, done
        self.callbacks.on_train_batch_begin(first)
        self.callbacks.on_train_batch_end(done - 1, self._running_logs(self.epoch))
        self._after_event()

    def _running_logs(self, epoch: int) -> dict[str, float]:
        steps, logs = self._steps.get(epoch, {}), self._logs.get(epoch, {})
        return weighted_mean_logs((steps.get(worker, 0), logs[worker]) for worker in logs)

    def _begin_epoch(self, epoch: int) -> None:
        self._announced = 0
        self.callbacks.on_epoch_begin(epoch)
        self._after_event()
        self._announce_steps()  # steps that workers ahead of the driver already ran

    def _close_epoch(self, epoch: int) -> None:
        logs = self._running_logs(epoch)
        center, updates = self._centers.pop(epoch, (None, None))
        self.model.set_weights(center if center is not None else self.server.get_weights())
        logger.info("epoch %d ended after %s server updates", epoch + 1, updates)
        for progress in (self._steps, self._logs, self._finished):
            progress.pop(epoch, None)
        if self.validation is not None and self.validation.due(epoch):
            logs.update(self.validation.evaluate(self.model, callbacks=self.callbacks))
        self.epoch = epoch + 1  # epochs completed, also if a callback interrupts below
        self.server.set_epoch(self.epoch)
        self.epoch_logs = logs
        self.callbacks.on_epoch_end(epoch, logs)
        if getattr(self.model, "stop_training", False):
            logger.info("a callback stopped training after epoch %d", epoch + 1)
            self.stopped = True
            self._after_event()
        elif self.epoch < self.epochs:
            self._begin_epoch(self.epoch)

    def _after_event(self) -> None:
        """Passes what a callback changed on to the server: a stop request (once), and the
        learning rate, which workers take from their next exchange."""
        if getattr(self.model, "stop_training", False) and not self._stop_sent:
            self._stop_sent = True
            self.server.request_stop()
        self._rates.update(self.server.publish)


def weighted_mean_logs(weighted_logs) -> dict[str, float]:
    """The mean of each metric over several workers' (steps, logs), weighted by steps.

    Workers' logs are running means over their steps, so the weighted mean is the running
    mean over all their steps. Logs of zero steps are skipped.
    """
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for steps, logs in weighted_logs:
        for name, value in logs.items():
            sums[name] = sums.get(name, 0.0) + steps * float(value)
            weights[name] = weights.get(name, 0.0) + steps
    return {name: sums[name] / weights[name] for name in sums if weights[name] > 0}
