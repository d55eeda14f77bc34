"""Executors' imports started early: the first fit of a session overlaps them with the
driver's own preparation.

start_imports(spark, n) launches, once per SparkSession, a background Spark job of n tasks
that import Keras (with the backend of the executors' environment: spark.session gives them
the driver's) in the executors' Python workers; Spark reuses those workers for the training
tasks that follow. On a local session the user built (their own `SparkSession.builder`), it
first points Spark's Python daemon at the one that imports Keras once before forking
workers (preload_in_daemon). Nothing here trains or talks to the server.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import weakref

from distkeras.spark.backend import follow_backend
from distkeras.spark.facts import is_connect, parse_master
from distkeras.spark.job import SparkJob

logger = logging.getLogger(__name__)

_WARMED: weakref.WeakSet = weakref.WeakSet()
SCHEMA = "imported long"
DAEMON_SETTING = "spark.python.daemon.module"
DAEMON_MODULE = "distkeras.executor.daemon"


def import_keras(batches):
    """`mapInArrow` function: imports Keras (and its backend) in this Python worker."""
    from distkeras.quiet import import_keras

    # The import is the point, without TensorFlow's start-up chatter; not its devices: each
    # task chooses those (executor.devices), and TensorFlow reads the choice only once.
    import_keras(devices=False)
    import pyarrow as pa

    for _ in batches:
        pass
    yield pa.RecordBatch.from_pylist([{"imported": 1}])


def start_imports(spark, num_tasks: int) -> SparkJob | None:
    """Starts the import job on `num_tasks` tasks, the first time for `spark`; else None.

    The job runs in a daemon thread under its own job group; `finish` waits for it.
    """
    if spark in _WARMED:
        return None
    _WARMED.add(spark)
    preload_in_daemon(spark)
    follow_backend(spark)  # the Python workers the training job will reuse: its backend
    frame = spark.range(0, num_tasks, 1, num_tasks).mapInArrow(import_keras, SCHEMA)
    job = SparkJob(spark, frame.collect, "distkeras: executors import Keras")
    job.start()
    return job


def finish(job: SparkJob | None, timeout: float = 300.0) -> None:
    """Waits for the import job (None: nothing to wait for); a failure is only logged, the
    training job then imports in its own tasks."""
    if job is None:
        return
    try:
        job.result(timeout)
    except Exception as error:  # the training job reports real problems itself
        logger.warning("executors' early imports failed: %s", error)


def preload_in_daemon(spark) -> bool:
    """Sets Spark's Python daemon to distkeras.executor.daemon (Keras imported once, before
    it forks each worker) on a classic local session whose executors run this Python and
    that names no daemon of its own, as `get_spark_session` builds its sessions.

    Spark reads the setting from the context's live configuration when it starts the daemon,
    at the session's first Python task: on a session that already ran one, this changes
    nothing. Returns True when it set it.
    """
    if is_connect(spark):
        return False
    context = spark.sparkContext
    conf = context._conf  # the JVM context's own SparkConf, not a copy
    executable = shutil.which(context.pythonExec or "python3")
    if (
        conf.get(DAEMON_SETTING) is not None
        or parse_master(context.master).kind != "local"
        or executable is None
        or os.path.dirname(os.path.abspath(executable))
        != os.path.dirname(os.path.abspath(sys.executable))  # another environment
    ):
        return False
    conf.set(DAEMON_SETTING, DAEMON_MODULE)
    logger.debug("the session's Python daemon preloads Keras (%s)", DAEMON_MODULE)
    return True
