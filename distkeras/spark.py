"""Spark session and cluster facts, for classic and Spark Connect sessions alike.

get_spark_session: the active session, or an embedded local one whose executors run this
interpreter. check_java: fail early when Java 17+ is missing. The facts other modules need
(is it Connect, its settings, task slots, cpus per task, retries, the address executors
reach this process at) are read here only, through `spark.conf`: no SparkContext, so they
hold on Spark Connect too. serve_connect: a Connect endpoint on a local classic session.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import subprocess
import sys

from distkeras.quiet import QUIET_ENV

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


# For local masters (executors share this Python environment): Python workers start with Keras
# imported, forked from a daemon that imported it once. A cluster whose executors have distkeras
# installed can set it too (docs/cluster.md); `conf` overrides it.
PRELOAD_CONF = {"spark.python.daemon.module": "distkeras.executor_daemon"}
_LOCAL_MASTER = re.compile(r"local(\[[^\]]*\])?")


def get_spark_session(master: str = "local[*]", app_name: str = "distkeras", conf=None):
    """Returns the active SparkSession, or builds one on `master`.

    Executors are pointed at this interpreter (PYSPARK_PYTHON / PYSPARK_DRIVER_PYTHON), so
    they import the same Keras, and start importing it as soon as the session is built (on a
    local master, once, in Spark's Python daemon); Spark's own logging is kept to warnings.
    Under spark-submit, its `--master` wins, so a script runs unchanged there and on the
    embedded `local[*]`.

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
    preload = {}
    if not launched_by_spark_submit():
        builder = builder.master(master)
        preload = PRELOAD_CONF if _LOCAL_MASTER.fullmatch(master) else {}
    builder = (
        builder.config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.driver.memory", "4g")  # local mode: executors live in the driver JVM
    )
    for name, value in QUIET_ENV.items():  # executors start TensorFlow without its chatter
        builder = builder.config(f"spark.executorEnv.{name}", os.environ.get(name, value))
    for key, value in {**preload, **(conf or {})}.items():
        builder = builder.config(key, str(value))
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    from distkeras import warmup  # (spark_job, which warmup uses, imports this module)

    # The executors import Keras while the caller loads data and builds the model.
    warmup.start_imports(session, session.sparkContext.defaultParallelism)
    return session


def is_connect(spark) -> bool:
    """True if `spark` is a Spark Connect session (it has no SparkContext nor JVM here)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def setting(spark, key: str, default: str | None = None) -> str | None:
    """The value of Spark setting `key` (runtime or static), or `default` when unset."""
    return spark.conf.get(key, default)


def master(spark) -> str:
    """The session's master URL (`spark.master`), e.g. "local[2]" or "spark://host:7077"."""
    return setting(spark, "spark.master", "") or ""


def task_cpus(spark) -> int:
    """Cores each task takes (`spark.task.cpus`): the workers' TensorFlow threads."""
    return int(setting(spark, "spark.task.cpus", "1"))


def is_local(spark) -> bool:
    """True when the executors run on this machine: a `local` or `local-cluster` master."""
    return master(spark).startswith("local")


def task_slots(spark) -> int | None:
    """How many tasks `spark` can run at once: its cores divided by `spark.task.cpus`.

    Returns None when the session does not tell (a remote Connect session without
    `spark.executor.instances` / `spark.executor.cores`): Spark's own barrier check decides.
    """
    url = master(spark)
    local = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\d+)?\])?", url)
    cluster = re.fullmatch(r"local-cluster\[(\d+),(\d+),\d+\]", url)
    if local:
        cores = local.group(1)
        total = 1 if cores is None else (os.cpu_count() or 1) if cores == "*" else int(cores)
    elif cluster:
        total = int(cluster.group(1)) * int(cluster.group(2))
    elif not is_connect(spark):
        total = spark.sparkContext.defaultParallelism
    else:
        instances = setting(spark, "spark.executor.instances")
        cores = setting(spark, "spark.executor.cores")
        if not (instances and cores):
            return None
        total = int(instances) * int(cores)
    return total // task_cpus(spark)


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
    local = re.fullmatch(r"local(?:\[(?:\*|\d+)(?:,(\d+))?\])?", master(spark))
    if local:
        return int(local.group(1) or 1)
    return int(setting(spark, "spark.task.maxFailures", "4"))


def client_host(spark) -> str:
    """The address executors would reach this process at.

    The loopback when the executors run on this machine; on a classic cluster,
    `spark.driver.host`; on a remote Connect session, this machine's address on the route
    to the Connect server (whether executors can reach it is for `placement` to probe).
    """
    if is_local(spark):
        return "127.0.0.1"
    if not is_connect(spark):
        return setting(spark, "spark.driver.host", "127.0.0.1")
    return route_address(spark.client.host)


def route_address(remote_host: str) -> str:
    """This machine's address on the route to `remote_host` (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((remote_host.strip("[]"), 9))
            return probe.getsockname()[0]
    except OSError:
        return socket.gethostbyname(socket.gethostname())


@contextlib.contextmanager
def serve_connect(spark, host: str = "127.0.0.1"):
    """Serves a classic session's JVM over Spark Connect; yields the `sc://` URL.

    For tests and benchmarks that compare Connect with classic in one process: both share
    the same executors. The endpoint stops when the block ends. A deployment starts
    `sbin/start-connect-server.sh` instead.
    """
    with socket.socket() as free:
        free.bind((host, 0))
        port = free.getsockname()[1]
    context = spark.sparkContext._jsc.sc()
    context.conf().set("spark.connect.grpc.binding.address", host)
    context.conf().set("spark.connect.grpc.binding.port", str(port))
    service = spark.sparkContext._jvm.org.apache.spark.sql.connect.service.SparkConnectService
    service.start(context)
    try:
        yield f"sc://{host}:{port}"
    finally:
        defaults = [getattr(service, f"stop$default${i}")() for i in (1, 2)]  # Scala defaults
        service.stop(*defaults)
