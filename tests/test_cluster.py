"""A real cluster: a standalone master and worker, two executor JVMs, examples/mnist.py
submitted to it with spark-submit (one Spark application: the costly part of this file)."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def spark_bin(tool: str) -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / tool)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


@pytest.fixture
def standalone_cluster(tmp_path):
    """A Spark standalone master and one worker on 127.0.0.1, stopped by pid afterwards."""
    port = free_port()
    env = {
        **os.environ,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_WORKER_DIR": str(tmp_path / "work"),
        "SPARK_LOG_DIR": str(tmp_path / "logs"),
        "PYSPARK_PYTHON": sys.executable,
    }
    started = []
    try:
        for args in (
            ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
             "--webui-port", str(free_port())],
            ["org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}", "--host",
             "127.0.0.1", "--cores", "2", "--memory", "3g", "--webui-port", str(free_port())],
        ):  # fmt: skip
            started.append(
                subprocess.Popen(
                    [spark_bin("spark-class"), *args],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=open(tmp_path / f"{args[0].rsplit('.', 1)[1]}.log", "w"),  # noqa: SIM115
                    start_new_session=True,
                )
            )
            if len(started) == 1:
                wait_for_port(port, 60)
        yield f"spark://127.0.0.1:{port}", env
    finally:
        for process in started:
            os.killpg(process.pid, signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


@pytest.mark.cluster
@pytest.mark.apps
@pytest.mark.timeout(600)
def test_spark_submit_of_the_mnist_example_to_a_standalone_cluster(standalone_cluster, tmp_path):
    """ADAG's two workers in two executor JVMs (one core each) of a standalone worker, the
    example submitted as a user would; its --master is spark-submit's."""
    master, env = standalone_cluster
    output = tmp_path / "mnist.keras"
    done = subprocess.run(
        [spark_bin("spark-submit"), "--master", master, "--conf", "spark.driver.host=127.0.0.1",
         "--conf", "spark.executor.cores=1", "--conf", "spark.executor.memory=1g",
         str(ROOT / "examples" / "mnist.py"), "--data", str(ROOT.parent / "shared/data/mnist"),
         "--workers", "2", "--epochs", "3", "--output", str(output)],
        env=env, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    match = re.search(r"test accuracy: ([0-9.]+)", done.stdout)
    assert match, done.stdout[-2000:]
    assert float(match.group(1)) >= 0.92  # chance: 0.10
    assert output.exists()
    # The standalone worker gave the application two executors: a folder each.
    (application,) = (tmp_path / "work").glob("app-*")
    assert sorted(p.name for p in application.iterdir()) == ["0", "1"]
