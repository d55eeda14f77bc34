"""Batched inference planned on the driver, for KerasModel, ModelPredictor and evaluate.

`make_plan` captures a model as an InferencePlan for the executors; `add_predictions` and
`evaluate_frame` check the input before any job and assemble the Spark plan whose tasks run
executor.inference's kernels.
"""

from __future__ import annotations

import collections
import hashlib
import logging
from collections.abc import Sequence

import numpy as np

from distkeras import data, validation
from distkeras.executor.inference import (
    ARGMAX,
    EVALUATE_SCHEMA,
    RESULT_TYPE,
    THRESHOLD,
    VALUE,
    InferencePlan,
    evaluate_partition,
    merge_states,
    predict_arrays,
)
from distkeras.inputs.arrays import check_strings
from distkeras.model_spec import ModelSpec, compile_settings, ensure_keras_model
from distkeras.quiet import keras_backend
from distkeras.spark.backend import follow_backend
from distkeras.spark.facts import task_cpus

logger = logging.getLogger(__name__)

_BINARY_LOSSES = frozenset({"binary_crossentropy", "bce", "binary_focal_crossentropy"})
_RESULT_COLUMN = "__distkeras_inference"


def make_plan(
    model,
    feature_cols: Sequence[str],
    batch_size: int,
    compiled: bool = False,
    threads: int = 1,
    custom_objects: dict | None = None,
    allow_cpu_fallback: bool = False,
) -> InferencePlan:
    """Captures `model` for the executors (see `InferencePlan`), on this process's backend."""
    spec = (
        ModelSpec.from_model(model, custom_objects=custom_objects)
        if compiled
        else ModelSpec.uncompiled(model, custom_objects=custom_objects)
    )
    digest = hashlib.sha256(f"{spec.architecture}\0{spec.compile_config}".encode())
    digest.update(spec.objects_key.encode())
    for weight in spec.weights:
        digest.update(f"{weight.dtype}{weight.shape}".encode())
        digest.update(np.ascontiguousarray(weight).data)
    shapes = validation.model_input_shapes(model) or [None] * len(feature_cols)
    return InferencePlan(
        spec=spec,
        key=digest.hexdigest(),
        feature_cols=tuple(feature_cols),
        input_shapes=tuple(_reshape_target(shape) for shape in shapes),
        input_widths=tuple(None if s is None else validation.flat_size(s) for s in shapes),
        batch_size=validation.positive_int("batch_size", batch_size),
        compiled=compiled,
        threads=threads,
        custom_objects=custom_objects,
        allow_cpu_fallback=validation.flag("allow_cpu_fallback", allow_cpu_fallback),
        backend=keras_backend(),
    )


def _reshape_target(shape) -> tuple | None:
    if shape is None or len(shape) <= 2 or validation.flat_size(shape) is None:
        return None
    return tuple(shape[1:])


def output_units(model) -> int:
    """Units of the model's one output (flattened).

    Raises:
        ValueError: if the model has several outputs or an output of unknown size.
    """
    shapes = validation.model_output_shapes(model)
    if not shapes or len(shapes) != 1 or validation.flat_size(shapes[0]) is None:
        raise ValueError(
            "Inference needs a model with one output of known size. "
            f"Received: a model with output shapes {shapes}"
        )
    return validation.flat_size(shapes[0])


def prediction_rule(model) -> str:
    """How the prediction column derives from the output.

    ARGMAX for an output of several units; THRESHOLD (0/1 at 0.5) for one unit trained with
    a binary cross-entropy; VALUE (the output itself, regression) otherwise.
    """
    if output_units(model) > 1:
        return ARGMAX
    return THRESHOLD if _is_binary_crossentropy(getattr(model, "loss", None)) else VALUE


def _is_binary_crossentropy(loss) -> bool:
    if isinstance(loss, (list, tuple)) and len(loss) == 1:
        loss = loss[0]
    elif isinstance(loss, dict) and len(loss) == 1:
        loss = next(iter(loss.values()))
    if loss is None:
        return False
    if isinstance(loss, str):
        name = loss
    else:
        name = getattr(loss, "name", None) or getattr(loss, "__name__", "")
        fn = getattr(loss, "fn", None)  # keras.losses.LossFunctionWrapper
        if fn is not None:
            name = getattr(fn, "__name__", name)
    return name.lower() in _BINARY_LOSSES


