"""KerasEstimator: the Spark ML stage that trains a Keras model with a distkeras trainer.

KerasEstimator only maps its Params onto a Trainer (chosen by name in registry.py), checks
the input on the driver, and wraps the trained model in a KerasModel. The training itself is
distkeras.trainers'; inference is KerasModel's; persistence is persistence.py's.
"""

from __future__ import annotations

import logging

from pyspark import keyword_only
from pyspark.ml import Estimator

from distkeras import data
from distkeras.algorithms.registry import DEFAULT as DEFAULT_TRAINER
from distkeras.ml import registry
from distkeras.ml.model import KerasModel
from distkeras.ml.params import KerasEstimatorParams
from distkeras.ml.persistence import KerasStagePersistence
from distkeras.model_spec import ModelSpec

logger = logging.getLogger(__name__)


class KerasEstimator(Estimator, KerasEstimatorParams, KerasStagePersistence):
    """Trains a Keras model on a DataFrame with a distkeras trainer; `fit` returns a KerasModel.

    The given model is never modified: each fit trains a fresh copy (same architecture,
    weights and compile settings, a new optimizer state), so grids and cross-validation
    start every fit from the same point.

    Args:
        model: the keras.Model: compiled, or completed by `loss` and `optimizer`.
        trainer: the trainer's name, one of `distkeras.ml.trainer_names()` (single, adag,
            downpour, dynsgd, aeasgd, eamsgd, easgd, averaging).
        featuresCol: feature column: an ML Vector, an array of numbers or a number.
        labelCol: label column: a class index, a number or a vector (one-hot, targets).
        weightCol: a column of per-row loss weights (Keras' `sample_weight`); unset or ""
            weighs every row 1.
        predictionCol: the KerasModel's prediction column (a double).
        outputCol: the KerasModel's output column (the model's output, an ML DenseVector).
        rawPredictionCol: the KerasModel's per-class scores column (classifiers).
        inferenceBatchSize: rows per prediction batch in the KerasModel.
        numWorkers: parallel workers (ignored by `single`).
        batchSize: rows per training step.
        epochs: passes over the data.
        communicationWindow: local steps between two exchanges; None: the trainer's default.
        trainerParams: the trainer's own arguments, e.g. {"rho": 5.0, "learning_rate": 0.1}
            for aeasgd, or {"seed": 1, "worker_timeout": 300.0} for any trainer.
        loss: a loss name, Keras config or Keras loss, overriding the model's.
        optimizer: an optimizer name, Keras config or Keras optimizer, overriding the model's.
        verbose: 0 for silence, 1 for a progress bar while training.
        allowCpuFallback: train (and let the KerasModel predict) on the CPU when Spark
            gives a task GPUs that TensorFlow cannot see; False: such a task fails.
    """

    @keyword_only
    def __init__(
        self,
        *,
        model=None,
        trainer: str = DEFAULT_TRAINER,
        featuresCol: str = "features",
        labelCol: str = "label",
        weightCol: str | None = None,
        predictionCol: str = "prediction",
        outputCol: str = "output",
        rawPredictionCol: str = "rawPrediction",
        numWorkers: int = 2,
        batchSize: int = 32,
        epochs: int = 1,
        communicationWindow: int | None = None,
        trainerParams: dict | None = None,
        loss=None,
        optimizer=None,
        inferenceBatchSize: int = 4096,
        verbose: int = 0,
        allowCpuFallback: bool = False,
    ):
        super().__init__()
        self._apply_params(self._input_kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        model=None,
        trainer: str | None = None,
        featuresCol: str | None = None,
        labelCol: str | None = None,
        weightCol: str | None = None,
        predictionCol: str | None = None,
        outputCol: str | None = None,
        rawPredictionCol: str | None = None,
        numWorkers: int | None = None,
        batchSize: int | None = None,
        epochs: int | None = None,
        communicationWindow: int | None = None,
        trainerParams: dict | None = None,
        loss=None,
        optimizer=None,
        inferenceBatchSize: int | None = None,
        verbose: int | None = None,
        allowCpuFallback: bool | None = None,
    ):
        """Sets the given Params (and the model); None restores a Param's default."""
        return self._apply_params(self._input_kwargs)

    def _fit(self, dataset) -> KerasModel:
        name = self.getTrainer()
        params = self.getTrainerParams()
        registry.check_trainer_params(name, params)
        features, label = self.getFeaturesCol(), self.getLabelCol()
        data.check_columns(dataset, [features], "featuresCol", strings=True)
        data.check_columns(dataset, [label], "labelCol")
        weight = self.getSampleWeightCol()
        if weight is not None:
            data.check_columns(dataset, [weight], "weightCol")
        model = self._fresh_model()
        kwargs = dict(
            params,
            features_col=features,
            label_col=label,
            sample_weight_col=weight,
            batch_size=self.getBatchSize(),
            num_epoch=self.getEpochs(),
            allow_cpu_fallback=self.getAllowCpuFallback(),
        )
        if registry.takes_workers(name):
            kwargs.update(
                num_workers=self.getNumWorkers(),
                communication_window=self.getCommunicationWindow(),
            )
        trainer = registry.trainer_class(name)(model, **kwargs)
        trained = trainer.train(dataset, verbose=self.getVerbose())
        logger.info("Trained with %s in %.1f s", name, trainer.get_training_time())
        fitted = KerasModel(model=trained, history=trainer.history)
        fitted._resetUid(self.uid.replace("KerasEstimator", "KerasModel"))
        self._copyValues(fitted)
        return fitted

    def _fresh_model(self):
        """A compiled copy of the model with the loss and optimizer overrides applied."""
        import keras

        loss = self.getLoss()
        if isinstance(loss, dict):
            loss = keras.losses.deserialize(loss)
        spec = ModelSpec.from_model(self._require_model(), optimizer=self.getOptimizer(), loss=loss)
        return spec.build()
