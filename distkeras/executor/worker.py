"""The per-partition training function that runs in a Spark task.

train_partition: Arrow batches of one partition in, one summary row out. It rebuilds the
model, authenticates with the parameter server, spills the partition (or the shard the
driver sends over that connection) to a local file (row_source.SpillSource: memory does not
grow with the rows), and alternates windows of local steps (local_steps.WindowRunner) with
the algorithm's exchange. No sockets beyond the Client.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable

import numpy as np

from distkeras.algorithms.base import Algorithm
from distkeras.errors import WorkerError
from distkeras.executor.backend import use_backend, window_runner
from distkeras.executor.hosted import HostedServer, ServerPlan
from distkeras.model_spec import ModelSpec

logger = logging.getLogger(__name__)

SUMMARY_SCHEMA = (
    "worker long, rows long, first_epoch long, samples long, commits long, seconds double, "
    "spill_bytes long, memory_growth long, "
    "learning_rates array<double>, "  # the rate at the end of each epoch; NaN: a schedule's
    "pid long, "  # the Python worker's process: Spark reuses it (and its built model) across fits
    "host string, devices string, gpu_addresses array<string>, cuda_visible_devices string, "
    "visible_devices array<string>"  # executor.devices.TaskDevices.summary
)


@dataclasses.dataclass
class WorkerPlan:
    """Everything a worker needs, shipped inside the Spark task closure.

    Attributes:
        model: the model to rebuild, with the worker's compile settings.
        algorithm: the exchange rule.
        address: the parameter server's (host, port).
        secret: the run's shared secret for the handshake (never in the repr).
        require_encryption: the server seals its sessions; refuse one that does not.
        feature_cols, label_cols: columns in the order of the model's inputs and outputs.
        input_shapes: per input, the shape (without batch) to reshape flat rows to, or None.
        batch_size, num_epoch, shuffle, seed: local training settings.
        timeout: seconds any single call to the server may take.
        report_interval: minimum seconds between two progress reports.
        threads: TensorFlow intra-op threads (Spark's cpus per task).
        backend: the driver's Keras backend, which the worker must run (executor.backend).
        custom_objects: classes and functions the model refers to by name.
        first_epoch: the epoch to start from (a resumed run skips the epochs it has done).
        hosted: for a run whose server lives in the cluster, what worker 0 needs to host
            it (`address` is then the one worker 0 shares); None: the server is the driver's.
        on_exchange: called as `on_exchange(worker_id, commits)` after every exchange with
            the server, inside the task (the tests inject faults through it); None: nothing.
        weight_col: the column of per-row loss weights, or None.
        class_weight: {class index: weight} multiplying the rows' weights, or None.
        steps_per_epoch: this worker's batches per epoch, or None for all its rows.
        direct: the rows come over the connection to the server (`Client.shard`), not
            from the partition, which is then empty.
        allow_cpu_fallback: train on the CPU when Spark gave GPUs that TensorFlow cannot
            see (executor.devices.task_devices); False: fail naming them.
        server_key: the server's public key, pinned by every worker (for a server in the
            cluster, the one worker 0 shares); None: the secret alone.
    """

    model: ModelSpec
    algorithm: Algorithm
    address: tuple
    secret: bytes = dataclasses.field(repr=False)
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
    hosted: ServerPlan | None = None
    on_exchange: Callable[[int, int], None] | None = None
    weight_col: str | None = None
    class_weight: dict | None = None
    steps_per_epoch: int | None = None
    require_encryption: bool = False
    direct: bool = False
    allow_cpu_fallback: bool = False
    server_key: str | None = None
    backend: str = "tensorflow"

    @property
    def columns(self) -> list[str]:
        """The columns this worker reads."""
        return self.feature_cols + self.label_cols + ([self.weight_col] if self.weight_col else [])

    def epoch_rows(self, rows: int) -> int:
        """The rows of one epoch: all `rows`, or `steps_per_epoch` batches if fewer."""
        if self.steps_per_epoch is None:
            return rows
        return min(rows, self.steps_per_epoch * self.batch_size)


def train_partition(plan: WorkerPlan, batches):
    """Spark `mapInArrow` function: trains on this partition and yields one summary row."""
    import pyarrow as pa
    from pyspark import BarrierTaskContext

    context = BarrierTaskContext.get()
    worker_id = context.partitionId()
    try:
        if plan.hosted is None:
            summary = _train(plan, worker_id, batches)
        else:
            with HostedServer(plan, context) as (address, server_key):
                hosted = dataclasses.replace(plan, address=address, server_key=server_key)
                summary = _train(hosted, worker_id, batches)
    except Exception as error:
        raise WorkerError(f"worker {worker_id} failed: {describe(error)}") from error
    # Spark reuses a Python worker (and its imports) only if it read all its input.
    for _ in batches:
        pass
    yield pa.RecordBatch.from_pylist([summary])


def describe(error: BaseException) -> str:
    """One line naming the error: its type, first line and, if longer, its last line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = " ... ".join(dict.fromkeys(lines[:1] + lines[-1:]))
    return f"{type(error).__name__}: {text}"