def feature_widths(df, columns: Sequence[str]) -> dict[str, int] | None:
    """Widths of numeric columns: from ML attributes where VectorAssembler left them, else
    from one row. None when the DataFrame is empty (there is no row to check).
    """
    widths = {}
    for column in columns:
        attributes = df.schema[column].metadata.get("ml_attr", {})
        if (
            data.column_kind(df.schema[column].dataType) == data.VECTOR
            and "num_attrs" in attributes
        ):
            widths[column] = int(attributes["num_attrs"])
    missing = [c for c in columns if c not in widths]
    if missing:
        if not df.select(*[f"`{c}`" for c in missing]).head(1):
            return None
        widths.update(data.sample_widths(df, missing))
    return widths


def check_features(df, model, feature_cols: Sequence[str], argument: str) -> None:
    """Checks that the feature columns exist, hold numbers (or strings, for the model's
    string inputs) and fit the model's inputs.

    Raises:
        ValueError, TypeError: naming the column (see `data.check_columns`).
    """
    _check_feature_kinds(df, model, feature_cols, argument)
    widths = feature_widths(df, feature_cols)
    if widths is None:
        return
    inputs = validation.model_input_shapes(model)
    if inputs is not None and len(inputs) != len(feature_cols):
        raise ValueError(
            f"The model has {len(inputs)} inputs but {len(feature_cols)} feature columns were "
            f"given. Received: {argument}={list(feature_cols)}"
        )
    # Inference has no labels: give check_fit the outputs' own widths so only inputs count.
    outputs = validation.model_output_shapes(model) or []
    validation.check_fit(model, widths, {f"output {i}": 1 for i in range(len(outputs))})


def _check_feature_kinds(df, model, feature_cols: Sequence[str], argument: str) -> None:
    """The columns exist and hold numbers, or strings where the model's input takes them."""
    data.check_columns(df, feature_cols, argument, strings=True)
    strings = [data.holds_strings(df.schema[c].dataType) for c in feature_cols]
    check_strings(model, strings, list(feature_cols))


def add_predictions(
    df,
    model,
    feature_cols: Sequence[str],
    output_col: str = "",
    prediction_col: str = "",
    raw_prediction_col: str = "",
    batch_size: int = 4096,
    custom_objects: dict | None = None,
    argument: str = "features_col",
    allow_cpu_fallback: bool = False,
):
    """Appends the model's output (and the derived prediction) to `df`, lazily.

    Args:
        df: the DataFrame to score.
        model: a keras.Model with one output.
        feature_cols: columns in the order of the model's inputs.
        output_col: gets the output as an ML DenseVector; "" to skip.
        prediction_col: gets a double per `prediction_rule`; "" to skip.
        raw_prediction_col: for classifiers, per-class scores as a DenseVector (the output,
            or [1 - p, p] for one sigmoid unit), the `rawPrediction` Spark's evaluators
            read; not added for regression; "" to skip.
        batch_size: rows per model call on the executors.
        custom_objects: classes and functions the model refers to by name.
        argument: the name of the feature-column argument, for error messages.
        allow_cpu_fallback: run on the CPU when Spark gave a task GPUs that TensorFlow
            cannot see; False: such a task fails naming them.

    Returns:
        A DataFrame with the new columns; the model runs when it is evaluated.

    Raises:
        ValueError, TypeError: before any job, for missing or mistyped columns, a feature
            width that does not fit the model, or an output column that already exists.
    """
    import pyarrow as pa
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F
    from pyspark.sql.functions import arrow_udf

    ensure_keras_model(model, "model")
    rule = prediction_rule(model)
    check_features(df, model, feature_cols, argument)
    if rule == VALUE:
        raw_prediction_col = ""
    new = [c for c in (output_col, prediction_col, raw_prediction_col) if c]
    for column in new:
        if column in df.columns or new.count(column) > 1:
            raise ValueError(
                f"Output column `{column}` already exists or is given twice: choose another "
                f"name. Received: columns {new}, DataFrame columns {df.columns}"
            )
    if not new:
        return df
    plan = make_plan(
        model,
        feature_cols,
        batch_size,
        threads=task_cpus(df.sparkSession),
        custom_objects=custom_objects,
        allow_cpu_fallback=allow_cpu_fallback,
    )
    follow_backend(df.sparkSession)

    def predict(features):
        return predict_arrays(plan, rule, features)

    # Real (not string) annotations: Spark reads them to pick the Arrow UDF type.
    predict.__annotations__ = {"features": pa.Array, "return": pa.Array}
    features = F.struct(*[data.float_rows(df, c).alias(c) for c in feature_cols])
    staged = df.withColumn(_RESULT_COLUMN, arrow_udf(predict, RESULT_TYPE)(features))
    result = F.col(_RESULT_COLUMN)
    columns = [F.col(f"`{c}`") for c in df.columns]
    if output_col:
        columns.append(array_to_vector(result["output"]).alias(output_col))
    if prediction_col:
        columns.append(result["prediction"].alias(prediction_col))
    if raw_prediction_col:
        score = result["output"]
        if rule == THRESHOLD:
            score = F.array(F.lit(1.0) - score[0], score[0].cast("double"))
        columns.append(array_to_vector(score).alias(raw_prediction_col))
    return staged.select(*columns)


