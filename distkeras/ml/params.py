"""The Params of the Spark ML stage: typed, class-level, JSON-serializable.

KerasModelParams: the columns and batch size of inference (KerasModel and KerasEstimator).
KerasEstimatorParams: adds the label column and the training settings. HasKerasModel: the
Keras model itself, an attribute rather than a Param (it is no JSON value; persistence
stores it as a `.keras` file). Converters here check values when they are set.
"""

from __future__ import annotations

import json

from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (
    HasFeaturesCol,
    HasLabelCol,
    HasOutputCol,
    HasPredictionCol,
    HasRawPredictionCol,
    HasWeightCol,
)

from distkeras import validation
from distkeras.algorithms.registry import DEFAULT as DEFAULT_TRAINER
from distkeras.ml import registry


def _positive_int(name: str):
    def convert(value) -> int:
        return validation.positive_int(name, TypeConverters.toInt(value))

    return convert


def _json_value(name: str, value):
    try:
        json.dumps(value)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"`{name}` must be JSON-serializable to be saved with the stage ({error}). "
            f"Received: {name}={value!r}"
        ) from error
    return value


def _trainer_params(value) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise TypeError(
            "Expected `trainerParams` to be a dict of argument names to values. "
            f"Received: trainerParams={value!r}"
        )
    return dict(_json_value("trainerParams", value))


def _keras_config(name: str):
    """Converter for `loss` / `optimizer`: a name, a Keras config dict, or a Keras object
    (stored as its config dict, so that it goes into the metadata JSON)."""

    def convert(value):
        if isinstance(value, (str, dict)):
            return _json_value(name, value)
        import keras

        if isinstance(value, (keras.optimizers.Optimizer, keras.losses.Loss)) or callable(value):
            return _json_value(name, keras.saving.serialize_keras_object(value))
        raise TypeError(
            f"Expected `{name}` to be a name, a Keras config dict or a Keras object. "
            f"Received: {name}={value!r}"
        )

    return convert


class HasKerasModel(Params):
    """The stage's Keras model (not a Param: it is saved as a `.keras` file)."""

    def __init__(self) -> None:
        super().__init__()
        self._keras_model = None

    def setModel(self, value):
        """Sets the keras.Model of this stage."""
        from distkeras.model_spec import ensure_keras_model

        self._keras_model = None if value is None else ensure_keras_model(value, "model")
        return self

    def getModel(self):
        """The keras.Model of this stage, or None if none was given."""
        return self._keras_model

    def _require_model(self):
        if self._keras_model is None:
            raise ValueError(
                f"{type(self).__name__} has no Keras model: pass `model=` to the constructor or "
                "call setModel(). Received: model=None"
            )
        return self._keras_model

    def _apply_params(self, kwargs: dict):
        """Sets the constructor's or setParams' keyword arguments; None clears a Param."""
        kwargs = dict(kwargs)
        if "model" in kwargs:
            self.setModel(kwargs.pop("model"))
        for name, value in kwargs.items():
            if value is None:
                self.clear(getattr(self, name))
            else:
                self._set(**{name: value})
        return self

    def _optional(self, param: Param):
        return self.getOrDefault(param) if self.isDefined(param) else None


class KerasModelParams(
    HasKerasModel, HasFeaturesCol, HasPredictionCol, HasOutputCol, HasRawPredictionCol
):
    """Params of inference: featuresCol, predictionCol, outputCol, rawPredictionCol,
    inferenceBatchSize and allowCpuFallback. An empty column name skips that column."""

    inferenceBatchSize = Param(
        Params._dummy(),
        "inferenceBatchSize",
        "rows per model call when predicting on the executors (> 0).",
        typeConverter=_positive_int("inferenceBatchSize"),
    )
    allowCpuFallback = Param(
        Params._dummy(),
        "allowCpuFallback",
        "run on the CPU when Spark gives a task GPUs that TensorFlow cannot see (else the "
        "task fails, naming them).",
        typeConverter=TypeConverters.toBoolean,
    )

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(outputCol="output", inferenceBatchSize=4096, allowCpuFallback=False)

    def getAllowCpuFallback(self) -> bool:
        """Whether tasks given GPUs that TensorFlow cannot see run on the CPU."""
        return self.getOrDefault(self.allowCpuFallback)

    def setAllowCpuFallback(self, value: bool):
        """Sets whether tasks given GPUs that TensorFlow cannot see run on the CPU."""
        return self._set(allowCpuFallback=value)

    def getInferenceBatchSize(self) -> int:
        """Rows per model call when predicting."""
        return self.getOrDefault(self.inferenceBatchSize)

    def setFeaturesCol(self, value: str):
        """Sets the feature column (an ML Vector, an array of numbers or a number)."""
        return self._set(featuresCol=value)

    def setPredictionCol(self, value: str):
        """Sets the prediction column (a double); "" skips it."""
        return self._set(predictionCol=value)

    def setOutputCol(self, value: str):
        """Sets the column of the model's output (a DenseVector); "" skips it."""
        return self._set(outputCol=value)

    def setRawPredictionCol(self, value: str):
        """Sets the classifiers' per-class score column (a DenseVector); "" skips it."""
        return self._set(rawPredictionCol=value)

    def setInferenceBatchSize(self, value: int):
        """Sets the rows per model call when predicting."""
        return self._set(inferenceBatchSize=value)