def _train(plan: WorkerPlan, worker_id: int, batches) -> dict:
    from distkeras.executor.memory import PeakGrowth
    from distkeras.executor.model_cache import model_and_runner
    from distkeras.executor.row_source import SpillSource
    from distkeras.ps.client import Client

    started = time.monotonic()
    # Before the model: the backend (fails naming both), then the task's devices (TensorFlow).
    devices = use_backend(plan.backend, plan.threads, plan.allow_cpu_fallback)
    model, runner = model_and_runner(
        plan.model,
        plan.custom_objects,
        plan.batch_size,
        lambda m: window_runner(plan.backend, m, plan.batch_size),
    )
    growth = PeakGrowth()  # from here on, memory should not grow with the partition
    with Client(
        plan.address,
        plan.secret,
        worker_id=worker_id,
        timeout=plan.timeout,
        require_encryption=plan.require_encryption,
        server_key=plan.server_key,
    ) as client:
        rows = _shard_batches(client, plan.columns) if plan.direct else batches
        with SpillSource(rows, plan.columns) as source:
            summary = _train_epochs(plan, worker_id, model, runner, source, client)
    rates = summary.pop("learning_rates")
    return {  # in SUMMARY_SCHEMA's order
        **summary,
        "seconds": time.monotonic() - started,
        "spill_bytes": source.nbytes,
        "memory_growth": growth.bytes(),
        "learning_rates": rates,
        "pid": os.getpid(),
        **devices.summary(),
    }


def _shard_batches(client, columns: list[str]):
    """The worker's shard, received from the driver chunk by chunk, as Arrow batches."""
    from distkeras.data import arrow_table

    for arrays in client.shard():
        yield from arrow_table(dict(zip(columns, arrays)), packed=True).to_batches()


def _model_data(plan: WorkerPlan, columns: dict, model) -> tuple:
    """(x, y, sample_weight) of some rows, structured as the model takes them."""
    from distkeras.data import reshaped
    from distkeras.executor.model_data import pack, row_weights

    features = reshaped(columns, plan.feature_cols, plan.input_shapes)
    labels = [columns[name] for name in plan.label_cols]
    weights = row_weights(
        labels[0], columns[plan.weight_col] if plan.weight_col else None, plan.class_weight
    )
    return pack(model, "inputs", features), pack(model, "outputs", labels), weights


def _train_epochs(plan: WorkerPlan, worker_id: int, model, runner, source, client) -> dict:
    """Alternates windows of local steps with the algorithm's exchange, epoch after epoch.

    A window larger than a piece of the shuffle buffer (e.g. a whole epoch) is trained in
    pieces of whole batches and exchanged once, at its end.
    """
    from distkeras.executor.learning_rate import RateFollower

    algorithm = plan.algorithm
    window_rows = (algorithm.window or 1 << 40) * plan.batch_size
    piece_rows = plan.batch_size * max(1, min(window_rows, source.piece_rows) // plan.batch_size)
    rng = np.random.default_rng(None if plan.seed is None else plan.seed + worker_id)
    rates = RateFollower(model.optimizer)
    epoch_rates = []  # the rate in force at the end of each epoch, for the summary
    samples = commits = 0
    diverged = False
    reference = algorithm.local_weights(client.pull(), worker_id)
    model.set_weights(reference)
    rates.follow(client.published)  # a rate the driver set before training: from step one
    first_epoch = max(plan.first_epoch, client.epoch)  # later in a retried stage
    epoch_rows = plan.epoch_rows(source.rows)
    client.report(
        epoch=first_epoch,
        samples=0,
        steps=0,
        rows=epoch_rows,
        steps_per_epoch=-(-epoch_rows // plan.batch_size),
    )
    last_report = time.monotonic()

    def report_progress(**extra) -> None:  # the current epoch's steps, logs and rate
        if rates.rate is not None:
            extra["learning_rate"] = rates.rate
        client.report(epoch=epoch, samples=done, steps=steps, logs=runner.logs(), **extra)

    for epoch in range(first_epoch, plan.num_epoch):
        runner.reset()
        reader = source.epoch(rng if plan.shuffle else None)
        done = in_window = steps = 0
        while (
            done < epoch_rows
            and (
                columns := reader.take(min(piece_rows, window_rows - in_window, epoch_rows - done))
            )
            is not None
        ):
            steps += runner.run(*_model_data(plan, columns, model))
            taken = len(columns[plan.feature_cols[0]])
            done += taken
            in_window += taken
            if in_window < window_rows and reader.remaining and done < epoch_rows:
                continue
            in_window = 0
            local = model.get_weights()
            if not runner.finite_loss() or not all(np.isfinite(w).all() for w in local):
                logger.warning(
                    "worker %d: its loss or weights became NaN or infinite by step %d of "
                    "epoch %d; it stops without committing them",
                    worker_id,
                    steps,
                    epoch + 1,
                )
                diverged = True  # the epoch's report carries the loss (TerminateOnNaN)
                break
            weights, reference = algorithm.worker_rule(local, reference, client)
            model.set_weights(weights)
            rates.follow(client.published)
            commits += 1
            if plan.on_exchange is not None:
                plan.on_exchange(worker_id, commits)
            if client.stop_requested:
                break
            if time.monotonic() - last_report >= plan.report_interval:
                report_progress()
                last_report = time.monotonic()
        samples += done
        epoch_rates.append(math.nan if rates.rate is None else rates.rate)
        report_progress(epoch_done=True)
        if client.stop_requested or diverged:
            break
    client.leave()
    client.report(finished=True, samples=samples)
    return {
        "worker": worker_id,
        "rows": source.rows,
        "first_epoch": first_epoch,
        "samples": samples,
        "commits": commits,
        "learning_rates": epoch_rates,
    }
