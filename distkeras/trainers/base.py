"""The trainer shared by every algorithm: validate, serve, launch, follow, return.

Trainer.train(df) and Trainer.fit(x, y, ...) check their input on the driver, start a
ParameterServer with the algorithm's rules, run the workers as one Spark barrier stage,
follow them with a TrainingMonitor (progress, validation, callbacks) and return the
compiled Keras model with the center weights. Each named trainer only picks an algorithm
from distkeras.algorithms.registry (`class ADAG(Trainer, algorithm="adag")`).
"""

from __future__ import annotations

import logging
import time

from distkeras import data, inputs, validation
from distkeras.algorithms import registry
from distkeras.algorithms.base import Algorithm
from distkeras.executor.hosted import ServerPlan
from distkeras.executor.worker import SUMMARY_SCHEMA, WorkerPlan, train_partition
from distkeras.inputs import arrays, columns, labels
from distkeras.inputs.options import FitOptions
from distkeras.model_spec import ModelSpec, compile_settings, ensure_keras_model
from distkeras.net import WILDCARD_HOSTS
from distkeras.ps.remote import RemoteServer
from distkeras.ps.server import ParameterServer
from distkeras.spark import get_spark_session, placement, warmup
from distkeras.spark.facts import client_host, task_cpus, task_max_failures, task_slots
from distkeras.spark.job import SparkJob
from distkeras.trainers.checkpoint import Checkpointer, load_checkpoint
from distkeras.trainers.monitor import STARTUP_GRACE, TrainingMonitor

logger = logging.getLogger(__name__)


