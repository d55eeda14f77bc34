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

VECTOR, ARRAY, NESTED, PACKED, SCALAR, STRING = (
    "vector",
    "array",
    "nested",
    "packed",
    "scalar",
    "string",
)
PACKED_DTYPE = np.dtype("<f4")  # what a binary feature column holds: little-endian float32


def column_kind(data_type) -> str | None:
    """Returns the kind of a Spark column the workers can read, None for any other type.

    VECTOR: an ML Vector. ARRAY: an array of numbers, booleans or strings. NESTED: arrays
    of arrays of numbers (images), flattened row by row. PACKED: a binary column whose
    values are rows of little-endian float32 (what `numpy.ndarray.tobytes()` gives for
    float32 rows), the cheapest way into Arrow. SCALAR: a number or boolean. STRING: a
    string, for models that preprocess text inside (TextVectorization, StringLookup).
    """
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import types

    if isinstance(data_type, VectorUDT):
        return VECTOR
    if isinstance(data_type, types.BinaryType):
        return PACKED
    if isinstance(data_type, types.StringType):
        return STRING
    if isinstance(data_type, types.ArrayType):
        element = data_type.elementType
        if isinstance(element, (types.NumericType, types.BooleanType, types.StringType)):
            return ARRAY
        if isinstance(element, types.ArrayType) and column_kind(element) in (ARRAY, NESTED):
            return NESTED
        return None
    if isinstance(data_type, (types.NumericType, types.BooleanType)):
        return SCALAR
    return None


def holds_strings(data_type) -> bool:
    """True for a string column or an array of strings."""
    from pyspark.sql import types

    return isinstance(_element_type(data_type), types.StringType)


def _element_type(data_type):
    """The innermost element type of a (nested) array type."""
    from pyspark.sql import types

    while isinstance(data_type, types.ArrayType):
        data_type = data_type.elementType
    return data_type


def is_integral(data_type) -> bool:
    """True for Spark's integer types (class-index labels)."""
    from pyspark.sql import types

    return isinstance(
        data_type, (types.ByteType, types.ShortType, types.IntegerType, types.LongType)
    )


