"""Keras backends: the executors run the driver's, and the core paths work on JAX and PyTorch.

Keras fixes its backend when it is imported, and this test process runs TensorFlow, so each
other backend's run is a process of its own (tests/jobs/backend_job.py, with its own
local[2] session): JAX's in `make test-apps`, PyTorch's in `make test-torch`.
The checks of the backend's choice itself run here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras  # before anything below selects a backend: this process runs TensorFlow
import numpy as np
import pytest

from distkeras import quiet
from distkeras.executor import backend
from distkeras.executor.inference import InferencePlan, predict_arrays
from distkeras.model_spec import ModelSpec

from .conftest import mlp

JOB = Path(__file__).parent / "jobs" / "backend_job.py"
JOB_LIMIT = pytest.mark.timeout(900)  # the first JAX test runs the job: 460 s at a load of 20


def test_a_worker_on_another_backend_fails_naming_both():
    """This process imported Keras on TensorFlow; a plan from a JAX driver must not run."""
    assert keras.backend.backend() == "tensorflow"
    with pytest.raises(RuntimeError, match=r"`jax` backend.*imported Keras on `tensorflow`"):
        backend.use_backend("jax")


def test_an_inference_task_checks_the_backend_before_building_the_model():
    import pyarrow as pa

    plan = InferencePlan(
        spec=ModelSpec.uncompiled(mlp(input_dim=4, hidden=(), classes=2)),
        key="backend-check",
        feature_cols=("features",),
        input_shapes=(None,),
        input_widths=(4,),
        batch_size=8,
        backend="jax",
    )
    features = pa.StructArray.from_arrays(
        [pa.array([[0.0] * 4], type=pa.list_(pa.float32()))], names=["features"]
    )
    with pytest.raises(RuntimeError, match="spark.executorEnv.KERAS_BACKEND=jax"):
        predict_arrays(plan, "argmax", features)


def test_no_runner_for_a_backend_without_one():
    with pytest.raises(RuntimeError, match=r"tensorflow, jax, torch.*backend='numpy'"):
        backend.window_runner("numpy", model=None, batch_size=32)


def test_the_backend_keras_will_select_is_read_without_importing_it(monkeypatch, tmp_path):
    monkeypatch.delitem(sys.modules, "keras")
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert quiet.keras_backend() == "jax"
    monkeypatch.delenv("KERAS_BACKEND")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert quiet.keras_backend() == "tensorflow"  # no keras.json: Keras' default
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "torch"}))
    assert quiet.keras_backend() == "torch"


def test_a_classic_session_gives_its_python_workers_the_drivers_backend(spark):
    from distkeras.spark.backend import follow_backend

    assert follow_backend(spark) == "tensorflow"
    assert spark.sparkContext.environment["KERAS_BACKEND"] == "tensorflow"
    assert spark.conf.get("spark.executorEnv.KERAS_BACKEND") == "tensorflow"


BACKEND_RUNS = [
    pytest.param("jax", marks=pytest.mark.apps, id="jax"),
    # PyTorch's PyPI wheel pulls its CUDA libraries (GBs): `make test-torch` installs it.
    pytest.param("torch", marks=pytest.mark.torch, id="torch"),
]


@pytest.fixture(scope="module", params=BACKEND_RUNS)
def backend_run(request, tmp_path_factory):
    """The job's JSON line, run once per backend.

    Its environment selects no backend (no KERAS_BACKEND, an empty KERAS_HOME): the job
    builds its session, whose executors would then run TensorFlow, and only then picks the
    backend under test.
    """
    name = request.param
    pytest.importorskip(name, reason=f"install the `{name}` extra: pip install -e '.[{name}]'")
    folder = tmp_path_factory.mktemp(name)
    env = {**os.environ, "KERAS_HOME": str(folder), "PYSPARK_PYTHON": sys.executable}
    for variable in ("KERAS_BACKEND", "PYSPARK_DRIVER_PYTHON", "SPARK_CONNECT_MODE_ENABLED"):
        env.pop(variable, None)
    result = subprocess.run(
        [sys.executable, str(JOB), "--backend", name, "--epochs", "8"]
        + ["--path", str(folder / "pipeline")],
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@JOB_LIMIT
def test_driver_and_workers_run_the_backend(backend_run):
    assert backend_run["driver_backend"] == backend_run["worker_backend"]
    assert backend_run["driver_backend"] in ("jax", "torch")
    print(backend_run["driver_backend"], "job phases (s):", backend_run["seconds"])


@pytest.mark.slow
@JOB_LIMIT
def test_windows_carry_the_optimizer_state(backend_run):
    assert backend_run["window_steps"] == [4, 2, 2, 3], backend_run
    assert backend_run["window_difference"] < 1e-5, backend_run  # float32 sums in another order
    assert backend_run["window_iterations"] == 7, backend_run
    assert backend_run["window_logs"] == ["accuracy", "loss"], backend_run


@pytest.mark.slow
@JOB_LIMIT
def test_default_trainer_reaches_the_accuracy_floor(backend_run):
    # Measured 0.94 (JAX) and 0.93 (PyTorch) on the digits after 8 epochs (TensorFlow: the
    # same); chance is 0.10.
    assert backend_run["default_accuracy"] >= 0.85, backend_run


@pytest.mark.slow
@JOB_LIMIT
def test_synchronous_trainer_with_validation_callback_and_sample_weights(backend_run):
    # Class 0 weighs nothing: the model learns the nine others (measured 0.91 on JAX, 0.875
    # on PyTorch) and never predicts 0 (measured recall 0.0; 0.9+ when the weights are
    # ignored).
    assert backend_run["sync_accuracy"] >= 0.8, backend_run
    assert backend_run["sync_zero_recall"] <= 0.2, backend_run
    assert backend_run["sync_epochs"] == list(range(8))
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(backend_run["sync_logs"])
    assert backend_run["sync_batches"] >= 8  # the callback's batch hooks fire


@pytest.mark.slow
@JOB_LIMIT
def test_pipeline_transform_save_load_and_evaluate(backend_run):
    assert backend_run["transform_accuracy"] >= 0.85, backend_run
    assert backend_run["loaded_same"], backend_run
    assert np.isclose(
        backend_run["evaluate_accuracy"], backend_run["transform_accuracy"], atol=1e-6
    )
