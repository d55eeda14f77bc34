"""Batched inference on the executors, shared by KerasModel, ModelPredictor and evaluate.

InferencePlan: what an executor needs (the model as a ModelSpec, feature columns, batch
size), shipped in the task closure. Executor side: `cached_model` builds a plan's model once
per Python worker process; `predict_arrays` (an Arrow UDF) and `evaluate_partition`
(mapInArrow) run it on whole Arrow batches. Driver side: `add_predictions` and
`evaluate_frame` check the input before any job and assemble the Spark plan.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import hashlib
import logging
import threading
from collections.abc import Sequence

import numpy as np

from distkeras import data, validation
from distkeras.inputs.arrays import check_strings
from distkeras.model_spec import ModelSpec, compile_settings, ensure_keras_model
from distkeras.spark import task_cpus

logger = logging.getLogger(__name__)

ARGMAX, THRESHOLD, VALUE = "argmax", "threshold", "value"
RESULT_TYPE = "output array<float>, prediction double"
_BINARY_LOSSES = frozenset({"binary_crossentropy", "bce", "binary_focal_crossentropy"})
_RESULT_COLUMN = "__distkeras_inference"
_CACHE_SIZE = 4

_models: collections.OrderedDict = collections.OrderedDict()
_models_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class InferencePlan:
    """Everything an executor needs to run a model, shipped inside the Spark task closure.

    Attributes:
        spec: the model's architecture and weights (and compile settings when `compiled`).
        key: a fingerprint of `spec`, the key of the per-process model cache.
        feature_cols: columns in the order of the model's inputs.
        input_shapes: per input, the shape (without batch) to reshape flat rows to, or None.
        input_widths: per input, the values per row it takes, or None if unknown.
        batch_size: rows per model call.
        compiled: build the model compiled (needed by evaluate, not by predict).
        threads: TensorFlow threads per Python worker (Spark's cpus per task).
        custom_objects: classes and functions the model refers to by name.
    """

    spec: ModelSpec
    key: str
    feature_cols: tuple
    input_shapes: tuple
    input_widths: tuple
    batch_size: int
    compiled: bool = False
    threads: int = 1
    custom_objects: dict | None = None


def make_plan(
    model,
    feature_cols: Sequence[str],
    batch_size: int,
    compiled: bool = False,
    threads: int = 1,
    custom_objects: dict | None = None,
) -> InferencePlan:
    """Captures `model` for the executors (see `InferencePlan`)."""
    spec = ModelSpec.from_model(model) if compiled else ModelSpec.uncompiled(model)
    digest = hashlib.sha256(f"{spec.architecture}\0{spec.compile_config}".encode())
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
    )


def _reshape_target(shape) -> tuple | None:
    if shape is None or len(shape) <= 2 or validation.flat_size(shape) is None:
        return None
    return tuple(shape[1:])


# ---------------------------------------------------------------- executor side


def cached_model(plan: InferencePlan):
    """The plan's model, built on first use in this process and kept for the next batches.

    The cache holds the last few models by fingerprint, so a process that serves several
    models (a cross-validation, say) does not keep all of them.
    """
    from distkeras.worker import _configure_threads

    with _models_lock:
        model = _models.get(plan.key)
        if model is not None:
            _models.move_to_end(plan.key)
            return model
        _configure_threads(plan.threads)
        model = _build(plan)
        _models[plan.key] = model
        while len(_models) > _CACHE_SIZE:
            _models.popitem(last=False)
        _freeze_heap()
        logger.debug("Built model %s in this process", plan.key[:12])
        return model


def _freeze_heap() -> None:
    """Moves the objects alive now (TensorFlow, Keras, the cached models) out of the garbage
    collector's reach.

    PySpark's worker runs a full `gc.collect()` after every task; with TensorFlow loaded,
    that scan (about 417,000 objects, 0.25 s) cost 0.5 CPU-s per 100k-row transform on
    local[2]. The
    heap is unfrozen and collected first, so models dropped from the cache are still freed.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _build(plan: InferencePlan):
    return plan.spec.build(plan.custom_objects, compiled=plan.compiled)


def clear_model_cache() -> None:
    """Forgets the models built in this process (they are rebuilt on next use)."""
    with _models_lock:
        _models.clear()


def _features(plan: InferencePlan, batch):
    """A record batch's feature columns as the model's input, with widths checked."""
    columns = data.arrow_to_numpy([batch], plan.feature_cols)
    for name, expected in zip(plan.feature_cols, plan.input_widths):
        array = columns[name]
        width = array.shape[1] if array.ndim > 1 else 1
        if expected is not None and width != expected:
            raise ValueError(
                f"Feature column `{name}` has {width} values per row, but the model's input "
                f"takes {expected}. Received: width={width}"
            )
    return columns


def predict_numpy(model, x, batch_size: int) -> np.ndarray:
    """Runs the model on `x` in batches of `batch_size`; returns a (rows, units) float32 array."""
    rows = len(x[0]) if isinstance(x, list) else len(x)
    parts = []
    for start in range(0, rows, batch_size):
        chunk = slice(start, start + batch_size)
        batch = [part[chunk] for part in x] if isinstance(x, list) else x[chunk]
        parts.append(np.asarray(model.predict_on_batch(batch)))
    return np.concatenate(parts).reshape(rows, -1).astype(np.float32, copy=False)


def predict_arrays(plan: InferencePlan, rule: str, features):
    """The body of the prediction UDF: a struct array of the feature columns in, a struct
    array out.

    Returns:
        A `pyarrow.StructArray` of `output` (list<float>) and `prediction` (double).
    """
    import pyarrow as pa

    batch = pa.RecordBatch.from_struct_array(features)
    if batch.num_rows == 0:
        outputs = np.zeros((0, 1), dtype=np.float32)
    else:
        model = cached_model(plan)
        columns = _features(plan, batch)
        x, _ = data.model_arrays(columns, plan.feature_cols, [], plan.input_shapes)
        outputs = predict_numpy(model, x, plan.batch_size)
    rows, units = outputs.shape
    offsets = np.arange(0, (rows + 1) * units, units, dtype=np.int32)
    output = pa.ListArray.from_arrays(pa.array(offsets), pa.array(outputs.ravel()))
    if rule == ARGMAX:
        prediction = outputs.argmax(axis=1)
    elif rule == THRESHOLD:
        prediction = outputs[:, 0] >= 0.5
    else:
        prediction = outputs[:, 0]
    return pa.StructArray.from_arrays(
        [output, pa.array(prediction.astype(np.float64))], names=["output", "prediction"]
    )


def evaluate_partition(plan: InferencePlan, label_cols: Sequence[str], batches):
    """mapInArrow body: accumulates the compiled metrics' state over one partition.

    Yields one record batch with a row per metric variable (`partition`, `index`,
    `values` flattened to float64, `rows`), or nothing for an empty partition.
    """
    import pyarrow as pa
    from pyspark import TaskContext

    model = None
    state, rows = None, 0
    for batch in batches:
        if not batch.num_rows:
            continue
        if model is None:
            model = cached_model(plan)
        columns = _features(plan, batch)
        columns.update(data.arrow_to_numpy([batch], label_cols))
        x, y = data.model_arrays(columns, plan.feature_cols, label_cols, plan.input_shapes)
        model.evaluate(x, y, batch_size=plan.batch_size, verbose=0)
        values = [np.asarray(v.numpy(), dtype=np.float64) for v in model.metrics_variables]
        if state is None:
            state = values
        else:
            state = merge_states(model, [state, values], [rows, batch.num_rows])
        rows += batch.num_rows
    if state is None:
        return
    partition = TaskContext.get().partitionId() if TaskContext.get() else 0
    yield pa.RecordBatch.from_pydict(
        {
            "partition": [partition] * len(state),
            "index": list(range(len(state))),
            "values": pa.array([s.ravel() for s in state], type=pa.list_(pa.float64())),
            "rows": [rows] * len(state),
        }
    )


EVALUATE_SCHEMA = "partition long, index long, values array<double>, rows long"


def merge_states(model, states: Sequence[list], rows: Sequence[int]) -> list[np.ndarray]:
    """Combines metric states of disjoint parts of the data, as Keras' distribution does.

    Each variable follows its `aggregation`: "sum" adds (totals, counts, confusion counts),
    "mean" averages weighted by rows, anything else keeps the first part's value.
    """
    merged = []
    weights = np.asarray(rows, dtype=np.float64)
    for i, variable in enumerate(model.metrics_variables):
        parts = [np.asarray(state[i], dtype=np.float64) for state in states]
        aggregation = getattr(variable, "aggregation", "sum")
        if aggregation == "sum":
            merged.append(np.sum(parts, axis=0))
        elif aggregation == "mean":
            merged.append(np.average(parts, axis=0, weights=weights))
        else:
            merged.append(parts[0])
    return merged


# ---------------------------------------------------------------- driver side


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
    )

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
) -> dict[str, float]:
    """Evaluates the compiled model on `df` on the executors; returns its metrics.

    Each partition accumulates the compiled metrics' state (totals, counts, confusion
    counts), the driver merges the states and reads the results: the figures are those of
    `model.evaluate` on all rows, for additive metrics (AUC and precision included).

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
    )
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
