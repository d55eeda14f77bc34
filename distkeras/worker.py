"""The per-partition training function that runs in a Spark task.

train_partition: Arrow batches of one partition in, one summary row out. It rebuilds the
model, authenticates with the parameter server, and alternates windows of local steps
(local_steps.WindowRunner) with the algorithm's exchange. No sockets beyond the Client.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import numpy as np

from distkeras.algorithms.base import Algorithm
from distkeras.errors import WorkerError
from distkeras.model_spec import ModelSpec

logger = logging.getLogger(__name__)

SUMMARY_SCHEMA = (
    "worker long, rows long, first_epoch long, samples long, commits long, seconds double"
)


@dataclasses.dataclass
class WorkerPlan:
    """Everything a worker needs, shipped inside the Spark task closure.

    Attributes:
        model: the model to rebuild, with the worker's compile settings.
        algorithm: the exchange rule.
        address: the parameter server's (host, port).
        secret: the run's shared secret for the handshake.
        feature_cols, label_cols: columns in the order of the model's inputs and outputs.
        input_shapes: per input, the shape (without batch) to reshape flat rows to, or None.
        batch_size, num_epoch, shuffle, seed: local training settings.
        timeout: seconds any single call to the server may take.
        report_interval: minimum seconds between two progress reports.
        threads: TensorFlow intra-op threads (Spark's cpus per task).
        custom_objects: classes and functions the model refers to by name.
        first_epoch: the epoch to start from (a resumed run skips the epochs it has done).
        on_exchange: called as `on_exchange(worker_id, commits)` after every exchange with
            the server, inside the task (the tests inject faults through it); None: nothing.
    """

    model: ModelSpec
    algorithm: Algorithm
    address: tuple
    secret: bytes
    feature_cols: list
    label_cols: list
    input_shapes: list
    batch_size: int
    num_epoch: int
    shuffle: bool = True
    seed: int | None = None
    timeout: float = 60.0
    report_interval: float = 0.5
    threads: int = 1
    custom_objects: dict | None = None
    first_epoch: int = 0
    on_exchange: Callable[[int, int], None] | None = None


def train_partition(plan: WorkerPlan, batches):
    """Spark `mapInArrow` function: trains on this partition and yields one summary row."""
    import pyarrow as pa
    from pyspark import BarrierTaskContext

    worker_id = BarrierTaskContext.get().partitionId()
    try:
        summary = _train(plan, worker_id, batches)
    except Exception as error:
        raise WorkerError(f"worker {worker_id} failed: {describe(error)}") from error
    yield pa.RecordBatch.from_pylist([summary])


def describe(error: BaseException) -> str:
    """One line naming the error: its type, first line and, if longer, its last line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = " ... ".join(dict.fromkeys(lines[:1] + lines[-1:]))
    return f"{type(error).__name__}: {text}"


def _configure_threads(threads: int) -> None:
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        logger.debug("TensorFlow already initialised in this process; keeping its threads")


def _take(data, index):
    if isinstance(data, list):
        return [part[index] for part in data]
    return data[index]


def _train(plan: WorkerPlan, worker_id: int, batches) -> dict:
    from distkeras.data import arrow_to_numpy, model_arrays
    from distkeras.local_steps import WindowRunner
    from distkeras.model_cache import model_and_runner
    from distkeras.parameter_server import Client

    started = time.monotonic()
    columns = arrow_to_numpy(batches, plan.feature_cols + plan.label_cols)
    x, y = model_arrays(columns, plan.feature_cols, plan.label_cols, plan.input_shapes)
    rows = len(columns[plan.feature_cols[0]])
    _configure_threads(plan.threads)
    model, runner = model_and_runner(
        plan.model, plan.custom_objects, plan.batch_size, lambda m: WindowRunner(m, plan.batch_size)
    )
    algorithm = plan.algorithm
    window_rows = (algorithm.window or 1 << 40) * plan.batch_size
    rng = np.random.default_rng(None if plan.seed is None else plan.seed + worker_id)
    samples = commits = 0
    with Client(plan.address, plan.secret, worker_id=worker_id, timeout=plan.timeout) as client:
        reference = algorithm.local_weights(client.pull(), worker_id)
        model.set_weights(reference)
        first_epoch = max(plan.first_epoch, client.epoch)  # later in a retried stage
        client.report(epoch=first_epoch, samples=0, rows=rows, logs={})
        last_report = time.monotonic()
        for epoch in range(first_epoch, plan.num_epoch):
            runner.reset()
            order = rng.permutation(rows) if plan.shuffle else np.arange(rows)
            done = 0
            for start in range(0, rows, window_rows):
                index = order[start : start + window_rows]
                runner.run(_take(x, index), _take(y, index))
                weights, reference = algorithm.worker_rule(model.get_weights(), reference, client)
                model.set_weights(weights)
                done += len(index)
                commits += 1
                if plan.on_exchange is not None:
                    plan.on_exchange(worker_id, commits)
                if client.stop_requested:
                    break
                if time.monotonic() - last_report >= plan.report_interval:
                    client.report(epoch=epoch, samples=done, logs=runner.logs())
                    last_report = time.monotonic()
            samples += done
            client.report(epoch=epoch, samples=done, logs=runner.logs(), epoch_done=True)
            if client.stop_requested:
                break
        client.leave()
        client.report(finished=True, samples=samples)
    return {
        "worker": worker_id,
        "rows": rows,
        "first_epoch": first_epoch,
        "samples": samples,
        "commits": commits,
        "seconds": time.monotonic() - started,
    }
