"""Building a Spark session whose executors run this interpreter, and the Java check.

get_spark_session: the active session, or an embedded local one whose executors run this
interpreter and start importing Keras at once (spark.warmup). check_java: fail early when
Java 17+ is missing. Facts about a session live in spark.facts.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys

from distkeras.quiet import QUIET_ENV
from distkeras.spark import warmup
from distkeras.spark.backend import backend_conf
from distkeras.spark.facts import parse_master

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
PRELOAD_CONF = {warmup.DAEMON_SETTING: warmup.DAEMON_MODULE}


def get_spark_session(master: str = "local[*]", app_name: str = "distkeras", conf=None):
    """Returns the active SparkSession, or builds one on `master`.

    Executors are pointed at this interpreter (PYSPARK_PYTHON / PYSPARK_DRIVER_PYTHON), so
    they import the same Keras, on this process's backend (spark.backend), and start
    importing it as soon as the session is built (on a local master, once, in Spark's
    Python daemon); Spark's own logging is kept to warnings.
    Under spark-submit, its `--master` wins, so a script runs unchanged there and on the
    embedded `local[*]`. With PySpark's SPARK_REMOTE set (`sc://host:port`), the session is a
    Spark Connect client of that server, and `master`, `app_name` and `conf` are not used.

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
    if os.environ.get("SPARK_REMOTE"):  # PySpark's own variable: a Spark Connect server
        return SparkSession.builder.getOrCreate()
    check_java()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    preload = {}
    if not launched_by_spark_submit():
        builder = builder.master(master)
        preload = PRELOAD_CONF if parse_master(master).kind == "local" else {}
    builder = (
        builder.config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.driver.memory", "4g")  # local mode: executors live in the driver JVM
    )
    for name, value in QUIET_ENV.items():  # executors start TensorFlow without its chatter
        builder = builder.config(f"spark.executorEnv.{name}", os.environ.get(name, value))
    for key, value in {**backend_conf(), **preload, **(conf or {})}.items():
        builder = builder.config(key, str(value))
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    # The executors import Keras while the caller loads data and builds the model.
    warmup.start_imports(session, session.sparkContext.defaultParallelism)
    return session
