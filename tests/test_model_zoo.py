"""The models Keras users write, trained by the trainers as `model.fit` trains them.

Every custom class and function here is defined inside a test function, so the executors
cannot import it: cloudpickle must ship it by value inside the Spark job (model_objects).
Digits (1,347 train rows, 450 test), batch 32, 2 workers on the session's local[2], two
Spark fits in all. Accuracy against `model.fit` per family (means of paired runs) is
measured by bench/model_zoo.py (docs/performance.md, "Model zoo").
"""

import keras
import numpy as np
import pytest

from distkeras.algorithms import registry
from distkeras.data import numpy_to_frame
from distkeras.datasets import load_digits
from distkeras.trainers import make_trainer

from .conftest import accuracy

layers = keras.layers


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def custom_model(x):
    """An unbuilt model (no Input) using one custom object of each kind, all local to this
    function, a Lambda, an adapted Normalization and a BatchNormalization."""

    @keras.saving.register_keras_serializable("zoo")
    def scaled_relu(t):
        return keras.activations.relu(t) * 1.5

    @keras.saving.register_keras_serializable("zoo")
    class SmallUniform(keras.initializers.Initializer):
        def __call__(self, shape, dtype=None):
            return keras.random.uniform(shape, -0.1, 0.1, dtype=dtype)  # unseeded, as users write

    @keras.saving.register_keras_serializable("zoo")
    class HalfL2(keras.regularizers.Regularizer):
        def __call__(self, weights):
            return 1e-5 * keras.ops.sum(weights**2)

    @keras.saving.register_keras_serializable("zoo")
    class Block(layers.Layer):
        def __init__(self, units=32, **kwargs):
            super().__init__(**kwargs)
            self.units = units
            self.dense = layers.Dense(
                units, scaled_relu, kernel_initializer=SmallUniform(), kernel_regularizer=HalfL2()
            )

        def build(self, input_shape):
            self.dense.build(input_shape)

        def call(self, inputs):
            return self.dense(inputs)

        def get_config(self):
            return {**super().get_config(), "units": self.units}

    @keras.saving.register_keras_serializable("zoo")
    class Stepped(keras.Sequential):  # overrides train_step, as in the Keras guide
        def train_step(self, data):
            logs = super().train_step(data)
            return {**logs, "stepped": keras.ops.convert_to_tensor(1.0)}

    @keras.saving.register_keras_serializable("zoo")
    def smooth_ce(y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred) * 0.9

    class Hits(keras.metrics.Metric):  # unregistered: passed as custom_objects
        def __init__(self, name="hits", **kwargs):
            super().__init__(name=name, **kwargs)
            self.total = self.add_variable((), initializer="zeros", name="total")

        def update_state(self, y_true, y_pred, sample_weight=None):
            predicted = keras.ops.cast(keras.ops.argmax(y_pred, -1), "int32")
            hit = predicted == keras.ops.cast(keras.ops.ravel(y_true), "int32")
            self.total.assign_add(keras.ops.sum(keras.ops.cast(hit, "float32")))

        def result(self):
            return self.total

    @keras.saving.register_keras_serializable("zoo")
    class Halving(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return 2e-3 * 0.5 ** (keras.ops.cast(step, "float32") / 1000.0)

        def get_config(self):
            return {}

    norm = layers.Normalization()
    norm.adapt(x)
    model = Stepped(
        [
            norm,
            layers.Lambda(lambda t: t * 2.0),
            Block(32),
            layers.BatchNormalization(momentum=0.9),  # its statistics settle within 2 epochs
            layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(Halving()), smooth_ce, metrics=["accuracy", Hits()])
    return model, {"Hits": Hits}


def _unregister(prefix: str) -> dict:
    """Takes the registered objects named `prefix>...` out of Keras' registry."""
    registry_ = keras.saving.get_custom_objects()
    names = [name for name in registry_ if name.startswith(prefix)]
    return {name: registry_.pop(name) for name in names}


@pytest.mark.slow
def test_unbuilt_model_with_custom_objects_trains_predicts_and_persists(spark, digits, tmp_path):
    from keras.src.saving.serialization_lib import SafeModeScope
    from pyspark.ml import PipelineModel

    from distkeras.ml import KerasModel

    (x, y), (x_test, y_test) = digits
    model, custom = custom_model(x)
    adapted = [w.copy() for w in model.layers[0].get_weights()]
    try:
        trainer = make_trainer(
            registry.DEFAULT, model, num_workers=2, seed=0, custom_objects=custom
        )
        history = trainer.fit(x, y, epochs=2, batch_size=32, verbose=0)
        assert model.built and {"loss", "accuracy", "hits"} <= set(history.history)
        for got, want in zip(model.layers[0].get_weights(), adapted):
            np.testing.assert_array_equal(got, want)  # adapted state: reached, not summed
        # Unnormalized training (the adapted state lost on the workers) stays near 0.6.
        assert accuracy(model, x_test, y_test) > 0.85
        # The moving statistics came back from the workers: near the population mean of
        # the layer's inputs, where the initial zeros (a lost update) are far from it.
        error, error_at_zero = moving_mean_error(model, x)
        assert error < 0.25 and error_at_zero > 0.5, (error, error_at_zero)

        test = numpy_to_frame(spark, {"features": x_test, "label": y_test})
        scored = KerasModel(model=model).transform(test).select("prediction").toPandas()
        expected = np.argmax(model.predict(x_test, verbose=0), -1)
        np.testing.assert_array_equal(scored["prediction"].to_numpy(), expected)

        path = str(tmp_path / "pipeline")
        PipelineModel([KerasModel(model=model)]).save(path)
    finally:
        registered = _unregister("zoo>")
    with pytest.raises(TypeError, match="zoo>Stepped"):
        PipelineModel.load(path)
    with keras.saving.custom_object_scope({**registered, **custom}):
        with pytest.raises(ValueError, match="Lambda"):  # safe_mode on, as load_model
            PipelineModel.load(path)
        with SafeModeScope(False):
            loaded = PipelineModel.load(path)
    # Loaded on the driver (transform ran on the executors above): the same predictions.
    again = loaded.stages[0].getModel().predict(x_test, verbose=0)
    np.testing.assert_array_equal(np.argmax(again, -1), expected)


def moving_mean_error(model, x) -> tuple[float, float]:
    """How far the BatchNormalization's moving mean is from the mean of its inputs over `x`
    (the population statistic it estimates), in standard deviations; and how far zeros are.
    """
    index = next(
        i for i, layer in enumerate(model.layers) if isinstance(layer, layers.BatchNormalization)
    )
    upstream = keras.Sequential([keras.Input((64,)), *model.layers[:index]])
    inputs = upstream.predict(x, verbose=0)
    mean, spread = inputs.mean(0), np.mean(inputs.std(0))
    moving = model.layers[index].moving_mean.numpy()
    return float(np.mean(np.abs(moving - mean)) / spread), float(np.mean(np.abs(mean)) / spread)


@pytest.mark.slow
def test_subclassed_model_is_built_from_a_dataframe_by_the_estimator(spark, digits):
    from distkeras.ml import KerasEstimator

    (x, y), (x_test, y_test) = digits

    class Classifier(keras.Model):  # subclassed, never called before the trainer
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.hidden = layers.Dense(32, activation="relu")
            self.out = layers.Dense(10, activation="softmax")

        def call(self, inputs):
            return self.out(self.hidden(inputs))

    subclassed = Classifier()
    subclassed.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    train = numpy_to_frame(spark, {"features": x, "label": y})
    estimator = KerasEstimator(model=subclassed, epochs=2, numWorkers=2, trainer="DOWNPOUR")
    fitted = estimator.fit(train).getModel()  # built from the DataFrame's first rows
    assert fitted.built and accuracy(fitted, x_test, y_test) > 0.5  # chance: 0.1
