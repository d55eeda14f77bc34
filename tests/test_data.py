"""The columnar feed: vectors, arrays, packed rows and scalars through Arrow into numpy, no
row loops."""

import numpy as np
import pyarrow as pa
import pytest
from pyspark.ml.linalg import SparseVector, Vectors

from distkeras.data import (
    arrow_to_numpy,
    collect_arrays,
    columnar_frame,
    model_arrays,
    numpy_to_frame,
    pack_column,
    pack_rows,
)


def test_dense_sparse_array_and_scalar_columns(spark):
    rows = [
        (Vectors.dense([1.0, 2.0, 3.0]), [4.0, 5.0], 7, 0.5),
        (SparseVector(3, {1: 9.0}), [6.0, 7.0], 2, 1.5),
    ]
    df = spark.createDataFrame(rows, ["vec", "arr", "label", "target"])
    got = collect_arrays(df, ["vec", "arr", "label", "target"])
    np.testing.assert_array_equal(got["vec"], [[1, 2, 3], [0, 9, 0]])
    np.testing.assert_array_equal(got["arr"], [[4, 5], [6, 7]])
    np.testing.assert_array_equal(got["label"], [7, 2])
    np.testing.assert_allclose(got["target"], [0.5, 1.5])
    assert got["vec"].dtype == np.float32 and got["label"].dtype.kind == "i"


def test_columnar_frame_types(spark):
    df = spark.createDataFrame([(Vectors.dense([1.0]), 1, 2.0)], ["v", "i", "d"])
    types = dict(columnar_frame(df, ["v", "i", "d"]).dtypes)
    assert types == {"v": "array<float>", "i": "int", "d": "float"}
    packed = spark.createDataFrame([(bytearray(8),)], "p binary")
    assert dict(columnar_frame(packed, ["p"]).dtypes) == {"p": "binary"}


def test_strings_token_ids_booleans_and_nested_images_keep_their_meaning(spark):
    df = spark.createDataFrame(
        [("good film", [3, 9], True, [[0.5, 1.0], [0.0, 0.25]])],
        "text string, tokens array<long>, flag boolean, image array<array<double>>",
    )
    columns = ["text", "tokens", "flag", "image"]
    assert dict(columnar_frame(df, columns).dtypes) == {
        "text": "string",
        "tokens": "array<bigint>",
        "flag": "float",
        "image": "array<float>",
    }
    got = collect_arrays(df, columns)
    assert got["text"].dtype == object and got["text"][0] == "good film"  # as Keras takes it
    assert got["tokens"].dtype == np.int64 and got["tokens"].tolist() == [[3, 9]]
    np.testing.assert_array_equal(got["flag"], [1.0])
    np.testing.assert_array_equal(got["image"], [[0.5, 1.0, 0.0, 0.25]])  # flat, row-major
    round_trip = numpy_to_frame(
        spark, {"t": np.array([["a", "b"]], object), "i": np.array([[1, 2]], np.int32)}
    )
    assert dict(round_trip.dtypes) == {"t": "array<string>", "i": "array<int>"}


def test_rows_of_unequal_width_are_named():
    batch = pa.RecordBatch.from_pydict({"f": [[1.0, 2.0], [3.0]]})
    with pytest.raises(ValueError, match="`f` has rows of unequal width"):
        arrow_to_numpy([batch], ["f"])


def test_nulls_are_named():
    batch = pa.RecordBatch.from_pydict({"f": [1.0, None]})
    with pytest.raises(ValueError, match="`f` has 1 null"):
        arrow_to_numpy([batch], ["f"])


def test_batches_are_concatenated_and_reshaped():
    batches = [
        pa.RecordBatch.from_pydict({"f": [[float(i)] * 4 for i in range(3)], "y": [0, 1, 2]}),
        pa.RecordBatch.from_pydict({"f": [[9.0] * 4], "y": [3]}),
    ]
    columns = arrow_to_numpy(batches, ["f", "y"])
    x, y = model_arrays(columns, ["f"], ["y"], [(2, 2, 1)])
    assert x.shape == (4, 2, 2, 1) and x[3, 1, 1, 0] == 9.0
    np.testing.assert_array_equal(y, [0, 1, 2, 3])


def test_several_inputs_and_outputs_come_as_lists():
    columns = {
        "a": np.zeros((2, 3)),
        "b": np.ones((2, 2)),
        "y1": np.array([0, 1]),
        "y2": np.ones(2),
    }
    x, y = model_arrays(columns, ["a", "b"], ["y1", "y2"], [None, None])
    assert [part.shape for part in x] == [(2, 3), (2, 2)]
    assert isinstance(y, list) and len(y) == 2


def packed_batch(rows: np.ndarray) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(
        {"f": pa.array([row.astype("<f4").tobytes() for row in rows], type=pa.binary())}
    )


def test_packed_rows_are_read_as_float32_even_from_a_slice():
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    got = arrow_to_numpy([packed_batch(x).slice(2, 3)], ["f"])["f"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, x[2:5])


def test_packed_rows_of_unequal_or_partial_length_are_named():
    batch = pa.RecordBatch.from_pydict({"f": pa.array([b"\0" * 8, b"\0" * 4])})
    with pytest.raises(ValueError, match="`f` has rows of unequal length"):
        arrow_to_numpy([batch], ["f"])
    batch = pa.RecordBatch.from_pydict({"f": pa.array([b"\0" * 6, b"\0" * 6])})
    with pytest.raises(ValueError, match="`f` is binary.*6 bytes"):
        arrow_to_numpy([batch], ["f"])


def test_pack_rows_keeps_null_rows_and_refuses_null_values():
    rows = pa.array([[1.0, 2.0], None, [3.0, 4.0]], type=pa.list_(pa.float32()))
    packed = pack_rows("f", rows)
    assert packed.to_pylist()[1] is None
    assert np.frombuffer(packed[2].as_py(), "<f4").tolist() == [3.0, 4.0]
    with pytest.raises(ValueError, match="`f` has null elements"):
        pack_rows("f", pa.array([[1.0, None]], type=pa.list_(pa.float32())))


def test_packed_frames_round_trip(spark):
    x = np.random.default_rng(3).random((40, 5), dtype=np.float32)
    labels = np.arange(40)
    df = numpy_to_frame(spark, {"x": x, "label": labels}, packed=True)
    assert dict(df.dtypes)["x"] == "binary"
    got = collect_arrays(df, ["x", "label"])
    np.testing.assert_array_equal(got["x"], x)
    np.testing.assert_array_equal(got["label"], labels)


def test_pack_column_turns_vectors_into_packed_rows(spark):
    rows = [(Vectors.dense([1.0, 2.0, 3.0]),), (SparseVector(3, {1: 9.0}),)]
    df = spark.createDataFrame(rows, ["vec"])
    packed = pack_column(df, "vec", "packed")
    assert dict(packed.dtypes) == {"vec": "vector", "packed": "binary"}
    np.testing.assert_array_equal(
        collect_arrays(packed, ["packed"])["packed"], [[1, 2, 3], [0, 9, 0]]
    )
    assert pack_column(packed, "packed") is packed
    with pytest.raises(ValueError, match="`nope`"):
        pack_column(df, "nope")
