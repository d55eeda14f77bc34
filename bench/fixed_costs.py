"""Fixed costs of a trainer's `fit` next to `keras.Model.fit`, for bench/time_to_accuracy.py.

first_fit: the first fit of a fresh session (executors start their Python workers and
import TensorFlow); warm_overhead: later fits on a fresh model, alternating with
`model.fit` on a fresh model; large_array: one epoch on a 627 MB float32 numpy array.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
from train_bench import mlp

from distkeras.algorithms import registry
from distkeras.trainers import make_trainer

SMALL_ROWS = 512


def _seconds(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _trainer_fit(x, y, epochs=1):
    trainer = make_trainer(registry.DEFAULT, mlp(), num_workers=2, seed=0)
    return lambda: trainer.fit(x, y, epochs=epochs, batch_size=32, verbose=0)


def _keras_fit(x, y, epochs=1):
    model = mlp()
    return lambda: model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)


def first_fit(x, y) -> dict:
    """Seconds of the session's first trainer fit and of the process's first model.fit."""
    x, y = x[:SMALL_ROWS], y[:SMALL_ROWS]
    return {
        "keras_first": _seconds(_keras_fit(x, y)),
        "trainer_first": _seconds(_trainer_fit(x, y)),
    }


def warm_overhead(x, y, repeats: int = 5) -> dict:
    """Median seconds of later fits on a fresh model, trainer and model.fit alternating."""
    x, y = x[:SMALL_ROWS], y[:SMALL_ROWS]
    trainer, keras_fit = [], []
    for _ in range(repeats):
        trainer.append(_seconds(_trainer_fit(x, y)))
        keras_fit.append(_seconds(_keras_fit(x, y)))
    return {"trainer": statistics.median(trainer), "keras": statistics.median(keras_fit)}


def large_array(rows: int = 200_000) -> dict:
    """One epoch on a rows x 784 float32 array (627 MB at 200,000 rows), both ways."""
    rng = np.random.default_rng(0)
    x = rng.random((rows, 784), dtype=np.float32)
    y = rng.integers(0, 10, rows)
    return {
        "megabytes": x.nbytes / 1e6,
        "keras": _seconds(_keras_fit(x, y)),
        "trainer": _seconds(_trainer_fit(x, y)),
    }
