"""distkeras.inputs: every form `fit` takes becomes numpy columns in the model's order.

Fast tests, no Spark job: the forms, the split, the label checks, the arguments.
"""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from distkeras.executor.model_data import row_weights
from distkeras.inputs import FitOptions, ValidationSet, adapt, train_validation_split
from distkeras.inputs.labels import check_array_labels, check_class_weight, sparse_outputs


def two_in_two_out():
    """A functional model with named inputs `a`, `b` and outputs `p`, `q`."""
    a = keras.Input((3,), name="a")
    b = keras.Input((2,), name="b")
    joined = keras.layers.concatenate([a, b])
    p = keras.layers.Dense(4, activation="softmax", name="p")(joined)
    q = keras.layers.Dense(1, name="q")(joined)
    model = keras.Model([a, b], {"p": p, "q": q})
    model.compile("sgd", {"p": "sparse_categorical_crossentropy", "q": "mse"})
    return model


def one_in_one_out(width=3, classes=4):
    model = keras.Sequential(
        [keras.Input((width,)), keras.layers.Dense(classes, activation="softmax")]
    )
    model.compile("sgd", "sparse_categorical_crossentropy")
    return model


def test_numpy_arrays():
    x, y = np.ones((5, 3), "float32"), np.arange(5) % 4
    data = adapt(one_in_one_out(), x, y)
    assert data.rows == 5 and data.features[0].shape == (5, 3) and data.sample_weight is None
    np.testing.assert_array_equal(data.labels[0], y)


def test_dicts_follow_the_model_order_of_inputs_and_outputs():
    model = two_in_two_out()
    x = {"b": np.full((4, 2), 2.0), "a": np.full((4, 3), 1.0)}
    y = {"q": np.zeros(4), "p": np.arange(4)}
    data = adapt(model, x, y, sample_weight=np.ones(4))
    assert [f.shape for f in data.features] == [(4, 3), (4, 2)]
    # model.outputs are in Keras' flat order of the output dict: p, q
    np.testing.assert_array_equal(data.labels[0], np.arange(4))
    x_packed, y_packed, _ = data.model_inputs(model)
    assert isinstance(x_packed, list) and sorted(y_packed) == ["p", "q"]


def test_dict_keys_matching_no_input_name():
    with pytest.raises(ValueError, match=r"`x` has keys.*unknown \['c'\].*missing \['b'\]"):
        adapt(two_in_two_out(), {"a": np.ones((2, 3)), "c": np.ones((2, 2))}, np.zeros(2))


def test_tensors_and_string_tensors():
    x = tf.constant([["good film"], ["bad film"]])
    data = adapt(None, x, tf.constant([1, 0]))
    assert data.features[0].dtype == object and data.features[0][0, 0] == "good film"
    assert data.labels[0].dtype.kind == "i"


def test_strings_and_bytes_become_object_arrays_of_str_as_keras_takes():
    for texts in (np.array(["a", "b"]), np.array([b"a", b"b"]), np.array([b"a", "b"], object)):
        strings = adapt(None, texts, np.zeros(2)).features[0]
        assert strings.dtype == object and list(strings) == ["a", "b"]


def test_integer_token_ids_and_booleans_keep_their_dtype():
    data = adapt(None, np.array([[3, 9], [4, 1]], "int64"), np.array([True, False]))
    assert data.features[0].dtype == np.int64 and data.labels[0].dtype == bool


def test_pandas():
    frame = pd.DataFrame({"u": [1.0, 2.0], "v": [3.0, 4.0]})
    data = adapt(one_in_one_out(width=2), frame, pd.Series([0, 1]))
    np.testing.assert_array_equal(data.features[0], [[1, 3], [2, 4]])


def test_dataset_of_pairs_and_triples():
    x, y, w = np.arange(20.0).reshape(10, 2), np.arange(10) % 4, np.linspace(0, 1, 10)
    data = adapt(one_in_one_out(2), tf.data.Dataset.from_tensor_slices((x, y, w)).batch(4))
    assert data.batch_size == 4 and data.rows == 10
    np.testing.assert_allclose(data.sample_weight, w, rtol=1e-6)
    pairs = adapt(one_in_one_out(2), tf.data.Dataset.from_tensor_slices((x, y)).batch(3))
    assert pairs.sample_weight is None and pairs.rows == 10


def test_dataset_with_y_is_refused():
    dataset = tf.data.Dataset.from_tensor_slices((np.ones((2, 3)), np.zeros(2))).batch(1)
    with pytest.raises(ValueError, match="`y` must be None when `x` is a"):
        adapt(one_in_one_out(), dataset, np.zeros(2))


def test_infinite_dataset_needs_steps():
    dataset = tf.data.Dataset.from_tensor_slices((np.ones((4, 3)), np.zeros(4))).batch(2)
    with pytest.raises(ValueError, match="infinite dataset.*steps_per_epoch=None"):
        adapt(one_in_one_out(), dataset.repeat())
    assert adapt(one_in_one_out(), dataset.repeat(), steps=5).rows == 10


def test_features_only_dataset_is_refused():
    dataset = tf.data.Dataset.from_tensor_slices(np.ones((4, 3))).batch(2)
    with pytest.raises(ValueError, match=r"yield \(x, y\).*Received: an element of type"):
        adapt(one_in_one_out(), dataset)


class Batches(keras.utils.PyDataset):
    def __init__(self, count=None):
        super().__init__()
        self.count = count

    def __len__(self):
        return self.count

    @property
    def num_batches(self):
        return self.count

    def __getitem__(self, index):
        return np.full((2, 3), index, "float32"), np.array([index % 4] * 2)


