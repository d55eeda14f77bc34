"""Distributed inference for users outside Spark ML Pipelines.

ModelPredictor appends a model's output to a DataFrame; `evaluate` returns the compiled
metrics of a model over a DataFrame. Both are thin front ends of distkeras.inference (the
same batched executor code as KerasModel).
"""

from __future__ import annotations

from distkeras import inference, validation
from distkeras.model_spec import ensure_keras_model


class ModelPredictor:
    """Predicts with a Keras model on the executors, in Arrow batches.

    Args:
        keras_model: the keras.Model (one output).
        features_col: the feature column, or a list of them for a model with several inputs.
        output_col: the column that gets the output, an ML DenseVector.
        batch_size: rows per model call on the executors.
        custom_objects: classes and functions the model refers to by name.
        allow_cpu_fallback: predict on the CPU when Spark gave a task GPUs that TensorFlow
            cannot see; False: such a task fails, naming the GPUs (docs/cluster.md, GPUs).
    """

    def __init__(
        self,
        keras_model,
        features_col="features",
        output_col: str = "prediction",
        batch_size: int = 4096,
        custom_objects: dict | None = None,
        allow_cpu_fallback: bool = False,
    ):
        self.model = ensure_keras_model(keras_model)
        self.features_col = validation.column_list("features_col", features_col)
        if not isinstance(output_col, str) or not output_col:
            raise ValueError(
                f"Expected `output_col` to be a column name. Received: output_col={output_col!r}"
            )
        self.output_col = output_col
        self.batch_size = validation.positive_int("batch_size", batch_size)
        self.custom_objects = custom_objects
        self.allow_cpu_fallback = validation.flag("allow_cpu_fallback", allow_cpu_fallback)

    def predict(self, dataframe):
        """Returns `dataframe` with `output_col` appended (computed lazily, on the executors).

        Raises:
            ValueError, TypeError: before any job, for a missing or mistyped column, a
                feature width that does not fit the model, or an existing `output_col`.
        """
        return inference.add_predictions(
            dataframe,
            self.model,
            self.features_col,
            output_col=self.output_col,
            batch_size=self.batch_size,
            custom_objects=self.custom_objects,
            allow_cpu_fallback=self.allow_cpu_fallback,
        )


def evaluate(
    model,
    dataframe,
    features_col="features",
    label_col="label",
    batch_size: int = 4096,
    custom_objects: dict | None = None,
    allow_cpu_fallback: bool = False,
) -> dict[str, float]:
    """Evaluates a compiled model on a DataFrame, on the executors.

    Each partition accumulates the state of the compiled metrics; the driver merges them,
    so the figures equal `model.evaluate` on all rows (for AUC and precision as well).

    Args:
        model: a compiled keras.Model (one output).
        dataframe: the DataFrame with the feature and label columns.
        features_col: the feature column, or a list of them for several inputs.
        label_col: the label column.
        batch_size: rows per model call on the executors.
        custom_objects: classes and functions the model refers to by name.
        allow_cpu_fallback: evaluate on the CPU when Spark gave a task GPUs that TensorFlow
            cannot see; False: such a task fails, naming the GPUs.

    Returns:
        Metric name -> value, `loss` included, as `model.evaluate(..., return_dict=True)`.

    Raises:
        ValueError: if the model is not compiled, the DataFrame is empty, or a column does
            not fit the model; TypeError for a non-numeric column.
    """
    return inference.evaluate_frame(
        ensure_keras_model(model, "model"),
        dataframe,
        validation.column_list("features_col", features_col),
        validation.column_list("label_col", label_col),
        batch_size=validation.positive_int("batch_size", batch_size),
        custom_objects=custom_objects,
        allow_cpu_fallback=validation.flag("allow_cpu_fallback", allow_cpu_fallback),
    )
