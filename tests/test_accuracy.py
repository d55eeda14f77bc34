"""The default trainer is a drop-in for `model.fit`: the same accuracy at the user's settings.

The model's own compiled optimizer (Adam(1e-3)), the same epochs and batch size, the same
initial weights; only `model.fit` is swapped for the default trainer's `fit` (2 workers).
One test image is 0.22 points, and asynchronous runs from the same start differ by a point
or more, so each test compares the means of five pairs (each pair from the same weights).
Accuracy only: timing belongs to bench/. These run in `make test-accuracy` (marker
`accuracy`), about two minutes.
"""

import importlib.util
from pathlib import Path

import keras
import numpy as np
import pytest

from distkeras.algorithms import registry
from distkeras.datasets import load_digits
from distkeras.trainers import make_trainer

from .conftest import accuracy, mlp

EPOCHS = 30
SEEDS = (0, 1, 2, 3, 4)
# Where a family's paired runs are measured to spread narrowly enough for a 1-point bar: at
# 16 epochs (6 pairs each, 2 workers) the GRU's differences were +0.4 to +2.0 points (mean
# +1.22, sd 0.6) and the BatchNorm convnet's -0.4 to +1.3 (mean +0.15, sd 0.65), so a mean of
# five sits 3.9 (convnet) and 7 (GRU) standard deviations above the bar. At 8 epochs, far
# from converged, single GRU pairs ranged from -10.7 to +6.2 (bench/model_zoo.py's figures).
ZOO_EPOCHS = 16


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def train_pair(digits, seed: int) -> tuple[float, float]:
    """`model.fit` and the default trainer from the same initial weights: test accuracies."""
    (x, y), (x_test, y_test) = digits
    keras.utils.set_random_seed(seed)
    reference = mlp(input_dim=64, hidden=(64,), optimizer=keras.optimizers.Adam(1e-3))
    start = [w.copy() for w in reference.get_weights()]
    reference.fit(x, y, batch_size=32, epochs=EPOCHS, verbose=0)

    model = mlp(input_dim=64, hidden=(64,), optimizer=keras.optimizers.Adam(1e-3))
    model.set_weights(start)
    trainer = make_trainer(registry.DEFAULT, model, num_workers=2, seed=seed)
    trainer.fit(x, y, epochs=EPOCHS, batch_size=32, verbose=0)
    assert np.isfinite(trainer.history.history["loss"][-1])
    return accuracy(reference, x_test, y_test), accuracy(model, x_test, y_test)


def assert_within_one_point(pairs: list[tuple[float, float]]) -> None:
    expected = float(np.mean([fit for fit, _ in pairs]))
    got = float(np.mean([trained for _, trained in pairs]))
    print(f"model.fit {expected:.4f}, {registry.DEFAULT} {got:.4f}: {pairs}")
    assert got >= expected - 0.01, f"{registry.DEFAULT}: {pairs} (model.fit, trainer)"


@pytest.mark.accuracy
@pytest.mark.timeout(600)
def test_default_trainer_within_one_point_of_model_fit(spark, digits):
    # 30 epochs, near convergence: the default's pairs ranged from -2.0 to +0.89 points over
    # ten in two runs (mean +0.09, sd 0.85): a mean of five sits 2.9 sd above the bar.
    assert_within_one_point([train_pair(digits, seed) for seed in SEEDS])


def model_zoo():
    """bench/model_zoo.py: the families and the paired runs this test shares with it."""
    path = Path(__file__).resolve().parents[1] / "bench" / "model_zoo.py"
    spec = importlib.util.spec_from_file_location("model_zoo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.accuracy
@pytest.mark.timeout(600)
@pytest.mark.parametrize("family", ["bn_convnet", "gru"])
def test_default_trainer_within_one_point_of_model_fit_per_family(spark, digits, family):
    zoo = model_zoo()
    runs = [zoo.pair(family, seed, digits, ZOO_EPOCHS) for seed in SEEDS]
    assert_within_one_point([(run["fit"], run["trainer"]) for run in runs])
