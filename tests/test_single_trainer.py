"""SingleTrainer end to end on MNIST: the Keras-style API, callbacks, validation, DataFrames."""

import keras
import numpy as np
import pytest

from distkeras.spark.facts import is_connect
from distkeras.spark.job import SparkJob
from distkeras.trainers import SingleTrainer

from .conftest import accuracy, mlp


@pytest.mark.slow
def test_single_trainer_reaches_093_on_mnist(mnist_frames, mnist):
    train_df, _ = mnist_frames
    (_, _), (x_test, y_test) = mnist
    model = mlp()
    trainer = SingleTrainer(model, batch_size=32, num_epoch=3, seed=0)
    trained = trainer.train(train_df, shuffle=True, verbose=0)
    assert trained is model and trained.compiled
    assert accuracy(trained, x_test, y_test) >= 0.93
    assert trainer.history.history["loss"][-1] < trainer.history.history["loss"][0]
    assert len(trainer.history.history["accuracy"]) == 3
    assert trainer.get_training_time() > 0
    assert trainer.parameter_server_stats["num_updates"] == 3  # one commit per epoch


class Recorder(keras.callbacks.Callback):
    """Records the hooks Keras callbacks receive."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def on_train_begin(self, logs=None):
        self.calls.append(("train_begin", None))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch_end", epoch, dict(logs)))

    def on_train_end(self, logs=None):
        self.calls.append(("train_end", None))


def test_fit_numpy_like_keras(session, mnist, tmp_path, monkeypatch):
    """fit(x, y) trains on the active session: the classic one, then Spark Connect."""
    (x, y), (x_test, y_test) = mnist
    x, y = x[:1500], y[:1500]
    sessions = []  # is_connect of the session each of the run's Spark jobs started on
    run = SparkJob.run
    monkeypatch.setattr(
        SparkJob, "run", lambda job: sessions.append(is_connect(job.spark)) or run(job)
    )
    recorder = Recorder()
    csv = tmp_path / "log.csv"
    trainer = SingleTrainer(mlp(hidden=(32,)))
    history = trainer.fit(
        x,
        y,
        epochs=2,
        batch_size=64,
        validation_data=(x_test[:500], y_test[:500]),
        callbacks=[recorder, keras.callbacks.CSVLogger(str(csv))],
        verbose=0,
    )
    assert isinstance(history, keras.callbacks.History)
    assert history.epoch == [0, 1]
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert [c[0] for c in recorder.calls] == ["train_begin", "epoch_end", "epoch_end", "train_end"]
    assert recorder.calls[2][2]["val_accuracy"] == history.history["val_accuracy"][1]
    assert len(csv.read_text().strip().splitlines()) == 3  # header + 2 epochs
    # The validation logged is that of the returned weights at the last epoch.
    final = trainer.model.evaluate(x_test[:500], y_test[:500], verbose=0, return_dict=True)
    assert final["accuracy"] == pytest.approx(history.history["val_accuracy"][-1])
    assert sessions and set(sessions) == {is_connect(session)}, sessions


def test_fit_dataframe_with_dataframe_validation(mnist_frames):
    train_df, test_df = mnist_frames
    trainer = SingleTrainer(mlp(hidden=(16,)), batch_size=128)
    validation = test_df.limit(200).cache()
    history = trainer.fit(train_df.limit(1000), epochs=1, validation_data=validation)
    # The validation logged is the returned model's on those 200 rows.
    rows = validation.collect()
    x_val = np.array([row.features for row in rows], np.float32)
    y_val = np.array([row.label for row in rows])
    final = trainer.model.evaluate(x_val, y_val, verbose=0, return_dict=True)
    assert history.history["val_accuracy"][0] == pytest.approx(final["accuracy"])
    assert history.history["val_loss"][0] == pytest.approx(final["loss"], rel=1e-4)
    validation.unpersist()


def test_uncompiled_model_with_loss_and_optimizer(mnist):
    (x, y), _ = mnist
    model = mlp(hidden=(8,), compile=False)
    trainer = SingleTrainer(
        model, worker_optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["acc"]
    )
    history = trainer.fit(x[:300], y[:300], epochs=1, verbose=0)
    assert model.compiled
    assert set(history.history) == {"loss", "acc"}


def test_cnn_gets_reshaped_features(mnist):
    (x, y), _ = mnist
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    history = SingleTrainer(model).fit(x[:256], y[:256], epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
