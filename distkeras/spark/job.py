"""A Spark action run in a background thread, so the driver can follow and cancel it.

SparkJob runs one action (e.g. `collect`) under its own job group (a job tag on Spark
Connect); `cancel` stops its tasks; errors raised by tasks come back from `result` as
WorkerError naming the worker, and Spark's barrier-slot refusal as our RuntimeError.
"""

from __future__ import annotations

import re
import threading
import uuid

from distkeras.errors import WorkerError
from distkeras.spark.facts import is_connect

_WORKER_FAILURE = re.compile(r"WorkerError: (worker \d+ failed: [^\n]*)")
_TOO_FEW_SLOTS = "requires more slots than the total number of slots"


class SparkJob(threading.Thread):
    """Runs `action()` in a daemon thread under a fresh Spark job group.

    Args:
        spark: the SparkSession.
        action: a callable that starts a Spark job and returns its result.
        description: shown in the Spark UI.
    """

    def __init__(self, spark, action, description: str = "distkeras training"):
        super().__init__(name="distkeras-spark-job", daemon=True)
        self.spark = spark
        self.action = action
        self.description = description
        self.group = f"distkeras-{uuid.uuid4().hex}"
        self._result = None
        self._error: BaseException | None = None

    def run(self) -> None:
        if is_connect(self.spark):
            self.spark.addTag(self.group)  # tags belong to this thread
        else:
            sc = self.spark.sparkContext
            sc.setJobGroup(self.group, self.description, interruptOnCancel=True)
        try:
            self._result = self.action()
        except BaseException as error:  # handed to the driver thread by result()
            self._error = error
        finally:
            if is_connect(self.spark):
                self.spark.removeTag(self.group)

    def cancel(self) -> None:
        """Cancels the job's running tasks (safe to call when it already ended)."""
        if is_connect(self.spark):
            self.spark.interruptTag(self.group)
        else:
            self.spark.sparkContext.cancelJobGroup(self.group)

    def result(self, timeout: float | None = None):
        """Waits for the job and returns its result.

        Raises:
            WorkerError: a worker failed; the message names it and gives the cause.
            TimeoutError: the job did not end within `timeout` seconds.
        """
        self.join(timeout)
        if self.is_alive():
            raise TimeoutError(f"the Spark job did not end within {timeout} s")
        if self._error is not None:
            match = _WORKER_FAILURE.search(str(self._error))
            if match:
                raise WorkerError(match.group(1)) from self._error
            if _TOO_FEW_SLOTS in str(self._error):
                raise RuntimeError(
                    "The cluster cannot run all workers at once (Spark refused the barrier "
                    "stage: too few task slots). Lower `num_workers` or add executors."
                ) from self._error
            raise self._error
        return self._result
