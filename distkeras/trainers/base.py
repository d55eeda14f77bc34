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

import numpy as np

from distkeras import data, placement, validation, warmup
from distkeras.algorithms import registry
from distkeras.algorithms.base import Algorithm
from distkeras.checkpoint import Checkpointer, load_checkpoint
from distkeras.model_spec import ModelSpec, compile_settings, ensure_keras_model
from distkeras.monitor import STARTUP_GRACE, TrainingMonitor
from distkeras.spark import client_host, task_cpus, task_max_failures, task_slots
from distkeras.spark_job import SparkJob
from distkeras.worker import SUMMARY_SCHEMA, WorkerPlan, train_partition

logger = logging.getLogger(__name__)

_X_COLUMN, _Y_COLUMN = "__distkeras_x{}", "__distkeras_y{}"


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
        batch_size: rows per local step.
        num_epoch: passes over the data.
        num_workers: parallel workers (Spark tasks, all running at once).
        communication_window: local steps between two exchanges (λ); None: the default.
        ps_host: address the parameter server binds to and workers connect to; None: the
            loopback in local mode, else `spark.driver.host`.
        ps_port: the server's port; 0 picks a free one.
        ps_placement: where the parameter server runs: "client" (this process), "cluster"
            (in worker 0's task, for executors that cannot reach the client, e.g. over
            Spark Connect), or "auto": the client when the executors reach it, else the
            cluster (docs/cluster.md, "Spark Connect").
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
        worker_timeout: float = 600.0,
        custom_objects: dict | None = None,
        seed: int | None = None,
        checkpoint_dir: str | None = None,
        checkpoint_interval: float = 600.0,
        resume_from: str | None = None,
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
        self.ps_host = ps_host
        self.ps_port = ps_port
        self.ps_placement = placement.check_placement(ps_placement)
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
        return self.spec.algorithm(self.window(), **self.parameters)

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
        return {
            name: parameter.check(name, given.get(name, parameter.default))
            for name, parameter in accepted.items()
        }

    def train(self, dataframe, shuffle: bool = False, verbose="auto"):
        """Trains on `dataframe` and returns the compiled model with the trained weights.

        Args:
            dataframe: a Spark DataFrame with the feature and label columns.
            shuffle: shuffle each worker's rows at every epoch.
            verbose: 0 for silence, 1 or "auto" for a progress bar.
        """
        self._run(dataframe, self.num_epoch, self.batch_size, None, None, verbose, shuffle)
        return self.model

    def fit(
        self,
        x,
        y=None,
        epochs: int | None = None,
        batch_size: int | None = None,
        validation_data=None,
        callbacks=None,
        verbose="auto",
        shuffle: bool = True,
    ):
        """Trains like `keras.Model.fit` and returns the `History`.

        Args:
            x: a Spark DataFrame (columns from `features_col`/`label_col`; `y` must be None),
                or numpy features (a list of arrays for several inputs).
            y: numpy labels (a list of arrays for several outputs) when `x` is numpy.
            epochs: passes over the data; None: `num_epoch`.
            batch_size: rows per step; None: the trainer's.
            validation_data: `(x_val, y_val)` numpy arrays or a DataFrame, evaluated on the
                center weights at each epoch end and logged as `val_*`.
            callbacks: Keras callbacks.
            verbose: 0, 1 or "auto".
            shuffle: shuffle each worker's rows at every epoch.
        """
        epochs = self.num_epoch if epochs is None else validation.positive_int("epochs", epochs)
        batch_size = (
            self.batch_size
            if batch_size is None
            else validation.positive_int("batch_size", batch_size)
        )
        spark = self._spark()
        if _is_dataframe(x):
            if y is not None:
                raise TypeError(
                    "When `x` is a DataFrame the labels come from `label_col`; `y` must be None. "
                    f"Received: y of type {type(y).__name__}"
                )
            df, features, labels = x, self.features_col, self.label_col
        else:
            df, features, labels = self._numpy_frame(spark, x, y)
        val = self._validation_arrays(validation_data)
        self._run(df, epochs, batch_size, val, callbacks, verbose, shuffle, features, labels)
        return self.history

    def get_training_time(self) -> float:
        """Seconds the last training run took, from launch to the last worker's end."""
        return self._training_time

    # ----------------------------------------------------------------- the run

    def _spark(self):
        from distkeras.spark import get_spark_session

        return get_spark_session()

    def _numpy_frame(self, spark, x, y):
        if y is None:
            raise ValueError("`y` is required when `x` is a numpy array. Received: y=None")
        xs = list(x) if isinstance(x, (list, tuple)) else [x]
        ys = list(y) if isinstance(y, (list, tuple)) else [y]
        arrays = {}
        for names, values, argument in ((_X_COLUMN, xs, "x"), (_Y_COLUMN, ys, "y")):
            for i, value in enumerate(values):
                value = np.asarray(value)
                if value.dtype.kind not in "biuf":
                    raise TypeError(
                        f"Expected `{argument}` to hold numbers. Received: {argument} of dtype "
                        f"{value.dtype}"
                    )
                arrays[names.format(i)] = value
        lengths = {len(a) for a in arrays.values()}
        if len(lengths) != 1:
            raise ValueError(
                f"`x` and `y` must have the same number of rows. Received: {sorted(lengths)}"
            )
        self._imports = warmup.start_imports(spark, self.num_workers)  # inputs are valid
        df = data.numpy_to_frame(spark, arrays, packed=True)
        return (
            df,
            [_X_COLUMN.format(i) for i in range(len(xs))],
            [_Y_COLUMN.format(i) for i in range(len(ys))],
        )

    def _validation_arrays(self, validation_data):
        if validation_data is None:
            return None
        if _is_dataframe(validation_data):
            columns = self.features_col + self.label_col
            data.check_columns(validation_data, columns, "validation_data")
            arrays = data.collect_arrays(validation_data, columns)
            return data.model_arrays(
                arrays, self.features_col, self.label_col, self._reshape_targets()
            )
        if isinstance(validation_data, (tuple, list)) and len(validation_data) == 2:
            return tuple(validation_data)
        raise TypeError(
            "Expected `validation_data` to be (x_val, y_val) or a DataFrame. "
            f"Received: validation_data of type {type(validation_data).__name__}"
        )

    def _reshape_targets(self) -> list:
        shapes = validation.model_input_shapes(self.model)
        if shapes is None:
            return [None] * len(self.features_col)
        return [
            tuple(s[1:]) if len(s) > 2 and validation.flat_size(s) is not None else None
            for s in shapes
        ]

    def _check_input(self, df, features, labels) -> None:
        data.check_columns(df, features, "features_col")
        data.check_columns(df, labels, "label_col")
        widths = data.sample_widths(df, features + labels)
        validation.check_fit(
            self.model,
            {c: widths[c] for c in features},
            {c: widths[c] for c in labels},
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
        return self.ps_host or client_host(spark)

    def _driver_model(self):
        if self.loss is not None or self.metrics is not None or not self.model.compiled:
            settings = compile_settings(self.model, self.worker_optimizer, self.loss, self.metrics)
            self.model.compile(**settings)
        return self.model

    def _partition(self, frame):
        """Spreads the rows over one partition per worker."""
        return frame.repartition(self.num_workers)

    def _run(
        self, df, epochs, batch_size, val, callbacks, verbose, shuffle, features=None, labels=None
    ):
        import keras

        from distkeras.parameter_server import ParameterServer

        if not _is_dataframe(df):
            raise TypeError(
                f"Expected a Spark DataFrame. Received: dataframe of type {type(df).__name__}"
            )
        features = features or self.features_col
        labels = labels or self.label_col
        self._check_input(df, features, labels)
        spark = df.sparkSession
        threads = self._check_slots(spark)
        imports, self._imports = (
            self._imports or warmup.start_imports(spark, self.num_workers),
            None,
        )
        algorithm = self.algorithm()
        model = self._driver_model()
        first_epoch = 0
        if self.resume_from is not None:
            first_epoch = int(load_checkpoint(self.resume_from, model)["epoch"])
            logger.info("resuming from %s after epoch %d", self.resume_from, first_epoch)
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
        callback_list = keras.callbacks.CallbackList(
            callbacks, add_history=True, model=model, epochs=epochs, verbose=verbose
        )
        frame = self._partition(data.columnar_frame(df, features + labels))
        monitor = TrainingMonitor(
            model,
            callback_list,
            self.num_workers,
            epochs,
            verbose=verbose,
            validation=val,
            batch_size=batch_size,
            worker_timeout=self.worker_timeout,
            first_epoch=first_epoch,
            checkpointer=checkpointer,
        )
        round_timeout = self.worker_timeout
        server = ParameterServer(
            model.get_weights(),
            rule=algorithm.server_rule,
            host=self._server_host(spark),
            port=self.ps_port,
            round_rule=algorithm.round_rule if algorithm.synchronous else None,
            num_workers=self.num_workers if algorithm.synchronous else None,
            round_timeout=round_timeout,
            on_report=monitor.on_report,
        )
        job = None
        started = time.monotonic()
        model.stop_training = False
        callback_list.on_train_begin()
        monitor.attach(server)
        try:
            server.start()
            where = placement.choose(
                spark, self.ps_placement, server.address, self.num_workers, self.ps_port
            )
            hosted = None
            if where.kind == "cluster":
                server.stop()
                server = placement.RemoteServer(
                    placement.observer_candidates(where),
                    server.secret,
                    model.get_weights(),
                    self.num_workers,
                    monitor.on_report,
                    connect_timeout=min(self.worker_timeout, STARTUP_GRACE),
                    tried=where.tried,
                )
                monitor.attach(server)
                hosted = placement.ServerPlan(where.port, self.num_workers, round_timeout)
            plan = WorkerPlan(
                model=spec,
                algorithm=algorithm,
                address=server.address,
                secret=server.secret,
                feature_cols=features,
                label_cols=labels,
                input_shapes=self._reshape_targets(),
                batch_size=batch_size,
                num_epoch=epochs,
                shuffle=shuffle,
                seed=self.seed,
                timeout=round_timeout + 60.0,
                threads=threads,
                custom_objects=self.custom_objects,
                first_epoch=first_epoch,
                hosted=hosted,
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
        return model


def _is_dataframe(value) -> bool:
    from pyspark.sql import DataFrame

    return isinstance(value, DataFrame)
