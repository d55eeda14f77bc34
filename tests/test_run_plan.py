"""The run plan without Spark: what a trainer decides before any server or job starts."""

import dataclasses
import json

import numpy as np
import pytest

from distkeras import inputs
from distkeras.inputs.options import FitOptions
from distkeras.trainers import DOWNPOUR, EAMSGD
from distkeras.trainers.checkpoint import Checkpointer
from distkeras.trainers.plan import FRAME, SHARDS, RunPlan

from .conftest import mlp


def plan_of(trainer, x, y, **fit):
    options = FitOptions(epochs=fit.pop("epochs", 3), **fit)
    fit_inputs = inputs.prepare(
        trainer.model,
        x,
        y,
        options=options,
        spark=lambda: None,  # numeric rows: no session
    )
    return trainer._plan(fit_inputs, options, threads=2, class_weight=None)


@pytest.fixture
def rows():
    rng = np.random.default_rng(0)
    return rng.normal(size=(64, 4)).astype("float32"), rng.integers(0, 3, 64)


def test_a_plan_holds_the_trainers_and_fits_decisions(rows):
    x, y = rows
    trainer = DOWNPOUR(mlp(input_dim=4, hidden=(5,), classes=3), num_workers=2, batch_size=8)
    plan = plan_of(trainer, x, y, epochs=4, initial_epoch=1, steps_per_epoch=6)
    assert isinstance(plan, RunPlan)
    assert (plan.num_workers, plan.batch_size, plan.epochs, plan.first_epoch) == (2, 8, 4, 1)
    assert plan.data_path == SHARDS  # numeric rows held on the driver travel directly
    assert plan.worker_steps == 3  # 6 batches per epoch over 2 workers
    assert plan.algorithm.window == 5 and plan.threads == 2
    assert plan.input_shapes == (None,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.epochs = 9  # a value: the run cannot change it


def test_fit_arguments_override_the_trainers_and_an_algorithm_brings_its_optimizer(rows):
    x, y = rows
    trainer = EAMSGD(mlp(input_dim=4, hidden=(5,), classes=3), num_workers=2, batch_size=8)
    plan = plan_of(trainer, x, y, batch_size=16)
    assert plan.batch_size == 16
    optimizer = json.loads(plan.spec.compile_config)["optimizer"]
    assert optimizer["class_name"] == "SGD" and optimizer["config"]["nesterov"] is True


def test_a_resumed_run_starts_after_the_checkpoints_epoch(rows, tmp_path):
    x, y = rows
    model = mlp(input_dim=4, hidden=(5,), classes=3)
    Checkpointer(str(tmp_path), 600.0).write(model, model.get_weights(), clock=7, epoch=2)
    trainer = DOWNPOUR(model, num_workers=2, resume_from=str(tmp_path))
    assert plan_of(trainer, x, y, epochs=5).first_epoch == 2


def test_a_data_path_is_one_of_two():
    with pytest.raises(ValueError, match="data path"):
        RunPlan(None, None, 2, 32, 1, 0, data_path="carrier pigeon")
    assert FRAME != SHARDS
