"""MLflow tracking of distributed fits: one run per fit, logged from the driver only.

MlflowCallback: the Keras callback that logs a fit's parameters, its per-epoch metrics (what
History records), the run's figures and the trained model. fit_run: the trainers' hook that
engages it (a run is active, autologging is on, or the callback is passed) and owns the run
it starts. Reading a logged model back is MLflow's (`mlflow.pyfunc`, `mlflow.keras`) or
`distkeras.ml.KerasModel.from_mlflow`'s.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import time
from collections.abc import Iterator

import keras
import mlflow
from mlflow.keras.utils import get_model_signature
from mlflow.utils.autologging_utils import autologging_is_disabled, get_autologging_config

logger = logging.getLogger(__name__)

FIT_TAG = "distkeras.trainer"  # on a run that holds a fit: a second fit gets a child run
BACKEND_PACKAGES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


class MlflowCallback(keras.callbacks.Callback):
    """Logs one distributed fit to the active MLflow run, from the driver.

    A fit inside `mlflow.start_run()` or under `mlflow.autolog()` / `mlflow.keras.autolog()`
    adds one itself; pass one in `callbacks=` to log a fit otherwise (a run is then started
    for the fit and ended with it), or to choose what it logs. Executors log nothing.

    What it logs:

    - at train begin, parameters: `trainer`, `algorithm` and the algorithm's own parameters,
      `num_workers`, `communication_window`, `batch_size`, `epochs`, `initial_epoch`,
      `shuffle`, and the optimizer's
      config as `optimizer_*` (as MLflow's Keras autologging names it); the model summary
      as the artifact `model_summary.txt`;
    - at every epoch end (step: the epoch), the logs History records (`loss`, the metrics,
      `val_*`) and `epoch_seconds`;
    - at train end, the run's figures: `training_seconds`, `seconds_per_epoch`,
      `samples_per_second` (rows trained by all workers), `commits`, `mean_staleness`,
      `max_staleness`; then the trained model as an MLflow Keras model named "model", with
      the model's input and output signature.

    Args:
        log_models: log the trained model; None: autologging's `log_models`, else True.
        registered_model_name: also register the logged model under this name; None:
            autologging's setting, else no registration.
        pip_requirements: the logged model's requirements; None: Keras and its backend at
            the installed versions (MLflow's inference would load the model in a
            subprocess, tens of seconds per fit).
    """

    def __init__(
        self,
        log_models: bool | None = None,
        registered_model_name: str | None = None,
        pip_requirements: list[str] | None = None,
    ):
        super().__init__()
        if log_models is None:
            log_models = get_autologging_config("keras", "log_models", True)
        if registered_model_name is None:
            registered_model_name = get_autologging_config("keras", "registered_model_name")
        self.log_models = bool(log_models)
        self.registered_model_name = registered_model_name
        self.pip_requirements = pip_requirements
        self.model_info = None  # mlflow.models.model.ModelInfo of the logged model
        self._trainer = None
        self._epoch_started = 0.0
        self._epoch_seconds: list[float] = []

    def bind(self, trainer) -> None:
        """Tells the callback which trainer runs the fit (its `plan` is the run's)."""
        self._trainer = trainer

    def on_train_begin(self, logs=None):
        self.model_info = None
        self._epoch_seconds = []
        mlflow.log_params({**self._fit_params(), **self._optimizer_params()})
        lines: list[str] = []
        self.model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
        mlflow.log_text("\n".join(lines), artifact_file="model_summary.txt")

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.monotonic() - self._epoch_started
        self._epoch_seconds.append(seconds)
        metrics = {key: float(value) for key, value in (logs or {}).items() if _scalar(value)}
        mlflow.log_metrics({**metrics, "epoch_seconds": seconds}, step=int(epoch))

    def on_train_end(self, logs=None):
        if self._trainer is not None:
            mlflow.log_metrics(self._run_figures())
        if self.log_models:
            optimizer = getattr(self.model, "optimizer", None)
            if optimizer is not None and not optimizer.built:
                # The driver's optimizer never stepped (the workers trained): with its state
                # built, the saved file loads without Keras' "skipping variable loading".
                optimizer.build(self.model.trainable_variables)
            self.model_info = mlflow.keras.log_model(
                self.model,
                name="model",
                signature=get_model_signature(self.model),
                registered_model_name=self.registered_model_name,
                pip_requirements=self.pip_requirements or default_requirements(),
            )

    def _fit_params(self) -> dict:
        trainer = self._trainer
        plan = getattr(trainer, "plan", None)
        if plan is None:  # in keras.Model.fit: Keras' own parameters only
            return {"epochs": self.params.get("epochs")}
        algorithm = plan.algorithm
        own = {name: getattr(algorithm, name, None) for name in trainer.spec.parameters}
        return {
            "trainer": type(trainer).__name__,
            "algorithm": type(algorithm).__name__,
            **{name: value for name, value in own.items() if value is not None},
            "num_workers": plan.num_workers,
            "communication_window": algorithm.window,
            "batch_size": plan.batch_size,
            "epochs": plan.epochs,
            "initial_epoch": plan.first_epoch,
            "shuffle": plan.shuffle,
        }

    def _optimizer_params(self) -> dict:
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            return {}
        return {f"optimizer_{key}": value for key, value in optimizer.get_config().items()}

    def _run_figures(self) -> dict:
        trainer = self._trainer
        seconds = trainer.get_training_time()
        summaries = trainer.worker_summaries
        figures = {"training_seconds": seconds}
        if self._epoch_seconds:
            figures["seconds_per_epoch"] = sum(self._epoch_seconds) / len(self._epoch_seconds)
        if summaries:
            samples = sum(summary["samples"] for summary in summaries)
            figures["samples_per_second"] = samples / seconds if seconds > 0 else 0.0
            figures["commits"] = sum(summary["commits"] for summary in summaries)
        stats = trainer.parameter_server_stats
        for key in ("mean_staleness", "max_staleness"):
            if _scalar(stats.get(key)):
                figures[key] = float(stats[key])
        return figures


def default_requirements() -> list[str]:
    """Keras and its backend's package, pinned to the installed versions."""
    packages = ["keras", BACKEND_PACKAGES.get(keras.backend.backend())]
    return [f"{name}=={importlib.metadata.version(name)}" for name in packages if name]


@contextlib.contextmanager
def fit_run(trainer, callbacks) -> Iterator[list | None]:
    """The MLflow run of one fit, when the user engaged MLflow; else nothing happens.

    Engaged when a run is active, Keras autologging is on, or `callbacks` holds an
    MlflowCallback. The fit logs into the active run; a run that already holds a fit gets a
    child run for this one, and without an active run a run is started: those two end with
    the fit (FINISHED, or FAILED when it raises).

    Args:
        trainer: the Trainer running the fit.
        callbacks: the callbacks given to `fit`.

    Yields:
        The callbacks to run the fit with: an MlflowCallback first when none was given.

    Raises:
        ValueError: if `callbacks` holds several MlflowCallbacks, or MLflow's own Keras
            callback (which would log every metric a second time).
    """
    given = [c for c in callbacks or () if isinstance(c, MlflowCallback)]
    _check_callbacks(callbacks, given)
    active = mlflow.active_run()
    if not given and active is None and autologging_is_disabled("keras"):
        yield callbacks
        return
    callback = given[0] if given else MlflowCallback()
    callback.bind(trainer)
    engaged = list(callbacks or ()) if given else [callback, *(callbacks or ())]
    with _fit_run(active, type(trainer).__name__):
        yield engaged


@contextlib.contextmanager
def _fit_run(active, trainer_name: str) -> Iterator[None]:
    """The active run, or a run of its own (a child when the active one holds a fit)."""
    if active is not None and FIT_TAG not in mlflow.get_run(active.info.run_id).data.tags:
        mlflow.set_tag(FIT_TAG, trainer_name)
        yield
        return
    tags = {**(get_autologging_config("keras", "extra_tags") or {}), FIT_TAG: trainer_name}
    run = mlflow.start_run(nested=active is not None, tags=tags)
    logger.info("MLflow run %s logs this fit", run.info.run_id)
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    finally:
        mlflow.end_run(status)


def _check_callbacks(callbacks, given: list) -> None:
    if len(given) > 1:
        raise ValueError(
            f"Expected at most one MlflowCallback in `callbacks`. Received: callbacks={callbacks!r}"
        )
    from mlflow.keras.callback import MlflowCallback as KerasMlflowCallback

    theirs = [c for c in callbacks or () if isinstance(c, KerasMlflowCallback)]
    if theirs:
        raise ValueError(
            "`mlflow.keras.MlflowCallback` logs `keras.Model.fit`; a distributed fit logs "
            "through distkeras.integrations.mlflow.MlflowCallback (added by itself when a run "
            f"is active or autologging is on). Received: callbacks containing {theirs[0]!r}"
        )


def _scalar(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
