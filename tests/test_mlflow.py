"""MLflow tracking of distributed fits against a real SQLite tracking store: what a fit logs,
the logged model served by pyfunc, spark_udf and KerasModel, autologging's one run per fit,
and no MLflow import at all when the user never imported it."""

import os
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest

from distkeras import trainers
from distkeras.data import numpy_to_frame
from distkeras.integrations.mlflow import FIT_TAG, MlflowCallback
from distkeras.ml import KerasModel

from .conftest import mlp, two_classes


def runs_of(experiment: str) -> list:
    experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    return mlflow.search_runs([experiment_id], output_format="list")


def metric_history(run_id: str, key: str) -> tuple[list[int], list[float]]:
    history = mlflow.MlflowClient().get_metric_history(run_id, key)
    ordered = sorted(history, key=lambda metric: metric.step)
    return [m.step for m in ordered], [m.value for m in ordered]


@pytest.mark.slow
def test_fit_in_a_run_logs_its_parameters_epochs_figures_and_a_model_that_serves(
    spark, mlflow_store
):
    x, y = two_classes()
    mlflow_store("fit-in-a-run")
    trainer = trainers.ADAG(mlp(8, (8,), 2), num_workers=2, communication_window=3, seed=0)
    with mlflow.start_run() as run:
        history = trainer.fit(
            x[:200], y[:200], batch_size=16, epochs=2, validation_data=(x[200:], y[200:])
        )
    logged = mlflow.get_run(run.info.run_id)
    params = logged.data.params
    assert params["trainer"] == "ADAG" and params["algorithm"] == "ADAG"
    assert (params["num_workers"], params["communication_window"]) == ("2", "3")
    assert (params["batch_size"], params["epochs"]) == ("16", "2")
    assert params["optimizer_name"].startswith("adam")  # Keras numbers later instances
    assert float(params["optimizer_learning_rate"]) > 0
    assert logged.data.tags[FIT_TAG] == "ADAG"
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history.history)
    for key, values in history.history.items():  # one value per epoch, as History has it
        steps, logged_values = metric_history(run.info.run_id, key)
        assert steps == history.epoch == [0, 1], key
        np.testing.assert_allclose(logged_values, values, rtol=1e-6, err_msg=key)
    figures = logged.data.metrics
    assert figures["samples_per_second"] > 0 and figures["training_seconds"] > 0
    assert figures["commits"] >= 2 and figures["mean_staleness"] >= 0
    assert 0 < figures["seconds_per_epoch"] <= figures["training_seconds"]
    assert len(metric_history(run.info.run_id, "epoch_seconds")[0]) == 2

    uri = f"runs:/{run.info.run_id}/model"
    expected = trainer.model.predict(x, verbose=0)
    served = mlflow.pyfunc.load_model(uri)
    assert served.metadata.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 8)
    np.testing.assert_allclose(np.asarray(served.predict(pd.DataFrame(x))), expected, atol=1e-6)
    frame = numpy_to_frame(spark, {"features": x, "row": np.arange(len(x))})
    array_column = frame.toPandas().sort_values("row")[["features"]]
    np.testing.assert_allclose(np.asarray(served.predict(array_column)), expected, atol=1e-6)
    udf = mlflow.pyfunc.spark_udf(spark, uri, result_type="array<float>")
    rows = frame.select("row", udf("features").alias("p")).toPandas().sort_values("row")
    np.testing.assert_allclose(np.stack(rows["p"].to_numpy()), expected, atol=1e-6)
    stage = KerasModel.from_mlflow(uri, predictionCol="class")
    rows = stage.transform(frame).select("row", "output", "class").toPandas().sort_values("row")
    np.testing.assert_allclose(np.stack([v.toArray() for v in rows["output"]]), expected, atol=1e-6)
    assert (rows["class"].to_numpy() == expected.argmax(axis=1)).all()


@pytest.mark.slow
def test_autologging_or_the_callback_without_a_run_makes_exactly_one_run_per_fit(
    spark, mlflow_store
):
    x, y = two_classes(96)
    mlflow_store("autolog")
    mlflow.keras.autolog(log_models=False, log_datasets=False)
    try:
        trainers.DOWNPOUR(mlp(8, (4,), 2), num_workers=2).fit(x, y, epochs=1, verbose=0)
    finally:
        mlflow.keras.autolog(disable=True)
    (run,) = runs_of("autolog")
    assert run.info.status == "FINISHED" and run.data.params["trainer"] == "DOWNPOUR"
    assert "loss" in run.data.metrics and mlflow.active_run() is None
    assert not mlflow.search_logged_models([run.info.experiment_id], output_format="list")

    mlflow_store("callback")
    callback = MlflowCallback()
    trainers.DOWNPOUR(mlp(8, (4,), 2), num_workers=2).fit(
        x, y, epochs=1, verbose=0, callbacks=[callback]
    )
    (run,) = runs_of("callback")
    assert run.info.status == "FINISHED" and callback.model_info.run_id == run.info.run_id


def test_mlflows_own_keras_callback_is_refused_naming_ours(spark, mlflow_store):
    x, y = two_classes(32)
    trainer = trainers.DOWNPOUR(mlp(8, (4,), 2), num_workers=2)
    with pytest.raises(ValueError, match="distkeras.integrations.mlflow.MlflowCallback"):
        trainer.fit(x, y, epochs=1, callbacks=[mlflow.keras.MlflowCallback()])


NO_MLFLOW = """
import importlib.abc, pkgutil, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "mlflow":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NotInstalled())
import numpy as np
from pyspark.sql import SparkSession

import distkeras
from distkeras import trainers

for module in pkgutil.walk_packages(distkeras.__path__, "distkeras."):
    if module.name not in {"distkeras.integrations.mlflow", "distkeras.integrations.optuna"}:
        __import__(module.name)
import keras

model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
model.compile("sgd", "mse")
SparkSession.builder.remote(sys.argv[1]).create()  # the tests' cluster: no second JVM
x = np.arange(32, dtype="float32").reshape(8, 4)
history = trainers.SingleTrainer(model).fit(x, x[:, :1], epochs=1, verbose=0)
assert history.epoch == [0], history.epoch
print(sorted(name for name in sys.modules if name.split(".")[0] == "mlflow"))
"""


@pytest.mark.slow
def test_a_fit_without_mlflow_installed_imports_nothing_of_it(connect_url):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "SPARK_CONNECT_MODE_ENABLED": "1"}
    result = subprocess.run(
        [sys.executable, "-c", NO_MLFLOW, connect_url],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
