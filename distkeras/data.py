"""The columnar data feed: Spark DataFrame columns to numpy arrays, through Arrow.

On the driver, `columnar_frame` selects the feature and label columns and turns ML vectors
into arrays; on the executors, `arrow_to_numpy` turns a partition's Arrow record batches into
one numpy array per column, with no per-row Python loop. Column checks live in validation.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

VECTOR, ARRAY, SCALAR = "vector", "array", "scalar"


def column_kind(data_type) -> str | None:
    """Returns VECTOR, ARRAY or SCALAR for a numeric Spark type, None for anything else."""
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import types

    if isinstance(data_type, VectorUDT):
        return VECTOR
    if isinstance(data_type, types.ArrayType) and isinstance(
        data_type.elementType, types.NumericType
    ):
        return ARRAY
    if isinstance(data_type, (types.NumericType, types.BooleanType)):
        return SCALAR
    return None


def is_integral(data_type) -> bool:
    """True for Spark's integer types (class-index labels)."""
    from pyspark.sql import types

    return isinstance(
        data_type, (types.ByteType, types.ShortType, types.IntegerType, types.LongType)
    )


def columnar_frame(df, columns: Sequence[str]):
    """Selects `columns`, with vectors and numeric arrays as `array<float>`.

    Integer scalars stay integers (class indices); other scalars become float.
    """
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    selected = []
    for name in columns:
        data_type = df.schema[name].dataType
        kind = column_kind(data_type)
        column = F.col(f"`{name}`")
        if kind == VECTOR:
            column = vector_to_array(column, "float32")
        elif kind == ARRAY:
            column = column.cast("array<float>")
        elif is_integral(data_type):
            column = column.cast("int")
        else:
            column = column.cast("float")
        selected.append(column.alias(name))
    return df.select(*selected)


def arrow_to_numpy(batches: Iterable, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Concatenates Arrow record batches into one numpy array per column.

    List columns become 2-D float32 arrays (rows x width); scalar columns 1-D arrays.

    Raises:
        ValueError: on null values or rows of unequal width, naming the column.
    """
    import pyarrow as pa

    batches = [b for b in batches if b.num_rows]
    if not batches:
        return {name: np.zeros((0,), dtype=np.float32) for name in columns}
    table = pa.Table.from_batches(batches)
    out = {}
    for name in columns:
        chunked = table.column(name)
        if chunked.null_count:
            raise ValueError(f"Column `{name}` has {chunked.null_count} null values.")
        array = chunked.combine_chunks() if chunked.num_chunks != 1 else chunked.chunk(0)
        if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
            out[name] = _list_to_matrix(name, array)
        else:
            out[name] = array.to_numpy(zero_copy_only=False)
    return out


def _list_to_matrix(name: str, array) -> np.ndarray:
    rows = len(array)
    values = array.flatten()
    if values.null_count:
        raise ValueError(f"Column `{name}` has null elements inside its arrays.")
    flat = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    offsets = array.offsets.to_numpy()
    widths = np.diff(offsets)
    if rows and (widths.min() != widths.max()):
        raise ValueError(
            f"Column `{name}` has rows of unequal width (from {widths.min()} to {widths.max()})."
        )
    return flat.reshape(rows, int(widths[0]) if rows else 0)


def model_arrays(columns: dict, feature_cols, label_cols, input_shapes):
    """Arranges numpy columns as Keras expects: (x, y), a list where the model has several.

    Args:
        columns: column name -> numpy array (from `arrow_to_numpy`).
        feature_cols, label_cols: column names in the order of the model's inputs and outputs.
        input_shapes: per input, the shape (without batch) to reshape flat rows to, or None.
    """
    features = []
    for name, shape in zip(feature_cols, input_shapes):
        array = columns[name]
        if shape is not None and len(array):
            array = array.reshape((len(array), *shape))
        features.append(array)
    labels = [columns[name] for name in label_cols]
    return (
        features[0] if len(features) == 1 else features,
        labels[0] if len(labels) == 1 else labels,
    )


def collect_arrays(df, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Collects `columns` of `df` to the driver as numpy arrays, through Arrow."""
    frame = columnar_frame(df, columns)
    if hasattr(frame, "toArrow"):
        batches = frame.toArrow().to_batches()
    else:  # pyspark < 4.0
        import pyarrow as pa

        batches = pa.Table.from_pandas(frame.toPandas()).to_batches()
    return arrow_to_numpy(batches, columns)


def numpy_to_frame(spark, arrays: dict[str, np.ndarray]):
    """Builds a DataFrame from numpy arrays: 2-D+ arrays become `array<float>` columns.

    Args:
        spark: the SparkSession.
        arrays: column name -> array; all arrays have the same number of rows.
    """
    import pyarrow as pa

    columns = {}
    for name, array in arrays.items():
        array = np.asarray(array)
        if array.ndim == 1:
            columns[name] = pa.array(array)
        else:
            flat = np.ascontiguousarray(array.reshape(len(array), -1), dtype=np.float32)
            width = flat.shape[1]
            offsets = np.arange(0, (len(flat) + 1) * width, width, dtype=np.int32)
            columns[name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat.ravel()))
    table = pa.table(columns)
    try:
        return spark.createDataFrame(table)
    except TypeError:  # pyspark < 4.0 takes pandas, not Arrow tables
        return spark.createDataFrame(table.to_pandas())
