"""The columnar data feed: Spark DataFrame columns to numpy arrays, through Arrow.

On the driver, `columnar_frame` selects the feature and label columns and turns ML vectors
into arrays; on the executors, `arrow_to_numpy` turns a partition's Arrow record batches into
one numpy array per column, with no per-row Python loop. A binary column of packed float32
rows (`pack_column`, `numpy_to_frame(packed=True)`) is read without a copy and is the
cheapest input: Spark copies it to Arrow once per row instead of value by value. The column
checks that use the kinds (`check_columns`, `sample_widths`) live here too; validation.py
checks plain arguments and model shapes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

VECTOR, ARRAY, PACKED, SCALAR = "vector", "array", "packed", "scalar"
PACKED_DTYPE = np.dtype("<f4")  # what a binary feature column holds: little-endian float32


def column_kind(data_type) -> str | None:
    """Returns VECTOR, ARRAY, PACKED or SCALAR for a numeric Spark type, None otherwise.

    PACKED is a binary column whose values are rows of little-endian float32 (what
    `numpy.ndarray.tobytes()` gives for float32 rows): the cheapest way into Arrow.
    """
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import types

    if isinstance(data_type, VectorUDT):
        return VECTOR
    if isinstance(data_type, types.BinaryType):
        return PACKED
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


def check_columns(df, columns: Sequence[str], argument: str) -> None:
    """Checks that each column exists and is numeric (scalar, array or ML vector).

    Raises:
        ValueError: a column is missing; the message lists the available ones.
        TypeError: a column is not numeric; the message gives its type.
    """
    for column in columns:
        if column not in df.columns:
            raise ValueError(
                f"Column `{column}` (from `{argument}`) is not in the DataFrame. "
                f"Available columns: {df.columns}. Received: {argument}={column!r}"
            )
        data_type = df.schema[column].dataType
        if column_kind(data_type) is None:
            raise TypeError(
                f"Column `{column}` (from `{argument}`) must be numeric: a number, an array of "
                f"numbers, an ML Vector or binary packed float32. Received: a column of type "
                f"{data_type.simpleString()}"
            )


def sample_widths(df, columns: Sequence[str]) -> dict[str, int]:
    """Reads one row to learn each column's width (1 for scalars).

    Raises:
        ValueError: if the DataFrame is empty, or a binary column's rows are not whole
            float32 values.
    """

    kinds = {c: column_kind(df.schema[c].dataType) for c in columns}
    frame = columnar_frame(df, columns)  # vectors become arrays, as the workers see them
    rows = frame.select(*[_width_probe(kinds[c], c).alias(c) for c in columns]).head(1)
    if not rows:
        raise ValueError("The DataFrame is empty: there is nothing to train on. Received: 0 rows")
    widths = {}
    for column in columns:
        width = int(rows[0][column])
        if kinds[column] == PACKED:
            if width % PACKED_DTYPE.itemsize:
                raise ValueError(
                    f"Column `{column}` is binary, so it must hold packed float32 values (4 "
                    f"bytes each). Received: rows of {width} bytes"
                )
            width //= PACKED_DTYPE.itemsize
        widths[column] = width
    return widths


def _width_probe(kind: str, column: str):
    """A column's width as Spark computes it: 1 for a scalar, bytes for packed, else size."""
    from pyspark.sql import functions as F

    if kind == SCALAR:
        return F.lit(1)
    if kind == PACKED:
        return F.length(f"`{column}`")
    return F.size(f"`{column}`")


def columnar_frame(df, columns: Sequence[str]):
    """Selects `columns`, with vectors and numeric arrays as `array<float>` (see `float_rows`).

    Integer scalars stay integers (class indices); other scalars become float.
    """
    from pyspark.sql import functions as F

    selected = []
    for name in columns:
        data_type = df.schema[name].dataType
        if column_kind(data_type) == SCALAR:
            column = F.col(f"`{name}`").cast("int" if is_integral(data_type) else "float")
        else:
            column = float_rows(df, name)
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
        elif pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type):
            out[name] = _packed_to_matrix(name, array)
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


