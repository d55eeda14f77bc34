"""The driver's view of a training run, built from the workers' progress reports.

TrainingMonitor runs on the driver's main thread while the Spark job runs in a background
thread: it draws the progress bar, closes an epoch once every worker has finished it, runs
validation on the center weights, and drives Keras callbacks (History among them).
"""

from __future__ import annotations

import logging
import queue
import sys
import time

import numpy as np

from distkeras.errors import WorkerError

logger = logging.getLogger(__name__)

STARTUP_GRACE = 180.0  # seconds a worker may take to start before its first report


class TrainingMonitor:
    """Follows one training run.

    Args:
        model: the driver's compiled Keras model; it receives the center weights at every
            epoch end, before validation and callbacks see it.
        callbacks: a keras.callbacks.CallbackList (with History) bound to `model`.
        num_workers: workers in the run.
        epochs: epochs each worker trains.
        verbose: 0 (silent) or 1 (progress bar).
        validation: an optional inputs.ValidationSet, evaluated on the center weights at
            the ends of the epochs it selects.
        worker_timeout: seconds a worker may stay silent before the run fails.
        first_epoch: the first epoch of this run (a resumed run starts later).
        checkpointer: an optional checkpoint.Checkpointer, asked at every loop turn.
    """

    def __init__(
        self,
        model,
        callbacks,
        num_workers: int,
        epochs: int,
        verbose: int = 1,
        validation=None,
        worker_timeout: float = 600.0,
        first_epoch: int = 0,
        checkpointer=None,
    ):
        self.model = model
        self.server = None
        self.callbacks = callbacks
        self.num_workers = num_workers
        self.epochs = epochs
        self.verbose = verbose
        self.validation = validation
        self.worker_timeout = worker_timeout
        self.reports: queue.Queue = queue.Queue()
        self.rows: dict[int, int] = {}
        self.progress: dict[int, tuple[int, int]] = {}  # worker -> (epoch, samples)
        self.latest_logs: dict[int, dict] = {}
        self.finished: dict[int, dict[int, dict]] = {}  # epoch -> worker -> logs
        self.last_heard: dict[int, float] = {}
        self.done: set[int] = set()
        self._done_by_epoch: dict[int, set[int]] = {}  # written by on_report only
        self._centers: dict[int, list] = {}  # epoch -> center when the epoch completed
        self.epoch = first_epoch
        self.checkpointer = checkpointer
        self.retries = 0
        self.starts: dict[int, int] = {}
        self.epoch_logs: dict = {}
        self.stopped = False
        self._bar = None

    def attach(self, server) -> None:
        """Binds the run's ParameterServer, before it starts serving."""
        self.server = server

    def on_report(self, report: dict) -> None:
        """Receives a report from a server thread (the server serialises these calls).

        The report completing an epoch carries a snapshot of the center taken right then,
        so that validation sees the center of that epoch even when the driver gets to it
        after the workers have moved on.
        """
        if report.get("epoch_done"):
            done = self._done_by_epoch.setdefault(int(report["epoch"]), set())
            done.add(int(report["worker_id"]))
            if len(done) == self.num_workers:
                report = {**report, "center": self.server.get_weights()}
        self.reports.put(report)

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
        self.callbacks.on_epoch_begin(self.epoch)
        while job.is_alive():
            self._drain(timeout=0.1)
            if self.server.failure is not None:
                raise self.server.failure
            self._check_silence()
            if self.checkpointer is not None and self.checkpointer.due():
                self.checkpoint()
        self._drain(timeout=0)

    def checkpoint(self) -> None:
        """Writes the server's center, clock and the epochs completed, if checkpointing."""
        if self.checkpointer is not None and self.server is not None:
            weights, clock = self.server.get_weights(), self.server.clock
            self.checkpointer.write(self.model, weights, clock, self.epoch)

    def _drain(self, timeout: float) -> None:
        try:
            report = self.reports.get(timeout=timeout) if timeout else self.reports.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(report)
            self._draw()
            try:
                report = self.reports.get_nowait()
            except queue.Empty:
                return

    def _check_silence(self) -> None:
        now = time.monotonic()
        for worker, heard in self.last_heard.items():
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

    def _handle(self, report: dict) -> None:
        worker = int(report["worker_id"])
        self.last_heard[worker] = time.monotonic()
        if report.get("finished"):
            self.done.add(worker)
            return
        if "rows" in report:  # a worker's first report: a second one means a retried stage
            self.starts[worker] = self.starts.get(worker, 0) + 1
            self.retries = max(self.retries, self.starts[worker] - 1)
            self.rows[worker] = int(report["rows"])
        epoch = int(report.get("epoch", 0))
        logs = report.get("logs") or {}
        if logs:
            self.latest_logs[worker] = logs
        self.progress[worker] = (epoch, int(report.get("samples", 0)))
        if "center" in report:
            self._centers[epoch] = report["center"]
        if report.get("epoch_done"):
            self.finished.setdefault(epoch, {})[worker] = logs
            self.progress[worker] = (epoch + 1, 0)
        while not self.stopped and self.epoch < self.epochs and self._epoch_complete(self.epoch):
            self._close_epoch(self.epoch)

    def _epoch_complete(self, epoch: int) -> bool:
        return len(self.finished.get(epoch, {})) == self.num_workers

    def _close_epoch(self, epoch: int) -> None:
        logs = mean_logs(self.finished[epoch].values())
        center = self._centers.pop(epoch, None)
        self.model.set_weights(center if center is not None else self.server.get_weights())
        if self.validation is not None and self.validation.due(epoch):
            logs.update(self.validation.evaluate(self.model))
        if self._bar is not None:
            self._bar.stateful_metrics.update(logs)
            self._bar.update(self._bar.target, values=list(logs.items()), finalize=True)
            self._bar = None
        self.epoch = epoch + 1  # epochs completed, also if a callback interrupts below
        self.server.set_epoch(self.epoch)
        self.epoch_logs = logs
        self.latest_logs = {}
        self.callbacks.on_epoch_end(epoch, logs)
        if getattr(self.model, "stop_training", False):
            logger.info("a callback stopped training after epoch %d", epoch + 1)
            self.stopped = True
            self.server.request_stop()
        elif self.epoch < self.epochs:
            self.callbacks.on_epoch_begin(self.epoch)

    def _draw(self) -> None:
        if not self.verbose or self.stopped or self.epoch >= self.epochs:
            return
        if len(self.rows) < self.num_workers:
            return
        if self._bar is None:
            import keras

            sys.stdout.write(f"Epoch {self.epoch + 1}/{self.epochs}\n")  # as keras' ProgbarLogger
            self._bar = keras.utils.Progbar(sum(self.rows.values()), verbose=self.verbose)
        done = 0
        for worker, (epoch, samples) in self.progress.items():
            done += self.rows.get(worker, 0) if epoch > self.epoch else samples
        values = list(mean_logs(self.latest_logs.values()).items())
        values.append(("updates", self.server.num_updates))
        self._bar.stateful_metrics.update(name for name, _ in values)
        self._bar.update(min(done, self._bar.target - 1), values=values)


def mean_logs(all_logs) -> dict[str, float]:
    """The mean of each metric over several workers' logs (empty logs are skipped)."""
    merged: dict[str, list[float]] = {}
    for logs in all_logs:
        for name, value in logs.items():
            merged.setdefault(name, []).append(float(value))
    return {name: float(np.mean(values)) for name, values in merged.items()}