class Trainer:
    """Trains a Keras model on a Spark DataFrame with `num_workers` workers.

    Args:
        keras_model: the keras.Model to train (compiled, or with `loss`/`worker_optimizer`).
        worker_optimizer: optimizer for the workers' local steps; None: the model's (EAMSGD:
            its Nesterov SGD).
        loss: loss; None: the model's.
        metrics: metrics; None: the model's.
        features_col: feature column, or a list of them for a model with several inputs.
        label_col: label column, or a list of them for a model with several outputs.
        sample_weight_col: a column of per-row loss weights (Keras' `sample_weight`), or
            None.
        batch_size: rows per local step.
        num_epoch: passes over the data.
        num_workers: parallel workers (Spark tasks, all running at once).
        communication_window: local steps between two exchanges (λ); None: the default.
        ps_host: address the parameter server binds to and workers connect to; None: the
            loopback in local mode, else `spark.driver.host`. "0.0.0.0" or "::" binds every
            interface; workers then connect to `spark.driver.host`.
        ps_port: the server's port; 0 picks a free one.
        ps_placement: where the parameter server runs: "client" (this process), "cluster"
            (in worker 0's task, for executors that cannot reach the client, e.g. over
            Spark Connect), or "auto": the client when the executors reach it, else the
            cluster (docs/cluster.md, "Spark Connect").
        ps_encryption: TLS 1.3 between workers and the server. None: on whenever the
            server listens beyond loopback; False: off (weights travel in clear, frames
            stay authenticated; see docs/cluster.md for what that protects).
        worker_timeout: seconds a worker may go without reporting before the run fails.
        custom_objects: classes and functions the model refers to by name.
        seed: seed of the workers' shuffles.
        checkpoint_dir: folder for checkpoints of the center (weights, clock, epoch),
            written every `checkpoint_interval` seconds and when the run ends or fails.
        checkpoint_interval: seconds between two periodic checkpoints.
        resume_from: a checkpoint folder to continue from: its weights and its epoch.
        **parameters: the algorithm's own arguments (e.g. `rho=5.0` for the elastic
            trainers); names and defaults are in distkeras.algorithms.registry.
    """

    spec: registry.AlgorithmSpec | None = None  # set by `class X(Trainer, algorithm="x")`
    shard_every_row = False  # rows held on the driver: every worker receives all (ensembles)

    def __init_subclass__(cls, algorithm: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if algorithm is not None:
            cls.spec = registry.spec(algorithm)

    def __init__(
        self,
        keras_model,
        worker_optimizer=None,
        loss=None,
        metrics=None,
        features_col="features",
        label_col="label",
        batch_size: int = 32,
        num_epoch: int = 1,
        num_workers: int = 2,
        communication_window: int | None = None,
        ps_host: str | None = None,
        ps_port: int = 0,
        ps_placement: str = "auto",
        ps_encryption: bool | None = None,
        worker_timeout: float = 600.0,
        custom_objects: dict | None = None,
        seed: int | None = None,
        checkpoint_dir: str | None = None,
        checkpoint_interval: float = 600.0,
        resume_from: str | None = None,
        sample_weight_col: str | None = None,
        **parameters,
    ):
        if self.spec is None:
            raise TypeError(
                "Trainer is the base class: use a named trainer (e.g. DOWNPOUR), or subclass "
                'it with an algorithm from the registry (class X(Trainer, algorithm="adag")).'
            )
        self.parameters = self._algorithm_parameters(parameters)
        self.model = ensure_keras_model(keras_model)
        self.worker_optimizer = worker_optimizer
        self.loss = loss
        self.metrics = metrics
        compile_settings(self.model, worker_optimizer, loss, metrics)  # fail early
        self.features_col = validation.column_list("features_col", features_col)
        self.label_col = validation.column_list("label_col", label_col)
        if sample_weight_col is not None and not isinstance(sample_weight_col, str):
            raise TypeError(
                "Expected `sample_weight_col` to be a column name. Received: "
                f"sample_weight_col={sample_weight_col!r}"
            )
        self.sample_weight_col = sample_weight_col
        self.batch_size = validation.positive_int("batch_size", batch_size)
        self.num_epoch = validation.positive_int("num_epoch", num_epoch)
        self.num_workers = validation.positive_int("num_workers", num_workers)
        if communication_window is not None:
            validation.positive_int("communication_window", communication_window)
        self.communication_window = communication_window
        if not isinstance(ps_port, int) or not 0 <= ps_port < 65536:
            raise ValueError(
                f"Expected `ps_port` to be a port number. Received: ps_port={ps_port!r}"
            )
        if ps_encryption not in (None, True, False):
            raise ValueError(
                "Expected `ps_encryption` to be None, True or False. "
                f"Received: ps_encryption={ps_encryption!r}"
            )
        self.ps_host = ps_host
        self.ps_port = ps_port
        self.ps_placement = placement.check_placement(ps_placement)
        self.ps_encryption = ps_encryption
        self.worker_timeout = validation.positive_number("worker_timeout", worker_timeout)
        self.custom_objects = custom_objects
        self.seed = seed
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_interval = validation.positive_number(
            "checkpoint_interval", checkpoint_interval
        )
        self.resume_from = resume_from
        self._imports = None  # the executors' early imports (warmup.start_imports)
        self.history = None
        self.parameter_server_stats: dict = {}
        self.worker_summaries: list[dict] = []
        self._training_time = 0.0

    # ----------------------------------------------------------------- public API

    def algorithm(self) -> Algorithm:
        """The algorithm of this trainer, with its parameters."""
        derived = {  # defaults that depend on the run, e.g. on num_workers
            name: parameter.value(self.num_workers, self.parameters)
            for name, parameter in self.spec.parameters.items()
            if name not in self.parameters
        }
        return self.spec.algorithm(self.window(), **self.parameters, **derived)

    def window(self) -> int | None:
        """Local steps between two exchanges: `communication_window`, else the registry's."""
        return self.communication_window or self.spec.window

    def _algorithm_parameters(self, given: dict) -> dict:
        accepted = self.spec.parameters
        unknown = sorted(set(given) - set(accepted))
        if unknown:
            takes = ", ".join(accepted) or "no algorithm parameters"
            raise TypeError(
                f"{type(self).__name__} got unexpected arguments {unknown} (it takes {takes}, "
                f"besides the Trainer arguments). Received: {given!r}"
            )
        return {  # without the defaults that depend on the run: `algorithm` computes those
            name: parameter.check(name, given.get(name, parameter.default))
            for name, parameter in accepted.items()
            if name in given or not callable(parameter.default)
        }

    def train(self, dataframe, shuffle: bool = False, verbose="auto"):
        """Trains on `dataframe` and returns the compiled model with the trained weights.

        Args:
            dataframe: a Spark DataFrame with the feature and label columns (and the
                `sample_weight_col`, if set).
            shuffle: shuffle each worker's rows at every epoch.
            verbose: 0 for silence, 1 or "auto" for a progress bar.
        """
        if not inputs.is_dataframe(dataframe):
            raise TypeError(
                "Expected a Spark DataFrame. Received: dataframe of type "
                f"{type(dataframe).__name__}"
            )
        self.fit(dataframe, epochs=self.num_epoch, verbose=verbose, shuffle=shuffle)
        return self.model

    def fit(
        self,
        x=None,
        y=None,
        batch_size: int | None = None,
        epochs: int | None = None,
        verbose="auto",
        callbacks=None,
        validation_split: float = 0.0,
        validation_data=None,
        shuffle: bool = True,
        class_weight: dict | None = None,
        sample_weight=None,
        initial_epoch: int = 0,
        steps_per_epoch: int | None = None,
        validation_steps: int | None = None,
        validation_batch_size: int | None = None,
        validation_freq=1,
    ):
        """Trains like `keras.Model.fit`, with the same arguments, and returns the `History`.

        Every argument means what it means in Keras; where a distributed run adds to the
        meaning, it says so (docs/keras_compatibility.md lists every argument and form).

        Args:
            x: a Spark DataFrame (columns from `features_col`, `label_col` and
                `sample_weight_col`); or what `keras.Model.fit` takes: numpy arrays,
                tensors, lists, dicts keyed by input names, pandas, a finite
                `tf.data.Dataset` or `keras.utils.PyDataset` or generator yielding
                `(x, y)` or `(x, y, sample_weight)`. In-memory data is read once on the
                driver and spread over the workers.
            y: labels (arrays, a list, or a dict keyed by output names) when `x` holds
                only features.
            batch_size: rows per local step on each worker; None: a dataset's own batch
                size, else the trainer's.
            epochs: the epoch to stop at; None: the trainer's `num_epoch`.
            verbose: 0, 1 or "auto".
            callbacks: Keras callbacks.
            validation_split: share of the last rows of in-memory data held out for
                validation, as Keras does (not for DataFrames, which have no order).
            validation_data: `(x_val, y_val)`, `(x_val, y_val, val_sample_weight)`, a
                dataset or a DataFrame, evaluated on the center weights at epoch ends and
                logged as `val_*`; it overrides `validation_split`.
            shuffle: shuffle each worker's rows at every epoch.
            class_weight: {class index: weight}, multiplying each row's loss weight (one
                output only).
            sample_weight: one weight per row of in-memory data.
            initial_epoch: the epoch to start at (to resume an earlier run).
            steps_per_epoch: batches per epoch over all workers together: each worker runs
                `ceil(steps_per_epoch / num_workers)` batches of its partition (fewer if
                its partition runs out). For a dataset, also the batches read from it.
            validation_steps: batches of validation data per evaluation; None: all.
            validation_batch_size: rows per validation batch; None: `batch_size`.
            validation_freq: validate every n epochs (an int), or after the listed
                1-based epochs.
        """
        options = FitOptions(
            epochs=self.num_epoch if epochs is None else epochs,
            batch_size=batch_size,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps_per_epoch,
            shuffle=shuffle,
            validation_split=validation_split,
            validation_steps=validation_steps,
            validation_batch_size=validation_batch_size,
            validation_freq=validation_freq,
        )
        if x is None:
            raise ValueError("`x` is required: the training data. Received: x=None")
        weights_by_class = labels.check_class_weight(
            class_weight, len(arrays.output_names(self.model) or [None])
        )
        fit_inputs = inputs.prepare(
            self.model,
            x,
            y,
            sample_weight,
            options=options,
            validation_data=validation_data,
            loss=compile_settings(self.model, self.worker_optimizer, self.loss)["loss"],
            features_col=self.features_col,
            label_col=self.label_col,
            sample_weight_col=self.sample_weight_col,
            spark=self._spark_for_arrays,
        )
        self._run(fit_inputs, options, callbacks, verbose, weights_by_class)
        return self.history

    def get_training_time(self) -> float:
        """Seconds the last training run took, from launch to the last worker's end."""
        return self._training_time

    # ----------------------------------------------------------------- the run

    def _spark(self):
        return get_spark_session()

    def _spark_for_arrays(self):
        """The session that in-memory inputs travel through, once they are checked: the
        executors start importing Keras while the driver converts the data."""
        spark = self._spark()
        self._imports = warmup.start_imports(spark, self.num_workers)
        return spark

    def _check_input(self, train: inputs.TrainingColumns) -> None:
        if train.held is not None:
            widths = train.widths()
        else:
            widths = data.sample_widths(train.frame, train.features + train.labels)
        validation.check_fit(
            self.model,
            {c: widths[c] for c in train.features},
            {c: widths[c] for c in train.labels},
        )

    def _check_slots(self, spark) -> int:
        slots = task_slots(spark)
        if slots is not None and slots < self.num_workers:
            raise RuntimeError(
                f"num_workers={self.num_workers}, but the cluster runs only {slots} tasks at "
                "once, and all workers must run together. Lower `num_workers`, or give Spark "
                f"more cores (e.g. master 'local[{self.num_workers}]' or more executors)."
            )
        return task_cpus(spark)

    def _server_host(self, spark) -> str:
        """The address the workers connect to (also the one bound, unless a wildcard)."""
        if self.ps_host and self.ps_host not in WILDCARD_HOSTS:
            return self.ps_host
        return client_host(spark)

    def _driver_model(self):
        if self.loss is not None or self.metrics is not None or not self.model.compiled:
            settings = compile_settings(self.model, self.worker_optimizer, self.loss, self.metrics)
            self.model.compile(**settings)
        return self.model

    def _partition(self, frame):
        """Spreads the rows over one partition per worker; a frame that already has
        `num_workers` partitions is used as it is (no shuffle)."""
        if _num_partitions(frame) == self.num_workers:
            return frame
        return frame.repartition(self.num_workers)

    def _run(
        self, fit_inputs: inputs.FitInputs, options: FitOptions, callbacks, verbose, class_weight
    ) -> None:
        import keras

        validation.check_callbacks(callbacks)
        train = fit_inputs.train
        self._check_input(train)
        spark = self._spark() if train.frame is None else train.frame.sparkSession
        threads = self._check_slots(spark)
        imports, self._imports = (
            self._imports or warmup.start_imports(spark, self.num_workers),
            None,
        )
        algorithm = self.algorithm()
        model = self._driver_model()
        epochs = options.epochs
        batch_size = options.batch_size or fit_inputs.batch_size or self.batch_size
        first_epoch = options.initial_epoch
        if self.resume_from is not None:
            resumed = int(load_checkpoint(self.resume_from, model)["epoch"])
            logger.info("resuming from %s after epoch %d", self.resume_from, resumed)
            first_epoch = max(first_epoch, resumed)
        checkpointer = (
            Checkpointer(self.checkpoint_dir, self.checkpoint_interval)
            if self.checkpoint_dir
            else None
        )
        spec = ModelSpec.from_model(
            self.model,
            self.worker_optimizer or algorithm.worker_optimizer(),
            self.loss,
            self.metrics,
        )
        verbose = 1 if verbose == "auto" else int(verbose)
        callback_list = keras.callbacks.CallbackList(  # as keras.Model.fit makes it
            callbacks,
            add_history=True,
            add_progbar=verbose != 0,
            model=model,
            verbose=verbose,
            epochs=epochs,
            steps=None,  # known once every worker has started (see TrainingMonitor)
        )
        monitor = TrainingMonitor(
            model,
            callback_list,
            self.num_workers,
            epochs,
            validation=fit_inputs.validation,
            worker_timeout=self.worker_timeout,
            first_epoch=first_epoch,
            checkpointer=checkpointer,
        )
        round_timeout = self.worker_timeout
        shards = (
            None if train.held is None else train.shards(self.num_workers, self.shard_every_row)
        )
        server = ParameterServer(
            model.get_weights(),
            rule=algorithm.server_rule,
            host=self.ps_host if self.ps_host in WILDCARD_HOSTS else self._server_host(spark),
            advertise_host=self._server_host(spark),
            port=self.ps_port,
            encryption=self.ps_encryption,
            round_rule=algorithm.round_rule if algorithm.synchronous else None,
            num_workers=self.num_workers if algorithm.synchronous else None,
            round_timeout=round_timeout,
            on_report=monitor.on_report,
            shards=shards,
        )
        job = None
        started = time.monotonic()
        model.stop_training = False
        monitor.attach(server)
        callback_list.on_train_begin()
        try:
            server.start()
            where = placement.choose(
                spark, self.ps_placement, server.address, self.num_workers, self.ps_port
            )
            hosted = None
            if where.kind == "cluster":  # in a worker's task: beyond loopback, unless opted out
                encryption = self.ps_encryption is not False
                server.stop()
                server = RemoteServer(
                    placement.observer_candidates(where),
                    server.secret,
                    model.get_weights(),
                    self.num_workers,
                    monitor.on_report,
                    connect_timeout=min(self.worker_timeout, STARTUP_GRACE),
                    tried=where.tried,
                    encrypted=encryption,
                )
                monitor.attach(server)
                hosted = ServerPlan(
                    where.port, self.num_workers, round_timeout, encryption=encryption
                )
            if train.held is not None and hosted is None:  # rows travel over the connections
                frame = spark.range(0, self.num_workers, 1, self.num_workers)  # empty tasks
            else:
                train = columns.with_frame(train, spark)
                frame = self._partition(data.columnar_frame(train.frame, train.columns))
            monitor.begin()  # on_epoch_begin: before any worker's first step
            plan = WorkerPlan(
                model=spec,
                algorithm=algorithm,
                address=server.advertised_address,
                secret=server.secret,
                require_encryption=server.encrypted,
                feature_cols=train.features,
                label_cols=train.labels,
                input_shapes=inputs.row_shapes(self.model) or [None] * len(train.features),
                batch_size=batch_size,
                num_epoch=epochs,
                shuffle=options.shuffle,
                weight_col=train.sample_weight,
                class_weight=class_weight,
                steps_per_epoch=options.worker_steps(self.num_workers),
                seed=self.seed,
                timeout=round_timeout + 60.0,
                threads=threads,
                custom_objects=self.custom_objects,
                first_epoch=first_epoch,
                hosted=hosted,
                direct=train.held is not None,
            )
            workers = frame.mapInArrow(
                lambda batches: train_partition(plan, batches), SUMMARY_SCHEMA, barrier=True
            )
            if task_max_failures(spark) > 1 and hosted is None:
                # Spark re-runs a failed barrier stage only when it feeds a shuffle.
                workers = workers.repartition(1)
            warmup.finish(imports)
            job = SparkJob(spark, workers.collect)
            job.start()
            if hosted is not None:
                server.start()  # finds worker 0's server, then follows it
            monitor.follow(job)
            self.worker_summaries = [row.asDict() for row in job.result()]
        except BaseException:
            if job is not None:
                job.cancel()
                job.join(timeout=10.0)
            raise
        finally:
            self._training_time = time.monotonic() - started
            self.parameter_server_stats = {**server.stats(), "retries": monitor.retries}
            model.set_weights(server.get_weights())
            monitor.checkpoint()
            server.stop()
        callback_list.on_train_end(monitor.epoch_logs)
        self.history = model.history


def _num_partitions(frame) -> int | None:
    try:
        return frame.rdd.getNumPartitions()
    except Exception:  # Spark Connect has no RDDs: the count is unknown
        return None
