"""Helpers for tests and benchmarks that users may reuse; nothing in distkeras imports this.

serve_connect: a Spark Connect endpoint on a local classic session, so that one process can
compare Connect with classic on the same executors.
"""

from __future__ import annotations

import contextlib
import socket


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