def check_columns(df, columns: Sequence[str], argument: str, strings: bool = False) -> None:
    """Checks that each column exists and holds what a worker can read (see `column_kind`).

    Args:
        df: the DataFrame.
        columns: the columns to check.
        argument: the argument that named them, for the messages.
        strings: accept string columns (features of models that take strings).

    Raises:
        ValueError: a column is missing; the message lists the available ones.
        TypeError: a column is not numeric (nor strings, where accepted); the message gives
            its type.
    """
    for column in columns:
        if column not in df.columns:
            raise ValueError(
                f"Column `{column}` (from `{argument}`) is not in the DataFrame. "
                f"Available columns: {df.columns}. Received: {argument}={column!r}"
            )
        data_type = df.schema[column].dataType
        if column_kind(data_type) is None or (not strings and holds_strings(data_type)):
            accepted = "numeric or strings" if strings else "numeric"
            raise TypeError(
                f"Column `{column}` (from `{argument}`) must be {accepted}: a number, a "
                f"boolean{', a string' if strings else ''}, an array of them (nested for "
                "images), an ML Vector or binary packed float32. Received: a column of type "
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

    if kind in (SCALAR, STRING):
        return F.lit(1)
    if kind == PACKED:
        return F.length(f"`{column}`")
    return F.size(f"`{column}`")


def columnar_frame(df, columns: Sequence[str]):
    """Selects `columns` as the workers read them (see `float_rows`).

    Integer scalars and integer arrays stay integers (class indices, token ids), strings
    stay strings; other numbers and booleans become float, vectors and nested arrays flat
    `array<float>`.
    """
    from pyspark.sql import functions as F

    selected = []
    for name in columns:
        data_type = df.schema[name].dataType
        kind = column_kind(data_type)
        if kind == SCALAR:
            column = F.col(f"`{name}`").cast("int" if is_integral(data_type) else "float")
        elif kind == STRING:
            column = F.col(f"`{name}`")
        else:
            column = float_rows(df, name)
        selected.append(column.alias(name))
    return df.select(*selected)


def arrow_to_numpy(batches: Iterable, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Concatenates Arrow record batches into one numpy array per column.

    List columns become 2-D arrays (rows x width): float32, or integers, booleans and strings
    as they are; scalar columns 1-D arrays (strings as object arrays of `str`).

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
            out[name] = _plain(array.to_numpy(zero_copy_only=False), array.type)
    return out


def _plain(values: np.ndarray, arrow_type) -> np.ndarray:
    """Floating point numbers as float32; integers, booleans and strings (an object array of
    `str`, as Keras takes them) as they are."""
    import pyarrow as pa

    if pa.types.is_floating(arrow_type):
        return values.astype(np.float32, copy=False)
    return values


def _list_to_matrix(name: str, array) -> np.ndarray:
    rows = len(array)
    values = array.flatten()
    if values.null_count:
        raise ValueError(f"Column `{name}` has null elements inside its arrays.")
    flat = _plain(values.to_numpy(zero_copy_only=False), values.type)
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
    features = reshaped(columns, feature_cols, input_shapes)
    labels = [columns[name] for name in label_cols]
    return (
        features[0] if len(features) == 1 else features,
        labels[0] if len(labels) == 1 else labels,
    )


def reshaped(columns: dict, names, shapes) -> list[np.ndarray]:
    """The arrays of `names`, flat rows reshaped to `shapes` (None: kept as they are)."""
    out = []
    for name, shape in zip(names, shapes):
        array = columns[name]
        if shape is not None and len(array):
            array = array.reshape((len(array), *shape))
        out.append(array)
    return out


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
    """Builds a DataFrame from numpy arrays, one column per array.

    1-D arrays become scalar columns (numbers, booleans, strings); 2-D+ arrays become one
    array per row (`array<float>`; integers, booleans and strings keep their type), flat:
    the workers reshape rows to the model's input shape.

    Args:
        spark: the SparkSession.
        arrays: column name -> array; all arrays have the same number of rows.
        packed: make 2-D+ floating point arrays binary columns of packed float32 rows
            instead (see `column_kind`), which Spark hands to Python faster
            (docs/performance.md).
    """
    table = arrow_table(arrays, packed)
    try:
        return spark.createDataFrame(table)
    except TypeError:  # pyspark < 4.0 takes pandas, not Arrow tables
        return spark.createDataFrame(table.to_pandas())


def arrow_table(arrays: dict[str, np.ndarray], packed: bool = False):
    """numpy arrays as an Arrow table, one column per array, as `numpy_to_frame` lays them
    out (the workers read a table built here the way they read such a DataFrame)."""
    import pyarrow as pa

    columns = {}
    for name, array in arrays.items():
        array = np.asarray(array)
        if array.ndim == 1:
            columns[name] = pa.array(array)
            continue
        rows = array.reshape(len(array), -1)
        if array.dtype.kind in "biuUO":
            columns[name] = _list_array(np.ascontiguousarray(rows))
            continue
        flat = np.ascontiguousarray(rows, dtype=PACKED_DTYPE)
        columns[name] = _packed_array(flat) if packed else _list_array(flat)
    return pa.table(columns)


def _list_array(matrix: np.ndarray):
    """A (rows x width) matrix as an Arrow list array, without a per-row loop."""
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
    """A column as Spark passes it to Python: `array<float>` for vectors, arrays and numbers
    and booleans (an array of one), integer and string arrays as they are, nested arrays
    flattened, packed binary and strings as they are.
    """
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F
    from pyspark.sql import types

    data_type = df.schema[column].dataType
    kind = column_kind(data_type)
    col = F.col(f"`{column}`")
    if kind == VECTOR:
        return vector_to_array(col, "float32")
    if kind in (PACKED, STRING):
        return col
    if kind not in (ARRAY, NESTED):
        return F.array(col.cast("float"))
    while isinstance(data_type.elementType, types.ArrayType):
        col, data_type = F.flatten(col), data_type.elementType
    element = _element_type(data_type)
    if is_integral(element) or isinstance(element, types.StringType):
        return col
    return col.cast("array<float>")


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