def evaluate_frame(
    model,
    df,
    feature_cols: Sequence[str],
    label_cols: Sequence[str],
    batch_size: int = 4096,
    custom_objects: dict | None = None,
    allow_cpu_fallback: bool = False,
) -> dict[str, float]:
    """Evaluates the compiled model on `df` on the executors; returns its metrics.

    Each partition accumulates the compiled metrics' state (totals, counts, confusion
    counts), the driver merges the states and reads the results: the figures are those of
    `model.evaluate` on all rows, for additive metrics (AUC and precision included).
    `allow_cpu_fallback` as in `add_predictions`.

    Raises:
        ValueError: if the model is not compiled, the DataFrame is empty, or a column does
            not fit; TypeError for a non-numeric column.
    """
    ensure_keras_model(model, "model")
    compile_settings(model)
    output_units(model)
    _check_feature_kinds(df, model, feature_cols, "features_col")
    data.check_columns(df, label_cols, "label_col")
    widths = data.sample_widths(df, list(feature_cols) + list(label_cols))
    validation.check_fit(
        model, {c: widths[c] for c in feature_cols}, {c: widths[c] for c in label_cols}
    )
    plan = make_plan(
        model,
        feature_cols,
        batch_size,
        compiled=True,
        threads=task_cpus(df.sparkSession),
        custom_objects=custom_objects,
        allow_cpu_fallback=allow_cpu_fallback,
    )
    follow_backend(df.sparkSession)
    labels = list(label_cols)
    frame = data.columnar_frame(df, list(feature_cols) + labels)
    rows = frame.mapInArrow(
        lambda batches: evaluate_partition(plan, labels, batches), EVALUATE_SCHEMA
    ).collect()
    driver_model = plan.spec.build(custom_objects)
    _build_metrics(
        driver_model, plan, [widths[c] for c in feature_cols], [widths[c] for c in labels]
    )
    parts: dict[int, dict] = collections.defaultdict(dict)
    for row in rows:
        parts[row["partition"]][row["index"]] = (np.asarray(row["values"]), row["rows"])
    variables = driver_model.metrics_variables
    states, counts = [], []
    for partition, values in sorted(parts.items()):
        if len(values) != len(variables):
            raise RuntimeError(
                f"Partition {partition} returned {len(values)} metric variables, the driver's "
                f"model has {len(variables)}: the model was not rebuilt identically."
            )
        states.append([values[i][0] for i in range(len(variables))])
        counts.append(values[0][1])
    for variable, value in zip(variables, merge_states(driver_model, states, counts)):
        variable.assign(value.reshape(variable.shape).astype(variable.dtype))
    return {name: float(value) for name, value in driver_model.get_metrics_result().items()}


def _build_metrics(model, plan: InferencePlan, feature_widths, label_widths) -> None:
    """Creates the compiled metrics' variables with one zero row, then zeroes them."""
    dtypes = [str(tensor.dtype) for tensor in model.inputs]
    x = [
        np.full((1, *(shape or ((width,) if width > 1 else ()))), "", dtype=object)
        if dtype == "string"  # as the executors pass strings: one per row, flat
        else np.zeros((1, *(shape or (width,))), dtype=np.float32)
        for shape, width, dtype in zip(plan.input_shapes, feature_widths, dtypes)
    ]
    y = [np.zeros((1, w) if w > 1 else (1,), dtype=np.float32) for w in label_widths]
    model.evaluate(x[0] if len(x) == 1 else x, y[0] if len(y) == 1 else y, verbose=0)
    model.reset_metrics()
