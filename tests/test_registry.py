"""The algorithm registry: one table read by the trainers, the Spark ML stage, the CLI, docs."""

from pathlib import Path

import keras
import numpy as np
import pytest

from distkeras import cli, trainers
from distkeras.algorithms import registry
from distkeras.ml import registry as ml_registry

from .conftest import mlp


@pytest.mark.parametrize("name", registry.names())
def test_every_name_has_its_trainer_with_the_registry_window(name):
    row = registry.spec(name)
    cls = trainers.trainer_class(name)
    assert cls.__name__ == row.trainer
    assert getattr(trainers, row.trainer) is cls
    trainer = trainers.make_trainer(name, mlp(hidden=(8,)), num_workers=2)
    assert trainer.window() == row.window
    algorithm = trainer.algorithm()
    assert isinstance(algorithm, row.algorithm)
    for parameter, default in row.defaults().items():
        assert getattr(algorithm, parameter) == default


def test_parameters_are_checked_and_passed_to_the_algorithm():
    algorithm = trainers.EAMSGD(mlp(hidden=(8,)), rho=2.0, momentum=0.5).algorithm()
    assert (algorithm.rho, algorithm.learning_rate, algorithm.momentum) == (2.0, 0.1, 0.5)
    with pytest.raises(ValueError, match="momentum"):
        trainers.EAMSGD(mlp(hidden=(8,)), momentum=1.5)
    with pytest.raises(TypeError, match="rho"):
        trainers.DOWNPOUR(mlp(hidden=(8,)), rho=2.0)
    with pytest.raises(TypeError, match="named trainer"):
        trainers.Trainer(mlp(hidden=(8,)))


def test_worker_optimizer_wins_over_eamsgds_own(spark):
    """A user's worker optimizer is the one the workers train with: at a learning rate of 0
    the center stays bit-for-bit where it started; EAMSGD's own (the control) moves it."""
    rng = np.random.default_rng(0)
    x, y = rng.random((256, 784), dtype=np.float32), rng.integers(0, 10, 256)

    def center_moved(**arguments) -> bool:
        model = mlp(hidden=(8,))
        before = model.get_weights()
        trainers.EAMSGD(model, num_workers=2, **arguments).fit(x, y, epochs=1, verbose=0)
        return not all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))

    assert not center_moved(worker_optimizer=keras.optimizers.SGD(0.0))
    assert center_moved()


def test_a_new_registry_row_is_a_trainer_for_the_stage_and_the_cli(monkeypatch):
    rows = dict(registry.REGISTRY)
    rows["mean"] = registry.AlgorithmSpec("MeanTrainer", rows["averaging"].algorithm, 4, "x")
    monkeypatch.setattr(registry, "REGISTRY", rows)
    cls = trainers.trainer_class("mean")
    assert cls.__name__ == "MeanTrainer" and cls(mlp(hidden=(8,))).window() == 4
    assert "mean" in ml_registry.trainer_names()
    assert (
        "mean"
        in cli.build_parser()
        .parse_args(["train", "--data", "d", "--model", "m", "--output", "o", "--trainer", "mean"])
        .trainer
    )


def test_the_cli_and_the_stage_default_to_the_registrys_default():
    from distkeras.ml import KerasEstimator

    args = cli.build_parser().parse_args(["train", "--data", "d", "--model", "m", "--output", "o"])
    assert args.trainer == registry.DEFAULT
    assert KerasEstimator().getTrainer() == registry.DEFAULT


def test_the_docs_table_is_the_registrys():
    page = (Path(__file__).parent.parent / "docs" / "trainers.md").read_text()
    assert registry.markdown_table() in page
