"""The trainer shared by every algorithm: Keras' `fit` and `train(df)` on Spark.

Trainer: checks its settings and `fit`'s input on the driver (inputs), makes a RunPlan
(trainers.plan), builds the callbacks as `keras.Model.fit` does, and carries the plan out
in a TrainingRun (trainers.run: server, Spark job, monitor, checkpoints); it returns the
History, and the compiled model holds the center weights. Each named trainer only picks an
algorithm from distkeras.algorithms.registry (`class ADAG(Trainer, algorithm="adag")`).
"""

from __future__ import annotations

import logging

from distkeras import data, inputs, integrations, validation
from distkeras.algorithms import registry
from distkeras.algorithms.base import Algorithm
from distkeras.inputs import arrays, labels
from distkeras.inputs.options import FitOptions
from distkeras.model_spec import (
    ModelSpec,
    build_like_fit,
    compile_settings,
    ensure_keras_model,
)
from distkeras.spark import get_spark_session, warmup
from distkeras.spark.facts import gpu_request, task_cpus, task_slots
from distkeras.trainers.checkpoint import Checkpointer, load_checkpoint
from distkeras.trainers.learning_rate import scaled_optimizer
from distkeras.trainers.monitor import TrainingMonitor
from distkeras.trainers.options import CheckpointOptions, ServerOptions
from distkeras.trainers.plan import FRAME, SHARDS, RunPlan
from distkeras.trainers.run import TrainingRun

logger = logging.getLogger(__name__)

