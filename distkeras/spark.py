"""Spark session and cluster helpers.

get_spark_session: the active session, or an embedded local one whose executors run this
interpreter. check_java: fail early when Java 17+ is missing. task_slots: how many tasks
the cluster can run at once (a barrier stage needs one slot per worker).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys

logger = logging.getLogger(__name__)

MIN_JAVA_VERSION = 17
JAVA_HINT = "Install a Java 17+ runtime (for example `apt-get install openjdk-17-jre-headless`)."


def java_version(java: str | None = None) -> int | None:
    """Returns the major version of `java` (default: from JAVA_HOME or PATH), None if absent."""
    if java is None:
        home = os.environ.get("JAVA_HOME")
        candidate = os.path.join(home, "bin", "java") if home else None
        java = candidate if candidate and os.path.exists(candidate) else shutil.which("java")
    if not java:
        return None
    try:
        result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major


def check_java() -> int:
    """Returns the Java major version.

    Raises:
        RuntimeError: if Java is missing or older than 17, naming what to install.
    """
    version = java_version()
    if version is None:
        raise RuntimeError(
            f"Spark needs Java {MIN_JAVA_VERSION}+, but no `java` was found. {JAVA_HINT}"
        )
    if version < MIN_JAVA_VERSION:
        raise RuntimeError(
            f"Spark needs Java {MIN_JAVA_VERSION}+, but `java` is version {version}. {JAVA_HINT}"
        )
    return version


def launched_by_spark_submit() -> bool:
    """True when this Python was started by spark-submit (its JVM gateway is already up)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def get_spark_session(master: str = "local[*]", app_name: str = "distkeras", conf=None):
    """Returns the active SparkSession, or builds one on `master`.

    Executors are pointed at this interpreter (PYSPARK_PYTHON / PYSPARK_DRIVER_PYTHON), so
    they import the same Keras; Spark's own logging is kept to warnings. Under spark-submit,
    its `--master` wins, so a script runs unchanged there and on the embedded `local[*]`.

    Args:
        master: Spark master URL used when no session is active and the script was not
            launched by spark-submit.
        app_name: application name for a new session.
        conf: optional dict of extra Spark settings for a new session.

    Returns:
        pyspark.sql.SparkSession
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    check_java()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if not launched_by_spark_submit():
        builder = builder.master(master)
    builder = (
        builder.config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.driver.memory", "4g")  # local mode: executors live in the driver JVM
    )
    for key, value in (conf or {}).items():
        builder = builder.config(key, str(value))
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session


def task_slots(spark) -> int:
    """Returns how many tasks `spark` can run at once: its cores divided by `spark.task.cpus`."""
    sc = spark.sparkContext
    cpus_per_task = int(sc.getConf().get("spark.task.cpus", "1"))
    local = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\d+)?\])?", sc.master)
    if local:
        cores = local.group(1)
        total = 1 if cores is None else (os.cpu_count() or 1) if cores == "*" else int(cores)
    else:
        cluster = re.fullmatch(r"local-cluster\[(\d+),(\d+),\d+\]", sc.master)
        total = int(cluster.group(1)) * int(cluster.group(2)) if cluster else sc.defaultParallelism
    return total // cpus_per_task


def partition_keys(spark, num_partitions: int) -> list[int]:
    """Keys k_0..k_{n-1} such that `repartition(n, col)` sends rows with key k_p to partition p."""
    from pyspark.sql import functions as F

    n = num_partitions
    buckets = spark.range(0, 64 * n).select("id", F.expr(f"pmod(hash(id), {n})").alias("bucket"))
    key = {row.bucket: row.id for row in buckets.collect()}
    return [key[p] for p in range(n)]


def task_max_failures(spark) -> int:
    """How many times Spark tries a task: M in `local[N,M]` (1 in other local masters), else
    `spark.task.maxFailures` (default 4)."""
    sc = spark.sparkContext
    local = re.fullmatch(r"local(?:\[(?:\*|\d+)(?:,(\d+))?\])?", sc.master)
    if local:
        return int(local.group(1) or 1)
    return int(sc.getConf().get("spark.task.maxFailures", "4"))
