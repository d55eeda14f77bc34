"""The executors' Keras backend: the driver's.

backend_conf: the `spark.executorEnv` setting a new session gets. follow_backend: before a
job, points a classic session's executor environment at the driver's backend. Spark keys its
Python workers (and their daemon, which imports Keras in advance) by that environment, so a
job on another backend gets workers of its own instead of reusing ones that imported another.
The check in the task itself is executor.backend's.
"""

from __future__ import annotations

from distkeras.quiet import BACKEND_ENV, keras_backend
from distkeras.spark.facts import is_connect


def backend_conf() -> dict[str, str]:
    """The session setting that starts executors' Python workers on the driver's backend."""
    return {f"spark.executorEnv.{BACKEND_ENV}": keras_backend()}


def follow_backend(spark) -> str:
    """Makes the Python workers of `spark`'s next jobs import Keras on the driver's backend,
    and returns that backend.

    A Spark Connect client cannot change the executors' environment: there the server's
    `spark.executorEnv.KERAS_BACKEND` decides, and a worker on another backend fails its
    task naming both.
    """
    backend = keras_backend()
    if not is_connect(spark):
        environment = spark.sparkContext.environment
        if environment.get(BACKEND_ENV) != backend:
            environment[BACKEND_ENV] = backend
    return backend