def _packed_to_matrix(name: str, array) -> np.ndarray:
    """A binary column of packed float32 rows as a (rows x width) array, without a copy."""
    import pyarrow as pa

    rows = len(array)
    _, offset_buffer, data = array.buffers()
    offset_type = np.int64 if pa.types.is_large_binary(array.type) else np.int32
    offsets = np.frombuffer(
        offset_buffer,
        dtype=offset_type,
        count=rows + 1,
        offset=array.offset * np.dtype(offset_type).itemsize,
    )
    lengths = np.diff(offsets)
    if rows and lengths.min() != lengths.max():
        raise ValueError(
            f"Column `{name}` has rows of unequal length (from {lengths.min()} to "
            f"{lengths.max()} bytes)."
        )
    length = int(lengths[0]) if rows else 0
    if length % PACKED_DTYPE.itemsize:
        raise ValueError(
            f"Column `{name}` is binary, so it must hold float32 values (4 bytes each), but its "
            f"rows have {length} bytes."
        )
    flat = np.frombuffer(
        data,
        dtype=PACKED_DTYPE,
        count=rows * length // PACKED_DTYPE.itemsize,
        offset=int(offsets[0]),
    )
    return flat.astype(np.float32, copy=False).reshape(rows, length // PACKED_DTYPE.itemsize)


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


def numpy_to_frame(spark, arrays: dict[str, np.ndarray], packed: bool = False):
    """Builds a DataFrame from numpy arrays: 2-D+ arrays become `array<float>` columns.

    Args:
        spark: the SparkSession.
        arrays: column name -> array; all arrays have the same number of rows.
        packed: make 2-D+ arrays binary columns of packed float32 rows instead (see
            `column_kind`), which Spark hands to Python faster (docs/performance.md).
    """
    import pyarrow as pa

    columns = {}
    for name, array in arrays.items():
        array = np.asarray(array)
        if array.ndim == 1:
            columns[name] = pa.array(array)
            continue
        flat = np.ascontiguousarray(array.reshape(len(array), -1), dtype=PACKED_DTYPE)
        columns[name] = _packed_array(flat) if packed else _list_array(flat)
    table = pa.table(columns)
    try:
        return spark.createDataFrame(table)
    except TypeError:  # pyspark < 4.0 takes pandas, not Arrow tables
        return spark.createDataFrame(table.to_pandas())


def _list_array(matrix: np.ndarray):
    """A (rows x width) float32 matrix as an Arrow list<float> array, without a per-row loop."""
    import pyarrow as pa

    rows, width = matrix.shape
    offsets = np.arange(0, (rows + 1) * width, width, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(matrix.ravel()))


def _packed_array(matrix: np.ndarray):
    """A (rows x width) float32 matrix as an Arrow binary array of packed rows, in chunks that
    keep each chunk's 32-bit offsets in range.
    """
    import pyarrow as pa

    rows, width = matrix.shape
    step = max(1, (2**31 - 1) // max(width * PACKED_DTYPE.itemsize, 1))
    chunks = [
        pack_rows("", _list_array(matrix[start : start + step]))
        for start in range(0, max(rows, 1), step)
    ]
    return pa.chunked_array(chunks, type=pa.binary())


def float_rows(df, column: str):
    """A numeric column as Spark passes it to Python: `array<float>` for vectors, arrays and
    numbers (an array of one), and packed binary as it is.
    """
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    kind = column_kind(df.schema[column].dataType)
    col = F.col(f"`{column}`")
    if kind == VECTOR:
        return vector_to_array(col, "float32")
    if kind == ARRAY:
        return col.cast("array<float>")
    if kind == PACKED:
        return col
    return F.array(col.cast("float"))


def pack_column(df, column: str, output_col: str | None = None):
    """Returns `df` with `column` (an ML vector, numeric array or number) as packed float32.

    Spark converts an array column to Arrow value by value, a binary column with one copy
    per row: packing once and caching the result makes each later `transform`, `evaluate`
    or training epoch over it cheaper (figures in docs/performance.md).

    Args:
        df: the DataFrame.
        column: the column to pack.
        output_col: where to put the packed column; None replaces `column` in place.

    Raises:
        ValueError, TypeError: naming the column, if it is missing or not numeric.
    """
    import pyarrow as pa
    from pyspark.sql.functions import arrow_udf

    check_columns(df, [column], "column")
    if column_kind(df.schema[column].dataType) == PACKED:
        return df if output_col in (None, column) else df.withColumn(output_col, df[column])

    def pack(rows):
        return pack_rows(column, rows)

    # Real (not string) annotations: Spark reads them to pick the Arrow UDF type.
    pack.__annotations__ = {"rows": pa.Array, "return": pa.Array}
    return df.withColumn(output_col or column, arrow_udf(pack, "binary")(float_rows(df, column)))


def pack_rows(name: str, rows):
    """An Arrow list<float> array as a binary array of packed float32 rows (nulls kept).

    Raises:
        ValueError: on null values inside a row, naming the column.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    values = rows.flatten()
    if values.null_count:
        raise ValueError(f"Column `{name}` has null elements inside its arrays.")
    flat = np.ascontiguousarray(values.to_numpy(zero_copy_only=False), dtype=PACKED_DTYPE)
    lengths = pc.list_value_length(rows).fill_null(0).to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths * PACKED_DTYPE.itemsize, out=offsets[1:])
    buffers = [None, pa.py_buffer(offsets), pa.py_buffer(flat)]
    packed = pa.Array.from_buffers(pa.binary(), len(rows), buffers)
    if rows.null_count:
        packed = pc.if_else(rows.is_null(), pa.scalar(None, pa.binary()), packed)
    return packed