DEFAULT_NUM_WORKERS = 2  # without GPUs; with them, one per GPU task slot


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
        num_workers: parallel workers (Spark tasks, all running at once). None: one per
            GPU task slot when the session requests GPUs (`spark.task.resource.gpu.amount`),
            else 2.
        communication_window: local steps between two exchanges (λ); None: the default.
        ps_host: address the parameter server binds to and workers connect to; None: the
            loopback in local mode, else `spark.driver.host`. "0.0.0.0" or "::" binds every
            interface; workers then connect to `spark.driver.host`.
        ps_port: the server's port; 0 picks a free one.
        ps_placement: where the parameter server runs: "client" (this process), "cluster"
            (in worker 0's task, for executors that cannot reach the client, e.g. over
            Spark Connect), or "auto": the client when the executors reach it, else the
            cluster (docs/cluster.md, "Spark Connect").
        ps_encryption: seal the sessions between workers and the server (AES-256-GCM under
            keys agreed in the handshake; docs/protocol.md). None: on whenever the server
            listens beyond loopback; False: off (weights travel in clear, frames stay
            authenticated; see docs/cluster.md for what that protects).
        worker_timeout: seconds a worker may go without reporting before the run fails.
        custom_objects: classes and functions the model refers to by name.
        seed: seed of the workers' shuffles.
        checkpoint_dir: folder for checkpoints of the center (weights, clock, epoch),
            written every `checkpoint_interval` seconds and when the run ends or fails.
        checkpoint_interval: seconds between two periodic checkpoints.
        resume_from: a checkpoint folder to continue from: its weights and its epoch.
        allow_cpu_fallback: when Spark gives a worker GPUs that TensorFlow cannot see (a
            CPU-only build, a driver mismatch), train on the CPU; False: the worker fails
            naming the GPUs and what TensorFlow sees (docs/cluster.md, GPUs).
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
        num_workers: int | None = None,
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
        allow_cpu_fallback: bool = False,
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
        compile_settings(self.model, worker_optimizer, loss, metrics, custom_objects)  # fail early
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
        self._sized_by_cluster = num_workers is None  # sized again at each run
        self.num_workers = (
            DEFAULT_NUM_WORKERS
            if num_workers is None
            else validation.positive_int("num_workers", num_workers)
        )
        if communication_window is not None:
            validation.positive_int("communication_window", communication_window)
        self.communication_window = communication_window
        self.server_options = ServerOptions(ps_host, ps_port, ps_placement, ps_encryption)
        self.checkpoint_options = CheckpointOptions(
            checkpoint_dir, checkpoint_interval, resume_from
        )
        self.worker_timeout = validation.positive_number("worker_timeout", worker_timeout)
        self.custom_objects = custom_objects
        self.seed = seed
        self.allow_cpu_fallback = validation.flag("allow_cpu_fallback", allow_cpu_fallback)
        self._imports = None  # the executors' early imports (warmup.start_imports)
        self.history = None
        self.plan: RunPlan | None = None  # the last fit's decisions (logged by integrations)
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
            loss=compile_settings(
                self.model, self.worker_optimizer, self.loss, custom_objects=self.custom_objects
            )["loss"],
            features_col=self.features_col,
            label_col=self.label_col,
            sample_weight_col=self.sample_weight_col,
            spark=self._spark,
        )
        with integrations.tracked_fit(self, callbacks) as callbacks:
            self._run(fit_inputs, options, callbacks, verbose, weights_by_class)
        return self.history

    def get_training_time(self) -> float:
        """Seconds the last training run took, from launch to the last worker's end."""
        return self._training_time

    # ----------------------------------------------------------------- the run

    def _spark(self):
        """The session, with the executors' early Keras import started (once per session):
        they import while the driver converts the data and builds the plan."""
        spark = get_spark_session()
        self._size(gpu_request(spark))
        self._imports = self._imports or warmup.start_imports(spark, self.num_workers)
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

    def _size(self, gpus) -> None:
        """Sets `num_workers` for a run when it was not given: the GPU task slots of a
        session that requests GPUs (`gpus`, a GpuRequest or None), else DEFAULT_NUM_WORKERS."""
        if self._sized_by_cluster:
            self.num_workers = (gpus.slots if gpus else None) or DEFAULT_NUM_WORKERS

    def _check_slots(self, spark) -> int:
        """Checks that the session runs all workers at once (by cores, then by GPUs); returns
        the workers' threads."""
        gpus = gpu_request(spark)
        self._size(gpus)
        slots = task_slots(spark)
        if slots is not None and slots < self.num_workers:
            raise RuntimeError(
                f"num_workers={self.num_workers}, but the cluster runs only {slots} tasks at "
                "once, and all workers must run together. Lower `num_workers`, or give Spark "
                f"more cores (e.g. master 'local[{self.num_workers}]' or more executors)."
            )
        if gpus is not None and gpus.slots is not None and gpus.slots < self.num_workers:
            raise RuntimeError(
                f"num_workers={self.num_workers}, but the cluster runs only {gpus.slots} GPU "
                f"tasks at once ({gpus.executors} executor(s) with {gpus.settings()}), and all "
                "workers must run together. Lower `num_workers` (None: one per GPU task "
                "slot), give each executor more GPUs (spark.executor.resource.gpu.amount), "
                "add executors, or share GPUs (spark.task.resource.gpu.amount=0.5 puts two "
                "workers on one GPU)."
            )
        return task_cpus(spark)

    def _driver_model(self, train: inputs.TrainingColumns, batch_size: int):
        """The model compiled with the trainer's overrides and, if it is not yet built,
        built from the first batch of `train` as `model.fit` builds it."""
        if self.loss is not None or self.metrics is not None or not self.model.compiled:
            settings = compile_settings(
                self.model, self.worker_optimizer, self.loss, self.metrics, self.custom_objects
            )
            self.model.compile(**settings)
        build_like_fit(self.model, lambda: train.head(batch_size).model_inputs(self.model))
        return self.model

    def _partition(self, frame):
        """Spreads the rows over one partition per worker; a frame that already has
        `num_workers` partitions is used as it is (no shuffle)."""
        if _num_partitions(frame) == self.num_workers:
            return frame
        return frame.repartition(self.num_workers)

    def _plan(
        self, fit_inputs: inputs.FitInputs, options: FitOptions, threads: int, class_weight
    ) -> RunPlan:
        """The run's decisions, from the trainer's settings and `fit`'s arguments."""
        algorithm = self.algorithm()
        first_epoch = options.initial_epoch
        resume_from = self.checkpoint_options.resume_from
        if resume_from is not None:
            resumed = int(load_checkpoint(resume_from, self.model)["epoch"])
            logger.info("resuming from %s after epoch %d", resume_from, resumed)
            first_epoch = max(first_epoch, resumed)
        train = fit_inputs.train
        worker_optimizer = self.worker_optimizer or algorithm.worker_optimizer()
        rate_scale = 1.0
        if worker_optimizer is None:  # the model's own: scaled if the algorithm says so
            scale = algorithm.adaptive_rate_scale(self.num_workers)
            worker_optimizer = scaled_optimizer(self.model.optimizer, scale)
            rate_scale = 1.0 if worker_optimizer is None else scale
        return RunPlan(
            algorithm=algorithm,
            spec=ModelSpec.from_model(
                self.model,
                worker_optimizer,
                self.loss,
                self.metrics,
                self.custom_objects,
            ),
            num_workers=self.num_workers,
            batch_size=options.batch_size or fit_inputs.batch_size or self.batch_size,
            epochs=options.epochs,
            first_epoch=first_epoch,
            data_path=SHARDS if train.held is not None else FRAME,
            shuffle=options.shuffle,
            worker_steps=options.worker_steps(self.num_workers),
            class_weight=class_weight,
            threads=threads,
            seed=self.seed,
            custom_objects=self.custom_objects,
            worker_timeout=self.worker_timeout,
            input_shapes=tuple(inputs.row_shapes(self.model) or [None] * len(train.features)),
            allow_cpu_fallback=self.allow_cpu_fallback,
            rate_scale=rate_scale,
        )

    def _run(
        self, fit_inputs: inputs.FitInputs, options: FitOptions, callbacks, verbose, class_weight
    ) -> None:
        """Trains as `keras.Model.fit` does: prepare, callbacks, the run, the end."""
        validation.check_callbacks(callbacks)
        train = fit_inputs.train
        batch_size = options.batch_size or fit_inputs.batch_size or self.batch_size
        model = self._driver_model(train, batch_size)
        self._check_input(train)
        spark = self._spark() if train.frame is None else train.frame.sparkSession
        threads = self._check_slots(spark)
        imports = self._imports or warmup.start_imports(spark, self.num_workers)
        self._imports = None
        plan = self.plan = self._plan(fit_inputs, options, threads, class_weight)

        callback_list = _callback_list(callbacks, model, verbose, plan.epochs)
        checkpoints = self.checkpoint_options
        monitor = TrainingMonitor(
            model,
            callback_list,
            plan.num_workers,
            plan.epochs,
            validation=fit_inputs.validation,
            worker_timeout=plan.worker_timeout,
            first_epoch=plan.first_epoch,
            checkpointer=(
                Checkpointer(checkpoints.directory, checkpoints.interval)
                if checkpoints.directory
                else None
            ),
            rate_scale=plan.rate_scale,
        )
        model.stop_training = False
        callback_list.on_train_begin()
        run = TrainingRun(
            spark,
            plan,
            self.server_options,
            monitor,
            train,
            partition=self._partition,
            shard_every_row=self.shard_every_row,
        )
        try:
            with run:
                self.worker_summaries = run.train(imports)
            for summary in self.worker_summaries:
                logger.info(
                    "worker %d ran on %s, pid %d: %s",
                    summary["worker"],
                    summary["host"],
                    summary["pid"],
                    summary["devices"],
                )
        finally:
            self._training_time = run.seconds
            self.parameter_server_stats = run.stats
        callback_list.on_train_end(monitor.epoch_logs)
        self.history = model.history


def _callback_list(callbacks, model, verbose, epochs: int):
    """A CallbackList with History and, unless silent, the progress bar, as `model.fit`
    makes it; the steps per epoch are known once every worker has started (the monitor)."""
    import keras

    verbose = 1 if verbose == "auto" else int(verbose)
    return keras.callbacks.CallbackList(
        callbacks,
        add_history=True,
        add_progbar=verbose != 0,
        model=model,
        verbose=verbose,
        epochs=epochs,
        steps=None,
    )


def _num_partitions(frame) -> int | None:
    try:
        return frame.rdd.getNumPartitions()
    except Exception:  # Spark Connect has no RDDs: the count is unknown
        return None