def test_py_dataset():
    data = adapt(one_in_one_out(), Batches(3))
    assert data.rows == 6 and data.batch_size == 2
    with pytest.raises(ValueError, match="PyDataset without a length"):
        adapt(one_in_one_out(), Batches(None))


def test_generator():
    batches = ((np.ones((2, 3)), np.zeros(2)) for _ in range(3))
    assert adapt(one_in_one_out(), batches).rows == 6


def test_ragged_rows():
    with pytest.raises(ValueError, match="`x` has rows of different lengths.*from 1 to 2"):
        adapt(None, [[1.0], [1.0, 2.0]], np.zeros(2))
    with pytest.raises(ValueError, match="ragged tensor"):
        adapt(None, tf.ragged.constant([[1.0], [1.0, 2.0]]), np.zeros(2))
    uneven = [(np.ones((2, 3)), np.zeros(2)), (np.ones((2, 4)), np.zeros(2))]
    with pytest.raises(ValueError, match=r"feature rows differ in shape.*\(3,\), \(4,\)"):
        adapt(None, iter(uneven))


def test_rows_must_match():
    with pytest.raises(ValueError, match=r"same number of rows.*x: \[3\], y: \[2\]"):
        adapt(None, np.ones((3, 3)), np.zeros(2))


def test_y_is_required_for_features_only():
    with pytest.raises(ValueError, match="`y` is required.*Received: y=None, x of type ndarray"):
        adapt(None, np.ones((3, 3)))


def test_validation_split_holds_out_the_last_rows_as_keras():
    x, y = np.arange(100.0).reshape(50, 2), np.arange(50)
    train, held_out = train_validation_split(adapt(None, x, y), 0.1)
    assert train.rows == 45 and held_out.rows == 5
    np.testing.assert_array_equal(held_out.labels[0], y[45:])
    from keras.src.trainers.data_adapters.array_slicing import (
        train_validation_split as keras_split,
    )

    (_, keras_y), (_, keras_val_y) = keras_split((x, y), validation_split=0.1)
    np.testing.assert_array_equal(held_out.labels[0], keras_val_y)
    with pytest.raises(ValueError, match="1 rows, too few.*validation_split=0.5"):
        train_validation_split(adapt(None, x[:1], y[:1]), 0.5)


def test_sparse_outputs_found_per_output_loss():
    assert sparse_outputs(two_in_two_out(), two_in_two_out().loss, ["p", "q"]) == {0: 4}
    assert sparse_outputs(one_in_one_out(classes=7), "sparse_categorical_crossentropy", []) == {
        0: 7
    }
    loss = keras.losses.SparseCategoricalCrossentropy()
    assert sparse_outputs(one_in_one_out(), loss, []) == {0: 4}
    assert sparse_outputs(one_in_one_out(), "categorical_crossentropy", []) == {}


def test_labels_out_of_range_name_the_label_and_both_ranges():
    with pytest.raises(ValueError, match=r"`y` holds class indices from 0 to 10.*indices 0 to 9"):
        check_array_labels({0: 10}, [np.array([0, 3, 10])], ["`y`"])
    with pytest.raises(ValueError, match="from -1 to 2"):
        check_array_labels({0: 10}, [np.array([-1, 2])], ["`y`"])
    with pytest.raises(ValueError, match="`y` has 1 NaN"):
        check_array_labels({0: 10}, [np.array([1.0, np.nan])], ["`y`"])
    check_array_labels({0: 10}, [np.array([0, 9])], ["`y`"])


def test_class_weight_as_row_weights_as_keras():
    from keras.src.trainers.data_adapters.data_adapter_utils import (
        class_weight_to_sample_weights,
    )

    y = np.array([0, 1, 2, 1, 0])
    weights = {0: 0.5, 1: 2.0}
    np.testing.assert_allclose(
        row_weights(y, None, weights), class_weight_to_sample_weights(y, weights)
    )
    one_hot = np.eye(3)[y]
    np.testing.assert_allclose(row_weights(one_hot, np.full(5, 2.0), weights), [1, 4, 2, 4, 1])
    assert row_weights(y, None, None) is None


def test_class_weight_checks():
    assert check_class_weight({0: 1, 1: 2.5}, 1) == {0: 1.0, 1: 2.5}
    with pytest.raises(ValueError, match="single output"):
        check_class_weight({0: 1.0}, 2)
    with pytest.raises(TypeError, match="keys to be class indices.*'cat'"):
        check_class_weight({"cat": 1.0}, 1)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"validation_freq": 0}, "validation_freq=0"),
        ({"validation_freq": "2"}, "validation_freq='2'"),
        ({"validation_split": 1.0}, "validation_split=1.0"),
        ({"shuffle": "batch"}, "shuffle='batch'"),
        ({"initial_epoch": -1}, "initial_epoch=-1"),
        ({"steps_per_epoch": 0}, "steps_per_epoch=0"),
        ({"validation_steps": 1.5}, "validation_steps=1.5"),
        ({"validation_batch_size": 0}, "validation_batch_size=0"),
    ],
)
def test_fit_options_name_the_argument(arguments, message):
    with pytest.raises((TypeError, ValueError), match=message):
        FitOptions(epochs=2, **arguments)


def test_steps_per_epoch_is_shared_by_the_workers():
    assert FitOptions(epochs=1, steps_per_epoch=10).worker_steps(4) == 3
    assert FitOptions(epochs=1).worker_steps(4) is None


def test_validation_freq_as_keras():
    every_other = ValidationSet(None, None, freq=2)
    assert [every_other.due(epoch) for epoch in range(4)] == [False, True, False, True]
    listed = ValidationSet(None, None, freq=[1, 3])
    assert [listed.due(epoch) for epoch in range(4)] == [True, False, True, False]
