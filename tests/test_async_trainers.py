"""Asynchronous trainers end to end on MNIST (2 workers on local[2]), plus their failure paths."""

import threading

import keras
import numpy as np
import pytest

from distkeras import trainers
from distkeras.data import numpy_to_frame
from distkeras.errors import WorkerError

from .conftest import accuracy, mlp

# Each trainer with the worker optimizer it is tuned for. ADAG commits Δ/λ, so its local
# steps can take a larger learning rate than plain Adam's default.
ASYNC = {
    "ADAG": (trainers.ADAG, lambda: keras.optimizers.Adam(0.005), 0.95),
    "DOWNPOUR": (trainers.DOWNPOUR, lambda: "adam", 0.92),
    "DynSGD": (trainers.DynSGD, lambda: "adam", 0.92),
    "AEASGD": (trainers.AEASGD, lambda: "adam", 0.92),
    "EAMSGD": (trainers.EAMSGD, lambda: None, 0.92),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ASYNC))
def test_trainer_reaches_target_accuracy(name, mnist_frames, mnist):
    cls, optimizer, target = ASYNC[name]
    train_df, _ = mnist_frames
    (_, _), (x_test, y_test) = mnist
    model = mlp()
    trainer = cls(model, worker_optimizer=optimizer(), num_epoch=5, num_workers=2, seed=1)
    trained = trainer.train(train_df, shuffle=True, verbose=0)
    assert accuracy(trained, x_test, y_test) >= target
    stats = trainer.parameter_server_stats
    assert stats["num_updates"] == sum(s["commits"] for s in trainer.worker_summaries)
    assert stats["max_staleness"] >= stats["mean_staleness"] >= 0
    assert stats["bytes_received"] > 0
    assert sorted(s["worker"] for s in trainer.worker_summaries) == [0, 1]
    assert sum(s["rows"] for s in trainer.worker_summaries) == 8000


@pytest.mark.parametrize("name", sorted(ASYNC))
def test_trainer_fit_with_validation(name, mnist):
    cls, optimizer, _ = ASYNC[name]
    (x, y), (x_test, y_test) = mnist
    trainer = cls(mlp(hidden=(32,)), worker_optimizer=optimizer(), num_workers=2)
    history = trainer.fit(
        x[:2000], y[:2000], epochs=2, validation_data=(x_test[:400], y_test[:400]), verbose=0
    )
    assert history.epoch == [0, 1]
    assert history.history["val_accuracy"][-1] > 0.5
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_multi_input_multi_output_model_through_adag(spark, mnist):
    (x, y), _ = mnist
    x, y = x[:2000], y[:2000]
    left = keras.Input((392,), name="left")
    right = keras.Input((392,), name="right")
    hidden = keras.layers.Dense(32, activation="relu")(keras.layers.Concatenate()([left, right]))
    digit = keras.layers.Dense(10, activation="softmax", name="digit")(hidden)
    odd = keras.layers.Dense(1, activation="sigmoid", name="odd")(hidden)
    model = keras.Model([left, right], [digit, odd])
    model.compile("adam", ["sparse_categorical_crossentropy", "binary_crossentropy"])
    df = numpy_to_frame(
        spark,
        {"left": x[:, :392], "right": x[:, 392:], "digit": y, "odd": (y % 2).astype("float32")},
    )
    trainer = trainers.ADAG(
        model, features_col=["left", "right"], label_col=["digit", "odd"], num_workers=2
    )
    history = trainer.fit(df, epochs=2, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    digits, odds = model.predict([x[:, :392], x[:, 392:]], verbose=0)
    assert digits.shape == (2000, 10) and odds.shape == (2000, 1)


def test_early_stopping_stops_the_workers(mnist):
    (x, y), _ = mnist
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=10.0)
    trainer = trainers.DOWNPOUR(mlp(hidden=(16,)), num_workers=2)
    history = trainer.fit(x[:2000], y[:2000], epochs=30, callbacks=[stop], verbose=0)
    assert len(history.epoch) == 2
    assert sum(s["samples"] for s in trainer.worker_summaries) < 30 * 2000


class Exploding(keras.layers.Layer):
    """A layer the executors cannot rebuild: it is neither registered nor in custom_objects."""

    def call(self, inputs):
        return inputs


def test_failing_worker_surfaces_its_error_and_leaves_no_server_thread(mnist):
    (x, y), _ = mnist
    inputs = keras.Input((784,))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(Exploding()(inputs)))
    model.compile("adam", "sparse_categorical_crossentropy")
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(WorkerError, match=r"worker [01] failed: TypeError: .*deserialized"):
        trainers.ADAG(model, num_workers=2).fit(x[:200], y[:200], epochs=1, verbose=0)
    leftover = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert not [t for t in leftover if "distkeras" in t.name.lower() or "server" in t.name.lower()]
    np.testing.assert_equal(model.get_weights()[0].shape, (784, 10))


def test_validation_sees_each_epochs_center(mnist):
    """Workers outrun the driver here; each epoch's val_* must still be its own center's."""
    (x, y), (x_test, y_test) = mnist
    trainer = trainers.DOWNPOUR(mlp(hidden=(16,)), num_workers=2)
    history = trainer.fit(
        x[:1000], y[:1000], epochs=6, validation_data=(x_test[:300], y_test[:300]), verbose=0
    )
    assert len(set(history.history["val_loss"])) == 6


def test_all_interfaces_bind_trains_encrypted(mnist, caplog):
    """ps_host="0.0.0.0": sealed sessions by default, which the workers require."""
    (x, y), _ = mnist
    trainer = trainers.DOWNPOUR(mlp(hidden=(16,)), num_workers=2, ps_host="0.0.0.0")
    with caplog.at_level("WARNING", logger="distkeras"):
        history = trainer.fit(x[:1000], y[:1000], epochs=1, verbose=0)
    assert history.epoch == [0]
    assert "all interfaces" in caplog.text
    assert trainer.parameter_server_stats["num_updates"] > 0
