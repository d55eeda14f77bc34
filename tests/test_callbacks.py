"""Keras callbacks on the trainers' fit: every hook fires, Keras' progress bar, a quiet console."""

import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from distkeras import trainers
from distkeras.quiet import CHATTER
from distkeras.trainers import run as trainers_run

from .conftest import mlp
from .jobs.faults import plan_with
from .jobs.pace import EpochMarkers, driver_paced


class EventLog(keras.callbacks.Callback):
    """Records every callback event, with its index, in order."""

    def __init__(self):
        super().__init__()
        self.events = []

    def __getattribute__(self, name):
        if name.startswith("on_"):
            return lambda *args, **kwargs: self.events.append((name, *args[:1]))
        return super().__getattribute__(name)

    def indices(self, event):
        return [args[0] for name, *args in self.events if name == event]


def test_fit_fires_every_hook_and_draws_keras_progress_bar_in_steps(spark, mnist, capsys):
    (x, y), (x_val, y_val) = mnist
    log = EventLog()
    trainer = trainers.ADAG(mlp(hidden=(16,)), num_workers=2, batch_size=50)
    trainer.fit(
        x[:1000], y[:1000], epochs=2, validation_data=(x_val[:100], y_val[:100]), callbacks=[log]
    )
    out = capsys.readouterr().out
    print(out)
    steps = log.params["steps"]
    assert steps == 20  # 1000 rows in batches of 50, whatever the split over two workers
    names = [name for name, *_ in log.events]
    assert names[:2] == ["on_train_begin", "on_epoch_begin"] and names[-1] == "on_train_end"
    assert log.indices("on_epoch_begin") == [0, 1] and log.indices("on_epoch_end") == [0, 1]
    begins = [i for i, name in enumerate(names) if name == "on_epoch_begin"]
    for begin in begins:  # each epoch's batch hooks: indices growing, up to the last step
        end = names.index("on_epoch_end", begin)
        ends = [args[0] for name, *args in log.events[begin:end] if name == "on_train_batch_end"]
        assert ends and ends == sorted(set(ends)) and ends[-1] == steps - 1
    assert len(log.indices("on_train_batch_begin")) == len(log.indices("on_train_batch_end"))
    assert names.count("on_test_begin") == names.count("on_test_end") == 2
    test_batches = names.count("on_test_batch_end")  # each epoch's validation, batch by batch
    assert test_batches > 0 and test_batches == names.count("on_test_batch_begin")
    assert re.search(r"Epoch 2/2\n.*20/20", out)
    assert "step" in out and "val_accuracy" in out
    assert "updates" not in out and not re.search(r"\b\d+\.0000\b", out)


