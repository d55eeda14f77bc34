"""Facts about a Spark session, for classic and Spark Connect sessions alike.

Is it Connect, its settings, master, task slots, cpus per task, retries, and the address
executors reach this process at: read here only, through `spark.conf` (no SparkContext, so
they hold on Spark Connect too). Of distkeras, this module imports only net.
"""

from __future__ import annotations

import dataclasses
import os
import re

from distkeras.net import route_address

_LOCAL = re.compile(r"local(?:\[(\*|\d+)(?:,(\d+))?\])?")
_LOCAL_CLUSTER = re.compile(r"local-cluster\[(\d+),(\d+),\d+\]")


@dataclasses.dataclass(frozen=True)
class MasterURL:
    """A master URL, parsed once.

    Attributes:
        kind: "local" (`local`, `local[N]`, `local[*]`, `local[N,M]`), "local-cluster", or
            "remote" (anything else: standalone, YARN, Kubernetes, or unknown).
        cores: task cores the URL itself gives (None for "remote").
        max_failures: M of `local[N,M]` (1 for other local masters, None otherwise).
    """

    kind: str
    cores: int | None = None
    max_failures: int | None = None


def parse_master(url: str) -> MasterURL:
    """Parses a master URL such as "local[2]", "local[2,3]" or "local-cluster[2,1,1024]"."""
    local = _LOCAL.fullmatch(url)
    if local:
        cores = local.group(1)
        total = 1 if cores is None else (os.cpu_count() or 1) if cores == "*" else int(cores)
        return MasterURL("local", total, int(local.group(2) or 1))
    cluster = _LOCAL_CLUSTER.fullmatch(url)
    if cluster:
        return MasterURL("local-cluster", int(cluster.group(1)) * int(cluster.group(2)))
    return MasterURL("remote")


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
    return parse_master(master(spark)).kind != "remote"


def task_slots(spark) -> int | None:
    """How many tasks `spark` can run at once: its cores divided by `spark.task.cpus`.

    Returns None when the session does not tell (a remote Connect session without
    `spark.executor.instances` / `spark.executor.cores`): Spark's own barrier check decides.
    """
    parsed = parse_master(master(spark))
    if parsed.cores is not None:
        total = parsed.cores
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
    parsed = parse_master(master(spark))
    if parsed.max_failures is not None:
        return parsed.max_failures
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


GPU_EXECUTOR_AMOUNT = "spark.executor.resource.gpu.amount"
GPU_TASK_AMOUNT = "spark.task.resource.gpu.amount"


@dataclasses.dataclass(frozen=True)
class GpuRequest:
    """The GPUs a session asks Spark to schedule.

    Attributes:
        executor_amount: GPUs per executor (`spark.executor.resource.gpu.amount`).
        task_amount: GPUs per task (`spark.task.resource.gpu.amount`; 0.5 shares one GPU
            between two tasks).
        executors: executors of the session, when it tells (None otherwise).
    """

    executor_amount: float
    task_amount: float
    executors: int | None

    @property
    def tasks_per_executor(self) -> int:
        """Tasks one executor runs at once by its GPUs."""
        return int(self.executor_amount / self.task_amount + 1e-9)

    @property
    def slots(self) -> int | None:
        """Tasks the session runs at once by its GPUs; None when the executors are unknown."""
        return None if self.executors is None else self.executors * self.tasks_per_executor

    def settings(self) -> str:
        """The settings this request comes from, for messages."""
        return (
            f"{GPU_EXECUTOR_AMOUNT}={self.executor_amount:g}, "
            f"{GPU_TASK_AMOUNT}={self.task_amount:g}"
        )


def gpu_request(spark) -> GpuRequest | None:
    """The session's GPU request; None when its tasks ask for no GPU."""
    task = float(setting(spark, GPU_TASK_AMOUNT, "0") or 0)
    if task <= 0:
        return None
    executor = setting(spark, GPU_EXECUTOR_AMOUNT)
    if executor is None and parse_master(master(spark)).kind == "local":
        executor = setting(spark, "spark.driver.resource.gpu.amount")  # tasks share the driver's
    return GpuRequest(float(executor or 0), task, _executors(spark))


def _executors(spark) -> int | None:
    """Executors of the session: N of `local-cluster[N,..]`, 1 for `local`, else
    `spark.executor.instances`, else (classic) those registered now; None if unknown."""
    parsed = parse_master(master(spark))
    if parsed.kind == "local":
        return 1
    if parsed.kind == "local-cluster":
        return int(_LOCAL_CLUSTER.fullmatch(master(spark)).group(1))
    instances = setting(spark, "spark.executor.instances")
    if instances:
        return int(instances)
    if is_connect(spark):
        return None
    registered = spark.sparkContext._jsc.sc().getExecutorIds().size()  # no Python API
    return registered or None


def python_worker_reuse(spark) -> bool:
    """Whether Spark reuses its Python workers across tasks (`spark.python.worker.reuse`)."""
    return (setting(spark, "spark.python.worker.reuse", "true") or "true").lower() == "true"