class KerasEstimatorParams(KerasModelParams, HasLabelCol, HasWeightCol):
    """Params of training, in addition to those of inference."""

    trainer = Param(
        Params._dummy(),
        "trainer",
        "the distkeras trainer: " + ", ".join(registry.trainer_names()) + ".",
        typeConverter=registry.normalize_trainer_name,
    )
    trainerParams = Param(
        Params._dummy(),
        "trainerParams",
        "the trainer's own arguments (e.g. rho, learning_rate, seed), as a JSON-able dict.",
        typeConverter=_trainer_params,
    )
    numWorkers = Param(
        Params._dummy(),
        "numWorkers",
        "parallel workers, all running at once (> 0).",
        typeConverter=_positive_int("numWorkers"),
    )
    batchSize = Param(
        Params._dummy(),
        "batchSize",
        "rows per training step (> 0).",
        typeConverter=_positive_int("batchSize"),
    )
    epochs = Param(
        Params._dummy(),
        "epochs",
        "passes over the data (> 0).",
        typeConverter=_positive_int("epochs"),
    )
    communicationWindow = Param(
        Params._dummy(),
        "communicationWindow",
        "local steps between two exchanges with the parameter server; unset: the trainer's.",
        typeConverter=_positive_int("communicationWindow"),
    )
    loss = Param(
        Params._dummy(),
        "loss",
        "the loss (a name or a Keras config); unset: the compiled model's.",
        typeConverter=_keras_config("loss"),
    )
    optimizer = Param(
        Params._dummy(),
        "optimizer",
        "the workers' optimizer (a name or a Keras config); unset: the compiled model's.",
        typeConverter=_keras_config("optimizer"),
    )
    verbose = Param(
        Params._dummy(),
        "verbose",
        "0 for silence, 1 for a progress bar while training.",
        typeConverter=TypeConverters.toInt,
    )

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(
            trainer=DEFAULT_TRAINER,
            trainerParams={},
            numWorkers=2,
            batchSize=32,
            epochs=1,
            verbose=0,
        )

    def getSampleWeightCol(self) -> str | None:
        """The weight column (Spark's `weightCol`), None if unset or empty."""
        if not self.isDefined(self.weightCol):
            return None
        return self.getOrDefault(self.weightCol) or None

    def setWeightCol(self, value: str):
        """Sets the column of per-row loss weights (Keras' `sample_weight`); "" for none."""
        return self._set(weightCol=value)

    def getTrainer(self) -> str:
        """The trainer's name."""
        return self.getOrDefault(self.trainer)

    def getTrainerParams(self) -> dict:
        """A copy of the trainer's own arguments."""
        return dict(self.getOrDefault(self.trainerParams))

    def getNumWorkers(self) -> int:
        """Parallel workers."""
        return self.getOrDefault(self.numWorkers)

    def getBatchSize(self) -> int:
        """Rows per training step."""
        return self.getOrDefault(self.batchSize)

    def getEpochs(self) -> int:
        """Passes over the data."""
        return self.getOrDefault(self.epochs)

    def getCommunicationWindow(self) -> int | None:
        """Local steps between two exchanges, None for the trainer's default."""
        return self._optional(self.communicationWindow)

    def getLoss(self):
        """The loss name or config, None for the compiled model's."""
        return self._optional(self.loss)

    def getOptimizer(self):
        """The optimizer name or config, None for the compiled model's."""
        return self._optional(self.optimizer)

    def getVerbose(self) -> int:
        """0 for silence, 1 for a progress bar."""
        return self.getOrDefault(self.verbose)

    def setLabelCol(self, value: str):
        """Sets the label column."""
        return self._set(labelCol=value)

    def setTrainer(self, value: str):
        """Sets the trainer by name (see `distkeras.ml.trainer_names()`)."""
        return self._set(trainer=value)

    def setTrainerParams(self, value: dict):
        """Sets the trainer's own arguments."""
        return self._set(trainerParams=value)

    def setNumWorkers(self, value: int):
        """Sets the number of parallel workers."""
        return self._set(numWorkers=value)

    def setBatchSize(self, value: int):
        """Sets the rows per training step."""
        return self._set(batchSize=value)

    def setEpochs(self, value: int):
        """Sets the passes over the data."""
        return self._set(epochs=value)

    def setCommunicationWindow(self, value: int | None):
        """Sets the local steps between exchanges; None for the trainer's default."""
        return self._apply_params({"communicationWindow": value})

    def setLoss(self, value):
        """Sets the loss (name, config or Keras object); None for the compiled model's."""
        return self._apply_params({"loss": value})

    def setOptimizer(self, value):
        """Sets the optimizer (name, config or Keras object); None for the model's."""
        return self._apply_params({"optimizer": value})

    def setVerbose(self, value: int):
        """Sets 0 for silence, 1 for a progress bar."""
        return self._set(verbose=value)