def test_demo_console_shows_a_progress_bar_in_steps_and_no_tensorflow_startup_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "PYSPARK_"))}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    command = [sys.executable, "-m", "distkeras.cli", "demo", "--epochs", "2"]
    result = subprocess.run(
        [*command, "--workers", "2", "--master", "local[2]"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    console = result.stdout + result.stderr
    assert result.returncode == 0, console
    bar = re.sub(r"Epoch \d+/\d+", "", result.stdout)
    targets = {int(total) for _, total in re.findall(r"(\d+)/(\d+)", bar)}
    assert len(targets) == 1 and targets.pop() < 200  # steps of 16 rows, not 1437 rows
    assert "Epoch 2/2" in result.stdout and "Held-out accuracy" in result.stdout
    assert not re.search(r"\b\d+\.0000\b", result.stdout)  # no integer shown as a float
    assert not CHATTER.search(console), console


class Centers(keras.callbacks.Callback):
    """The center at each epoch's end (the model holds it when on_epoch_end fires)."""

    def __init__(self):
        super().__init__()
        self.centers = []

    def on_epoch_end(self, epoch, logs=None):
        self.centers.append(self.model.get_weights())


def assert_same(left, right):
    for a, b in zip(left, right, strict=True):
        np.testing.assert_array_equal(a, b)


def paced(monkeypatch, folder, windows_per_epoch):
    """Workers wait at each epoch's first exchange until the driver began that epoch."""
    monkeypatch.setattr(
        trainers_run, "WorkerPlan", plan_with(driver_paced(folder, windows_per_epoch))
    )
    return EpochMarkers(folder)


@pytest.mark.parametrize("cls", [trainers.ADAG, trainers.EASGD], ids=["async", "sync"])
def test_a_zero_rate_set_for_epoch_zero_leaves_the_weights_exactly(cls, mnist):
    (x, y), _ = mnist
    model = mlp(hidden=(8,))
    before = model.get_weights()
    trainer = cls(model, num_workers=2, batch_size=50)
    zero = keras.callbacks.LearningRateScheduler(lambda epoch, rate: 0.0)
    trainer.fit(x[:400], y[:400], epochs=2, callbacks=[zero], verbose=0)
    assert_same(before, model.get_weights())
    assert [s["learning_rates"] for s in trainer.worker_summaries] == [[0.0, 0.0]] * 2


def test_a_rate_dropped_to_zero_part_way_stills_the_center_after_one_window(
    mnist, tmp_path, monkeypatch
):
    (x, y), _ = mnist
    markers = paced(monkeypatch, tmp_path, windows_per_epoch=5)  # 450 rows in windows of 100
    trainer = trainers.ADAG(mlp(hidden=(8,)), num_workers=2, batch_size=50, communication_window=2)
    drop = keras.callbacks.LearningRateScheduler(lambda epoch, rate: rate if epoch < 1 else 0.0)
    log = Centers()
    trainer.fit(x[:900], y[:900], epochs=4, callbacks=[drop, log, markers], verbose=0)
    # The rate is set at epoch 1's start; each worker takes it at its next exchange, so the
    # center moves during epoch 1 (the documented lag) and never after.
    centers = log.centers
    assert any(np.any(a != b) for a, b in zip(centers[0], centers[1]))
    for later in (centers[2], centers[3], trainer.model.get_weights()):
        assert_same(centers[1], later)
    for summary in trainer.worker_summaries:
        assert summary["learning_rates"][0] == pytest.approx(0.001)
        assert summary["learning_rates"][1:] == [0.0, 0.0, 0.0]


def test_downpour_workers_take_adam_at_twice_the_rate_and_follow_a_callback_scaled(
    mnist, tmp_path, monkeypatch
):
    """The default's workers train the model's Adam at 2 x its rate on 2 workers, and a rate
    a callback sets reaches them scaled alike; the returned model keeps the model's rate."""
    (x, y), _ = mnist
    markers = paced(monkeypatch, tmp_path, windows_per_epoch=5)
    model = mlp(hidden=(8,), optimizer=keras.optimizers.Adam(0.002))
    trainer = trainers.DOWNPOUR(model, num_workers=2, batch_size=50, communication_window=2)
    halve = keras.callbacks.LearningRateScheduler(lambda epoch, rate: rate if epoch < 1 else 0.001)
    trainer.fit(x[:900], y[:900], epochs=3, callbacks=[halve, markers], verbose=0)
    for summary in trainer.worker_summaries:
        assert summary["learning_rates"] == pytest.approx([0.004, 0.002, 0.002])
    assert float(model.optimizer.learning_rate) == pytest.approx(0.001)  # the driver's own


def test_the_workers_rate_is_scaled_only_for_the_models_own_adaptive_optimizer():
    from distkeras.algorithms.downpour import Downpour
    from distkeras.algorithms.dynsgd import DynSGD
    from distkeras.trainers.learning_rate import scaled_optimizer

    scales = [Downpour(5).adaptive_rate_scale(n) for n in (1, 2, 4)]
    assert scales == pytest.approx([1.0, 2.0, np.sqrt(8.0)])
    assert DynSGD(5).adaptive_rate_scale(4) == 1.0
    scale = 2.0
    adam = keras.optimizers.AdamW(0.003, weight_decay=0.01)
    scaled = scaled_optimizer(adam, scale)
    assert type(scaled) is keras.optimizers.AdamW and scaled is not adam
    assert scaled.get_config()["learning_rate"] == pytest.approx(0.006)
    assert scaled.get_config()["weight_decay"] == 0.01
    assert float(adam.learning_rate) == pytest.approx(0.003)  # the model's own, untouched
    schedule = keras.optimizers.schedules.ExponentialDecay(0.01, 100, 0.9)
    for unscaled in (keras.optimizers.SGD(0.01), keras.optimizers.Adam(schedule)):
        assert scaled_optimizer(unscaled, scale) is None
    assert scaled_optimizer(adam, 1.0) is None


def test_keras_standard_callbacks_on_one_fit(mnist, tmp_path, monkeypatch):
    (x, y), (x_val, y_val) = mnist
    markers = paced(monkeypatch, tmp_path, windows_per_epoch=5)
    model = mlp(hidden=(8,))
    trainer = trainers.ADAG(model, num_workers=2, batch_size=50, communication_window=2)
    log = Centers()
    callbacks = [
        keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=100),
        # The best epoch by a rising val_loss is an early one: restoring it is visible.
        keras.callbacks.EarlyStopping(
            monitor="val_loss", mode="max", patience=2, restore_best_weights=True
        ),
        keras.callbacks.ModelCheckpoint(
            str(tmp_path / "best.keras"), monitor="val_loss", save_best_only=True
        ),
        keras.callbacks.TensorBoard(str(tmp_path / "tensorboard")),
        keras.callbacks.CSVLogger(str(tmp_path / "log.csv")),
        keras.callbacks.TerminateOnNaN(),
        log,
        markers,
    ]
    history = trainer.fit(
        x[:900],
        y[:900],
        epochs=4,
        validation_data=(x_val[:200], y_val[:200]),
        callbacks=callbacks,
        verbose=0,
    )
    val_loss = history.history["val_loss"]
    epochs = len(val_loss)
    assert 3 <= epochs <= 4 and len(log.centers) == epochs
    # EarlyStopping restored the center of the best epoch.
    assert_same(log.centers[int(np.argmax(val_loss))], model.get_weights())
    # ModelCheckpoint saved the center of the lowest val_loss.
    saved = keras.saving.load_model(tmp_path / "best.keras")
    assert_same(log.centers[int(np.argmin(val_loss))], saved.get_weights())
    # ReduceLROnPlateau halved the rate after epoch 1 (epoch 0 always improves on infinity):
    # the workers trained with it in epoch 2.
    for summary in trainer.worker_summaries:
        assert summary["learning_rates"][:3] == pytest.approx([0.001, 0.001, 0.0005])
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,") and "val_loss" in rows[0] and len(rows) == 1 + epochs
    events = list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    assert {path.parent.name for path in events} == {"train", "validation"}


def test_terminate_on_nan_stops_the_run_and_no_nan_reaches_the_center(spark):
    rng = np.random.default_rng(0)
    x, y = rng.random((400, 4), dtype=np.float32), rng.random((400, 1), dtype=np.float32)
    y[::7] = np.nan  # a NaN loss in every worker's first batch
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    before = model.get_weights()
    trainer = trainers.DOWNPOUR(model, num_workers=2, batch_size=50)
    stop = keras.callbacks.TerminateOnNaN()
    history = trainer.fit(x, y, epochs=5, callbacks=[stop], verbose=0)
    assert history.epoch == [0] and np.isnan(history.history["loss"][0])
    assert model.stop_training
    assert_same(before, model.get_weights())  # the workers never committed their NaN weights
    assert sum(s["commits"] for s in trainer.worker_summaries) == 0


def test_backup_and_restore_is_refused_by_name(mnist, tmp_path):
    (x, y), _ = mnist
    trainer = trainers.ADAG(mlp(hidden=(8,)), num_workers=2)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path))
    with pytest.raises(ValueError, match="BackupAndRestore.*checkpoint_dir"):
        trainer.fit(x[:100], y[:100], callbacks=[backup], verbose=0)
