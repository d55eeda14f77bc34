"""Optuna studies whose trials are distributed fits: pruning from per-epoch validation
metrics, each trial an MLflow child run of the study's run, and nothing left behind."""

import os
import threading

import keras
import mlflow
import optuna
import pytest

from distkeras import trainers
from distkeras.integrations.optuna import PruningCallback

from .conftest import mlp, two_classes


def open_sockets() -> int:
    """Sockets this process holds open (Linux: its descriptors that are sockets)."""
    descriptors = os.listdir("/proc/self/fd")
    links = []
    for fd in descriptors:
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the listing's own descriptor, closed by now
            pass
    return sum(link.startswith("socket:") for link in links)


def thread_names() -> list[str]:
    return sorted(thread.name for thread in threading.enumerate())


@pytest.mark.slow
def test_a_study_prunes_on_validation_logs_child_runs_and_leaves_no_thread_or_socket(
    spark, mlflow_store
):
    x, y = two_classes()
    mlflow_store("study")

    def objective(trial):
        keras.utils.set_random_seed(0)  # every trial starts from the same weights
        rate = trial.suggest_float("learning_rate", 1e-5, 0.1, log=True)
        model = mlp(8, (8,), 2, optimizer=keras.optimizers.Adam(rate))
        trainer = trainers.DOWNPOUR(model, num_workers=2, seed=0)
        with mlflow.start_run(nested=True, run_name=f"trial {trial.number}"):
            history = trainer.fit(
                x[:200],
                y[:200],
                epochs=2,
                verbose=0,
                validation_data=(x[200:], y[200:]),
                callbacks=[PruningCallback(trial, "val_loss")],
            )
        return history.history["val_loss"][-1]

    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    study = optuna.create_study(pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({"learning_rate": 0.05})
    with mlflow.start_run(run_name="study") as parent:
        study.optimize(objective, n_trials=1)  # Spark's and py4j's lasting threads start here
        threads, sockets = thread_names(), open_sockets()
        study.enqueue_trial({"learning_rate": 1e-5})  # hardly moves: pruned after epoch 0
        study.optimize(objective, n_trials=2)
        assert thread_names() == threads and open_sockets() == sockets

    states = [trial.state for trial in study.trials]
    assert states[:2] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]
    assert study.trials[1].intermediate_values.keys() == {0}  # pruned after its first epoch
    children = mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", output_format="list"
    )
    assert len(children) == 3
    statuses = sorted(run.info.status for run in children)
    assert statuses.count("FAILED") == states.count(optuna.trial.TrialState.PRUNED)
    assert all("val_loss" in run.data.metrics for run in children)


def test_pruning_callback_checks_its_monitor():
    with pytest.raises(ValueError, match="monitor"):
        PruningCallback(optuna.create_study().ask(), monitor="")
