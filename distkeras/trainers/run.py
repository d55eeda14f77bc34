"""One training run carried out: the server, the Spark job, the monitor, the checkpoints.

TrainingRun is a context manager around a RunPlan (trainers.plan). Entering it starts the
one server handle of the run (the driver's ParameterServer, or, when the executors cannot
reach the driver, a RemoteServer following the server worker 0 hosts). `train` launches the
workers as one barrier stage and follows them through the monitor. Leaving it, whatever
happened, cancels a job still running, gives the model the final center, writes the last
checkpoint and stops the server.
"""

from __future__ import annotations

import logging
import time

from distkeras import data
from distkeras.executor.backend import check_trainable
from distkeras.executor.hosted import ServerPlan
from distkeras.executor.worker import SUMMARY_SCHEMA, WorkerPlan, train_partition
from distkeras.inputs import columns
from distkeras.inputs.columns import TrainingColumns
from distkeras.model_spec import set_weights
from distkeras.ps.remote import RemoteServer
from distkeras.ps.server import ParameterServer
from distkeras.spark import placement, warmup
from distkeras.spark.backend import follow_backend
from distkeras.spark.facts import client_host, task_max_failures
from distkeras.spark.job import SparkJob
from distkeras.trainers.monitor import STARTUP_GRACE, TrainingMonitor
from distkeras.trainers.options import ServerOptions
from distkeras.trainers.plan import SHARDS, RunPlan

logger = logging.getLogger(__name__)


