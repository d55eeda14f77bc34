"""Real clusters: separate executor JVMs (local-cluster) and a standalone master + worker."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .test_faults import run_job

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


@pytest.mark.cluster
def test_adag_on_separate_executor_processes():
    code, result = run_job(
        "--master", "local-cluster[2,1,1024]", "--trainer", "ADAG", "--epochs", "5",
        "--learning-rate", "0.005",
    )  # fmt: skip
    assert code == 0, result
    assert result["master"] == "local-cluster[2,1,1024]"
    assert result["accuracy"] >= 0.93  # as on local[2]; chance: 0.10
    assert sorted(s["worker"] for s in result["summaries"]) == [0, 1]


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
def test_spark_submit_of_the_mnist_example_to_a_standalone_cluster(standalone_cluster, tmp_path):
    master, env = standalone_cluster
    output = tmp_path / "mnist.keras"
    done = subprocess.run(
        [spark_bin("spark-submit"), "--master", master, "--conf", "spark.driver.host=127.0.0.1",
         str(ROOT / "examples" / "mnist.py"), "--data", str(ROOT.parent / "shared/data/mnist"),
         "--workers", "2", "--epochs", "3", "--output", str(output)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    match = re.search(r"test accuracy: ([0-9.]+)", done.stdout)
    assert match, done.stdout[-2000:]
    assert float(match.group(1)) >= 0.92
    assert output.exists()
