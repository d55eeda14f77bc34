"""Shared fixtures: one local[2] Spark session for the whole run (also served over Spark
Connect, for the tests that take `session`), MNIST arrays, small models."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def spark():
    from distkeras.spark.session import get_spark_session

    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = get_spark_session("local[2]", app_name="distkeras-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def connect_url(spark):
    """A Spark Connect endpoint on the tests' local[2] session: the same JVM and executors."""
    from distkeras.testing import serve_connect

    with serve_connect(spark) as url:
        yield url


@pytest.fixture(scope="session")
def connect_spark(connect_url):
    """A Spark Connect session on `connect_url`."""
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    session = ConnectSession.builder.remote(connect_url).create()
    yield session
    session.stop()


@pytest.fixture(params=["classic", "connect"])
def session(request, monkeypatch):
    """The classic session, then the same cluster through Spark Connect.

    PySpark builds Connect columns and sessions (`F.col`, `SparkSession.active()`) only while
    SPARK_CONNECT_MODE_ENABLED is set, as `builder.remote()` sets it for good in a Connect
    client; here it is set for the Connect test alone, so that classic tests stay classic.
    """
    if request.param == "classic":
        return request.getfixturevalue("spark")
    connect = request.getfixturevalue("connect_spark")
    monkeypatch.setenv("SPARK_CONNECT_MODE_ENABLED", "1")
    return connect


@pytest.fixture(scope="session")
def mnist():
    """((x_train, y_train), (x_test, y_test)) from ../shared/data/mnist."""
    from distkeras.datasets import load_mnist

    return load_mnist()


@pytest.fixture(scope="session")
def mnist_frames(spark, mnist):
    """(train_df, test_df) with a `features` array column and an integer `label`."""
    from distkeras.data import numpy_to_frame

    (x_train, y_train), (x_test, y_test) = mnist
    train = numpy_to_frame(spark, {"features": x_train, "label": y_train}).cache()
    test = numpy_to_frame(spark, {"features": x_test, "label": y_test}).cache()
    return train, test


def mlp(input_dim=784, hidden=(256, 128), classes=10, compile=True, optimizer="adam"):
    """The tests' MLP (784-256-128-10 by default), compiled for sparse labels."""
    import keras

    layers = [keras.Input((input_dim,))]
    layers += [keras.layers.Dense(units, activation="relu") for units in hidden]
    layers.append(keras.layers.Dense(classes, activation="softmax"))
    model = keras.Sequential(layers)
    if compile:
        model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def accuracy(model, x, y) -> float:
    """Share of rows whose argmax prediction equals the label."""
    predictions = model.predict(x, batch_size=512, verbose=0)
    return float(np.mean(np.argmax(predictions, axis=1) == y))


def _probe_job_id(spark, group: str) -> int:
    """Runs one tiny job in `group` and returns its id."""
    sc = spark.sparkContext
    sc.setJobGroup(group, "distkeras tests: job counter")
    try:
        sc.parallelize([0], 1).count()
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
        sc.setLocalProperty("spark.job.description", None)
    (job,) = sc.statusTracker().getJobIdsForGroup(group)
    return job


def jobs_started(spark, action) -> list[int]:
    """Runs `action` and returns the ids of the Spark jobs started meanwhile, in any thread.

    Job ids grow by one per job across the whole SparkContext, whatever the thread or job
    group (the trainers run theirs in background threads under their own group). So a probe
    job before and one after bound the ids of every job started in between; the after-probe
    waits for the trainers' job threads (`distkeras-spark-job`), so that a job such a thread
    was about to submit is counted too.
    """
    import threading
    import uuid

    before = _probe_job_id(spark, f"distkeras-test-{uuid.uuid4().hex}")
    try:
        action()
    finally:
        for thread in threading.enumerate():
            if thread.name == "distkeras-spark-job":
                thread.join(60)
    after = _probe_job_id(spark, f"distkeras-test-{uuid.uuid4().hex}")
    return list(range(before + 1, after))


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory):
    """A real MLflow tracking store for the session: SQLite in a temporary folder (its tables
    are created once, a few seconds); the previous tracking URI is restored after.

    Yields a function that makes an experiment current by name, creating it with its
    artifacts in the same folder (by default they would go to ./mlruns).
    """
    import mlflow

    previous = mlflow.get_tracking_uri()
    folder = tmp_path_factory.mktemp("mlflow")
    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")

    def use_experiment(name: str) -> str:
        if mlflow.get_experiment_by_name(name) is None:
            mlflow.create_experiment(name, artifact_location=str(folder / name))
        return mlflow.set_experiment(name).experiment_id

    yield use_experiment
    mlflow.set_tracking_uri(previous)


def two_classes(rows: int = 240, width: int = 8, seed: int = 0):
    """(x, y): rows of `width` normal features, labelled by the sign of x0 + x1."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, width)).astype("float32")
    return x, (x[:, 0] + x[:, 1] > 0).astype("int64")
