"""ModelSpec: models rebuilt from config + weights + compile config predict bit-for-bit alike."""

import keras
import numpy as np
import pytest

from distkeras.model_spec import ModelSpec

from .conftest import mlp


@keras.saving.register_keras_serializable(package="distkeras_tests")
class TwoTowers(keras.Model):
    """A subclassed model registered as serializable."""

    def __init__(self, units=8, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.left = keras.layers.Dense(units, activation="tanh")
        self.right = keras.layers.Dense(3)

    def call(self, inputs):
        return self.right(self.left(inputs))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class Scale(keras.layers.Layer):
    """A custom layer known only through custom_objects."""

    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, inputs):
        return inputs * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


def _functional():
    a = keras.Input((4,), name="a")
    b = keras.Input((3,), name="b")
    h = keras.layers.Dense(5, activation="relu")(keras.layers.Concatenate()([a, b]))
    out1 = keras.layers.Dense(2, activation="softmax", name="cls")(h)
    out2 = keras.layers.Dense(1, name="reg")(h)
    model = keras.Model([a, b], [out1, out2])
    model.compile("sgd", ["sparse_categorical_crossentropy", "mse"], metrics=[["accuracy"], []])
    return model


def _assert_same_predictions(model, rebuilt, x):
    expected = model.predict(x, verbose=0)
    got = rebuilt.predict(x, verbose=0)
    for e, g in zip(keras.tree.flatten(expected), keras.tree.flatten(got), strict=True):
        np.testing.assert_array_equal(e, g)


def test_sequential_round_trip_is_bit_for_bit():
    model = mlp(input_dim=6, hidden=(7,), classes=3)
    rebuilt = ModelSpec.from_model(model).build()
    _assert_same_predictions(model, rebuilt, np.random.rand(9, 6).astype("float32"))
    assert rebuilt.compiled and rebuilt.loss == "sparse_categorical_crossentropy"
    assert type(rebuilt.optimizer).__name__ == "Adam"


def test_functional_several_inputs_and_outputs():
    model = _functional()
    rebuilt = ModelSpec.from_model(model).build()
    x = [np.random.rand(5, 4).astype("float32"), np.random.rand(5, 3).astype("float32")]
    _assert_same_predictions(model, rebuilt, x)


def test_subclassed_registered_model():
    model = TwoTowers(units=4)
    model(np.zeros((1, 5), "float32"))
    model.compile("adam", "mse")
    rebuilt = ModelSpec.from_model(model).build()
    _assert_same_predictions(model, rebuilt, np.random.rand(6, 5).astype("float32"))


def test_the_models_own_classes_travel_with_it():
    # Scale is neither registered nor passed: the spec carries it by value (before it
    # travelled, build() raised "Could not locate class 'Scale'").
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(Scale(3.0)(inputs)))
    model.compile("adam", "mse")
    spec = ModelSpec.from_model(model)
    assert spec.objects
    _assert_same_predictions(model, spec.build(), np.random.rand(4, 3).astype("float32"))


def test_an_object_that_cannot_be_shipped_is_named(tmp_path):
    with open(tmp_path / "log.txt", "w") as log:

        def logged_relu(t):
            log.write("called\n")
            return keras.activations.relu(t)

        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, logged_relu)])
        model.compile("adam", "mse")
        with pytest.raises(TypeError, match="'logged_relu'.*cannot be shipped"):
            ModelSpec.from_model(model)


def test_overrides_replace_compile_settings():
    model = mlp(input_dim=4, hidden=(), classes=2)
    sgd = keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)
    rebuilt = ModelSpec.from_model(model, optimizer=sgd, loss="mse", metrics=["mae"]).build()
    assert rebuilt.loss == "mse"
    assert rebuilt.optimizer.get_config()["nesterov"] is True
    assert model.optimizer.__class__.__name__ == "Adam"  # the original is untouched


def test_uncompiled_model_without_loss_is_refused():
    with pytest.raises(ValueError, match="not compiled"):
        ModelSpec.from_model(mlp(input_dim=4, hidden=(), classes=2, compile=False))


def test_spec_holds_no_keras_objects():
    spec = ModelSpec.from_model(mlp(input_dim=4, hidden=(3,), classes=2))
    assert isinstance(spec.architecture, str) and isinstance(spec.compile_config, str)
    assert all(isinstance(w, np.ndarray) for w in spec.weights)
    assert spec.num_bytes == sum(w.nbytes for w in spec.weights) > 0


def test_metrics_passed_as_loss_weights_are_caught_on_the_driver():
    model = mlp(input_dim=4, hidden=(), classes=2, compile=False)
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    with pytest.raises(ValueError, match="loss_weights.*metrics=.*Received: loss_weights"):
        ModelSpec.from_model(model)