class TrainingRun:
    """Carries out `plan` on `spark`; use as a context manager around `train`.

    Args:
        spark: the session whose executors run the workers.
        plan: the run's decisions.
        server: where and how the parameter server runs.
        monitor: the run's TrainingMonitor (callbacks, validation, checkpoints).
        train: the rows to train on.
        partition: spreads a DataFrame's rows over the workers' partitions.
        shard_every_row: rows held on the driver go to every worker whole (ensembles).
    """

    def __init__(
        self,
        spark,
        plan: RunPlan,
        server: ServerOptions,
        monitor: TrainingMonitor,
        train: TrainingColumns,
        partition,
        shard_every_row: bool = False,
    ) -> None:
        self.spark = spark
        self.plan = plan
        self.options = server
        self.monitor = monitor
        self.train_columns = train
        self.partition = partition
        self.shard_every_row = shard_every_row
        self.server = None
        self.hosted: ServerPlan | None = None
        self.job: SparkJob | None = None
        self.summaries: list[dict] = []
        self.stats: dict = {}
        self.seconds = 0.0
        self._started = 0.0

    # ----------------------------------------------------------------- the server

    def __enter__(self) -> TrainingRun:
        self._started = time.monotonic()
        self.server = self._serve()
        return self

    def _serve(self):
        """Starts the driver's server, then asks where it must live; when the executors
        cannot reach it, the run's handle becomes a RemoteServer of worker 0's server."""
        plan, monitor, options = self.plan, self.monitor, self.options
        reachable = options.reachable_host(client_host(self.spark))
        held = self.train_columns.held is not None and plan.data_path == SHARDS
        # The server drops a session silent for longer than the monitor waits for a worker.
        session_timeout = max(plan.worker_timeout, STARTUP_GRACE)
        server = ParameterServer(
            monitor.model.get_weights(),
            rule=plan.algorithm.server_rule,
            host=options.bind_host(reachable),
            advertise_host=reachable,
            port=options.port,
            encryption=options.encryption,
            round_rule=plan.algorithm.round_rule if plan.algorithm.synchronous else None,
            num_workers=plan.num_workers if plan.algorithm.synchronous else None,
            round_timeout=plan.worker_timeout,
            session_timeout=session_timeout,
            on_report=monitor.on_report,
            shards=(
                self.train_columns.shards(plan.num_workers, self.shard_every_row) if held else None
            ),
        )
        monitor.attach(server)
        server.start()
        try:
            where = placement.choose(
                self.spark, options.placement, server.address, plan.num_workers, options.port
            )
        except BaseException:
            server.stop()
            raise
        if where.kind != "cluster":
            return server
        # In a worker's task the server listens beyond loopback: sealed unless opted out.
        encryption = options.encryption is not False
        server.stop()
        remote = RemoteServer(
            placement.observer_candidates(where),
            server.secret,
            monitor.model.get_weights(),
            plan.num_workers,
            monitor.on_report,
            connect_timeout=min(plan.worker_timeout, STARTUP_GRACE),
            tried=where.tried,
            encrypted=encryption,
        )
        monitor.attach(remote)
        self.hosted = ServerPlan(
            where.port,
            plan.num_workers,
            plan.worker_timeout,
            encryption=encryption,
            session_timeout=session_timeout,
            observer_key=remote.observer_key,
        )
        return remote

    # ----------------------------------------------------------------- the workers

    def train(self, imports=None) -> list[dict]:
        """Launches the workers, follows them to the end, and returns their summaries.

        Args:
            imports: the executors' early-import job to wait for first (spark.warmup).
        """
        frame = self._worker_rows()
        self.monitor.begin()  # on_epoch_begin: before any worker's first step
        worker_plan = self._worker_plan(backend=check_trainable(follow_backend(self.spark)))
        workers = frame.mapInArrow(
            lambda batches: train_partition(worker_plan, batches), SUMMARY_SCHEMA, barrier=True
        )
        if task_max_failures(self.spark) > 1 and self.hosted is None:
            # Spark re-runs a failed barrier stage only when it feeds a shuffle.
            workers = workers.repartition(1)
        warmup.finish(imports)
        self.job = SparkJob(self.spark, workers.collect)
        self.job.start()
        if self.hosted is not None:
            self.server.start()  # finds worker 0's server, then follows it
        self.monitor.follow(self.job)
        self.summaries = [row.asDict() for row in self.job.result()]
        return self.summaries

    def _direct(self) -> bool:
        """Rows travel over the workers' connections to the driver's server."""
        return (
            self.plan.data_path == SHARDS
            and self.train_columns.held is not None
            and self.hosted is None
        )

    def _worker_rows(self):
        """The DataFrame whose partitions the workers' tasks read: empty tasks when the rows
        come over the connections, else one partition of rows per worker."""
        if self._direct():
            return self.spark.range(0, self.plan.num_workers, 1, self.plan.num_workers)
        self.train_columns = columns.with_frame(self.train_columns, self.spark)
        train = self.train_columns
        return self.partition(data.columnar_frame(train.frame, train.columns))

    def _worker_plan(self, backend: str) -> WorkerPlan:
        plan, train = self.plan, self.train_columns
        return WorkerPlan(
            model=plan.spec,
            algorithm=plan.algorithm,
            address=self.server.advertised_address,
            secret=self.server.secret,
            require_encryption=self.server.encrypted,
            # Pinned by the workers; a server in the cluster shares its own key (HostedServer).
            server_key=None if self.hosted is not None else self.server.public_key,
            feature_cols=train.features,
            label_cols=train.labels,
            input_shapes=list(plan.input_shapes),
            batch_size=plan.batch_size,
            num_epoch=plan.epochs,
            shuffle=plan.shuffle,
            weight_col=train.sample_weight,
            class_weight=plan.class_weight,
            steps_per_epoch=plan.worker_steps,
            seed=plan.seed,
            timeout=plan.worker_timeout + 60.0,
            threads=plan.threads,
            custom_objects=plan.custom_objects,
            first_epoch=plan.first_epoch,
            hosted=self.hosted,
            direct=self._direct(),
            allow_cpu_fallback=plan.allow_cpu_fallback,
            backend=backend,
        )

    # ----------------------------------------------------------------- the end

    def __exit__(self, exc_type, *exc_info) -> None:
        try:
            if exc_type is not None and self.job is not None:
                self.job.cancel()
                self.job.join(timeout=10.0)
        finally:
            self.seconds = time.monotonic() - self._started
            # Stopped first: a worker of a failed run may still commit until its task is
            # killed, and the stats, the model's weights and the last checkpoint must be of
            # one center (a commit landed between them in a CI run: clock 40 against 39).
            self.server.stop()
            self.stats = {**self.server.stats(), "retries": self.monitor.retries}
            set_weights(self.monitor.model, self.server.get_weights())
            self.monitor.checkpoint()
