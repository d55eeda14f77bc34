"""Batched inference in an executor's Python worker, for KerasModel, ModelPredictor and evaluate.

InferencePlan: what an executor needs (the model as a ModelSpec, feature columns, batch
size), shipped in the task closure by the driver (distkeras.inference). `cached_model`
builds a plan's model once per Python worker (executor.model_cache); `predict_arrays` (an
Arrow UDF) and `evaluate_partition` (mapInArrow) run it on whole Arrow batches.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import Sequence

import numpy as np

from distkeras import data
from distkeras.executor.backend import use_backend
from distkeras.executor.model_cache import MODELS
from distkeras.model_spec import ModelSpec

logger = logging.getLogger(__name__)

ARGMAX, THRESHOLD, VALUE = "argmax", "threshold", "value"
RESULT_TYPE = "output array<float>, prediction double"


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
        allow_cpu_fallback: run on the CPU when Spark gave GPUs that TensorFlow cannot see
            (executor.devices.task_devices); False: fail naming them.
        backend: the driver's Keras backend, which the executor must run (executor.backend).
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
    allow_cpu_fallback: bool = False
    backend: str = "tensorflow"


def cached_model(plan: InferencePlan):
    """The plan's model, built on first use in this process and kept for the next batches.

    The cache holds the last few models by fingerprint, so a process that serves several
    models (a cross-validation, say) does not keep all of them. Every task first makes its
    own GPUs (Spark's) the visible ones: a reused Python worker serves tasks given others.
    """
    # Once per task: the backend (fails naming both), then the task's devices (TensorFlow).
    use_backend(plan.backend, plan.threads, plan.allow_cpu_fallback)
    built = []

    def build():
        built.append(plan.key)
        return _build(plan)

    model = MODELS.get_or_build(("predict", plan.key), build)
    if built:  # frozen once the cache dropped its oldest, so that one can still be freed
        _freeze_heap()
        logger.debug("Built model %s in this process", plan.key[:12])
    return model


def _freeze_heap() -> None:
    """Moves the objects alive now (TensorFlow, Keras, the cached models) out of the garbage
    collector's reach.

    PySpark's worker runs a full `gc.collect()` after every task; with TensorFlow loaded,
    that scan of every live object cost more than the prediction of a small batch (figures:
    docs/performance.md, "Inference"). The heap is unfrozen and collected first, so models
    dropped from the cache are still freed.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _build(plan: InferencePlan):
    return plan.spec.build(plan.custom_objects, compiled=plan.compiled)


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
