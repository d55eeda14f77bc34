"""The columnar feed: vectors, arrays and scalars through Arrow into numpy, no row loops."""

import numpy as np
import pyarrow as pa
import pytest
from pyspark.ml.linalg import SparseVector, Vectors

from distkeras.data import arrow_to_numpy, collect_arrays, columnar_frame, model_arrays


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
