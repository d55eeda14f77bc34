"""KerasModel: the fitted Spark ML stage, a Keras model that predicts on the executors.

KerasModel holds the trained keras.Model and its History; `transform` appends the output,
prediction and raw-prediction columns through distkeras.inference (batched Arrow UDF, the
model built once per Python worker). Persistence is persistence.py's.
"""

from __future__ import annotations

from pyspark import keyword_only
from pyspark.ml import Model

from distkeras import inference
from distkeras.ml.params import KerasModelParams
from distkeras.ml.persistence import KerasStagePersistence


class KerasModel(Model, KerasModelParams, KerasStagePersistence):
    """A trained Keras model as a Spark ML Transformer.

    `transform(df)` adds:

    - `outputCol`: the model's output, an ML DenseVector;
    - `predictionCol`: a double: the argmax for several output units, 0/1 at 0.5 for one
      unit under a binary cross-entropy loss, else the output itself (regression);
    - `rawPredictionCol` (classifiers only): per-class scores, the output, or [1 - p, p]
      for one sigmoid unit, as BinaryClassificationEvaluator reads them.

    An empty column name skips that column.

    Args:
        model: the keras.Model (one output).
        history: the `keras.callbacks.History` of its training, if any.
        featuresCol: the feature column.
        predictionCol: the prediction column (a double).
        outputCol: the output column (the model's output, an ML DenseVector).
        rawPredictionCol: the per-class scores column (classifiers).
        inferenceBatchSize: rows per prediction batch.
        allowCpuFallback: predict on the CPU when Spark gives a task GPUs that TensorFlow
            cannot see; False: such a task fails, naming them (docs/cluster.md, GPUs).
    """

    @keyword_only
    def __init__(
        self,
        *,
        model=None,
        history=None,
        featuresCol: str = "features",
        predictionCol: str = "prediction",
        outputCol: str = "output",
        rawPredictionCol: str = "rawPrediction",
        inferenceBatchSize: int = 4096,
        allowCpuFallback: bool = False,
    ):
        super().__init__()
        kwargs = dict(self._input_kwargs)
        self.history = kwargs.pop("history", None)
        self._apply_params(kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        model=None,
        featuresCol: str | None = None,
        predictionCol: str | None = None,
        outputCol: str | None = None,
        rawPredictionCol: str | None = None,
        inferenceBatchSize: int | None = None,
        allowCpuFallback: bool | None = None,
    ):
        """Sets the given Params (and the model); None restores a Param's default."""
        return self._apply_params(self._input_kwargs)

    @classmethod
    def from_mlflow(cls, model_uri: str, custom_objects: dict | None = None, **params):
        """A KerasModel of a Keras model logged to MLflow (e.g. by a distributed fit).

        Args:
            model_uri: the logged model: "runs:/<run id>/model", "models:/<id or name>/..."
                or any URI `mlflow.keras.load_model` takes.
            custom_objects: classes and functions the model refers to by name.
            **params: the stage's Params (featuresCol, predictionCol, ...).

        Returns:
            The KerasModel, without a History.
        """
        import mlflow.keras

        return cls(
            model=mlflow.keras.load_model(model_uri, custom_objects=custom_objects), **params
        )

    def _transform(self, dataset):
        return inference.add_predictions(
            dataset,
            self._require_model(),
            [self.getFeaturesCol()],
            output_col=self.getOutputCol(),
            prediction_col=self.getPredictionCol(),
            raw_prediction_col=self.getRawPredictionCol(),
            batch_size=self.getInferenceBatchSize(),
            argument="featuresCol",
            allow_cpu_fallback=self.getAllowCpuFallback(),
        )

    # ------------------------------------------------------------- persistence

    def _extra_metadata(self) -> dict:
        if self.history is None:
            return {}
        logs = {k: [float(v) for v in values] for k, values in self.history.history.items()}
        return {"history": logs, "epochs": [int(e) for e in self.history.epoch]}

    def _restore_metadata(self, extra: dict) -> None:
        if "history" not in extra:
            return
        import keras

        history = keras.callbacks.History()
        history.history = {k: list(v) for k, v in extra["history"].items()}
        history.epoch = list(extra.get("epochs", []))
        self.history = history
