"""Faults: retried stages, hung workers, Ctrl-C on the driver, checkpoints and resume, load."""

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from distkeras import trainers
from distkeras.errors import WorkerError
from distkeras.parameter_server import Client, ParameterServer
from distkeras.trainers import run as trainers_run
from distkeras.trainers.checkpoint import MANIFEST_FILE, load_checkpoint

from .conftest import accuracy, mlp
from .jobs.faults import exchange_fault, plan_with

JOB = Path(__file__).parent / "jobs" / "train_job.py"


def run_job(*args, timeout=600, job=JOB.name):
    """Runs tests/jobs/<job> (train_job.py) in its own process; returns (returncode, JSON
    result)."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    done = subprocess.run(
        [sys.executable, str(JOB.parent / job), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result from the job:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.returncode, json.loads(lines[-1])


def resident_bytes() -> int:
    """This process's resident memory, from /proc."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def server_threads():
    return [t for t in threading.enumerate() if t.name.startswith("distkeras-ps")]


@pytest.fixture(scope="module")
def retried_then_interrupted(tmp_path_factory):
    """One job process on local[2,2] (Spark retries a failed task): a DOWNPOUR run whose
    worker 0 fails in its third epoch, then a long run stopped by SIGINT once its second
    epoch ended. One process for both: each start pays Spark's and TensorFlow's start-up.

    Returns the retried run's result, the interrupted run's, the time of the signal, the
    job's exit code, the fault's marker and the long run's checkpoint folder.
    """
    folder = tmp_path_factory.mktemp("faults")
    marker, checkpoints = folder / "fault-done", folder / "ckpt"
    with socket.socket() as probe:  # a port free now, so that the job can check it is freed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    job = subprocess.Popen(
        [sys.executable, str(JOB), "--master", "local[2,2]", "--trainer", "DOWNPOUR",
         "--epochs", "3", "--fault", f"0:60:fail:{marker}", "--fault-after-epoch", "1",
         "--then-interrupt", str(port), str(checkpoints)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip  # 25 commits per epoch: worker 0 fails in its third epoch, the driver
    # having ended the second (worker 1 may be slower or faster)
    lines = queue.Queue()  # the job's stdout, read by a thread so that every wait is bounded
    reader = threading.Thread(target=lambda: [*map(lines.put, job.stdout), lines.put(None)])
    reader.start()
    out, signalled = [], None
    deadline = time.monotonic() + 480  # Spark's start-up at a load of 20: minutes

    def read_until(prefix: str) -> bool:
        """Reads the job's lines until one starts with `prefix` (False: the job ended)."""
        while (line := lines.get(timeout=max(0.0, deadline - time.monotonic()))) is not None:
            out.append(line)
            if line.startswith(prefix):
                return True
        return False

    try:
        if read_until("{") and read_until("long epoch 1"):  # first result; long run going
            signalled = time.time()
            job.send_signal(signal.SIGINT)
        job.wait(timeout=60)
    finally:
        job.kill()
        reader.join(30)
    text = "".join(out + [line for line in list(lines.queue) if line])
    results = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert len(results) == 2, f"exit code {job.returncode}, out: {text[-2000:]}"
    return results[0], results[1], signalled, job.returncode, marker, checkpoints


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_failed_worker_is_retried_from_the_current_center(retried_then_interrupted):
    result, _, _, _, marker, _ = retried_then_interrupted
    assert marker.exists()  # the fault did happen
    stats = result["stats"]
    assert stats["retries"] == 1
    # Commits of the failed attempt stayed in the center the retry started from.
    assert stats["num_updates"] > sum(s["commits"] for s in result["summaries"])
    # The retry resumed at the driver's epoch, not the first: 3 epochs in all, not 5 or 6.
    # Worker 1 is re-run from the driver's epoch too, unless Spark kept its finished result.
    summaries = {summary["worker"]: summary for summary in result["summaries"]}
    assert summaries[0]["first_epoch"] == 2, summaries[0]
    for summary in summaries.values():
        assert summary["samples"] == (3 - summary["first_epoch"]) * summary["rows"], summary
    assert result["accuracy"] >= 0.92


def no_active_job(spark, seconds: float) -> bool:
    """Whether the session's active Spark jobs end within `seconds` (polled)."""
    deadline = time.monotonic() + seconds
    while spark.sparkContext.statusTracker().getActiveJobsIds():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_hung_worker_fails_the_run_naming_it(spark, mnist, tmp_path, monkeypatch):
    """The run fails naming the silent worker, and its Spark job is cancelled: the hung task
    would otherwise hold its slot for the hook's hour."""
    (x, y), _ = mnist
    hook = exchange_fault(1, 2, "hang", str(tmp_path / "hang"))
    monkeypatch.setattr(trainers_run, "WorkerPlan", plan_with(hook))
    trainer = trainers.DOWNPOUR(mlp(hidden=(16,)), num_workers=2, worker_timeout=4.0)
    started = time.monotonic()
    with pytest.raises(WorkerError, match="worker 1 sent no progress"):
        trainer.fit(x[:4000], y[:4000], epochs=50, verbose=0)
    assert time.monotonic() - started < 120
    assert not server_threads()
    assert no_active_job(spark, 60)


def test_a_failed_run_keeps_the_center_and_a_checkpoint_of_it(mnist, tmp_path, monkeypatch):
    """local[2] retries no task: worker 1 fails at its 8th exchange, the run fails naming
    it, and both `trainer.model` and the checkpoint written on failure hold the trained
    center (not the initial weights); a run that ends writes one at its end too."""
    (x, y), _ = mnist
    hook = exchange_fault(1, 8, "fail", str(tmp_path / "fail"))
    monkeypatch.setattr(trainers_run, "WorkerPlan", plan_with(hook))
    model = mlp(hidden=(16,))
    initial = model.get_weights()
    folder = tmp_path / "ckpt"
    trainer = trainers.DOWNPOUR(model, num_workers=2, checkpoint_dir=str(folder))
    with pytest.raises(WorkerError, match="worker 1 failed: RuntimeError: test fault"):
        trainer.fit(x[:4000], y[:4000], epochs=50, verbose=0)
    assert (tmp_path / "fail").exists()
    assert trainer.parameter_server_stats["num_updates"] >= 8
    center = model.get_weights()
    assert not any(np.array_equal(a, b) for a, b in zip(initial, center))
    assert all(np.isfinite(w).all() for w in center)
    saved = mlp(hidden=(16,))
    state = load_checkpoint(folder, saved)
    assert state["clock"] == trainer.parameter_server_stats["num_updates"]
    for written, held in zip(saved.get_weights(), center):
        np.testing.assert_array_equal(written, held)

    monkeypatch.undo()  # no fault: the checkpoint at the end of a run is its final center
    ended = trainers.DOWNPOUR(model, num_workers=2, checkpoint_dir=str(folder))
    ended.fit(x[:1000], y[:1000], epochs=1, verbose=0)
    assert load_checkpoint(folder, saved)["epoch"] == 1
    for written, held in zip(saved.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(written, held)


@pytest.mark.timeout(900)
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ctrl_c_stops_quickly_and_keeps_the_weights(retried_then_interrupted):
    _, result, signalled, code, _, checkpoints = retried_then_interrupted
    assert code == 130 and result["interrupted"]
    assert result["ended"] - signalled < 15
    assert result["port_free"], result
    assert result["weights_finite"] and result["updates"] > 0, result
    state = json.loads((checkpoints / MANIFEST_FILE).read_text())
    assert state["epoch"] >= 2 and (checkpoints / state["weights"]).exists()


class InterruptAfter(keras.callbacks.Callback):
    """Raises KeyboardInterrupt at the end of an epoch, as Ctrl-C would."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_interrupted_run_resumes_to_the_same_accuracy(mnist, tmp_path):
    (x, y), (x_test, y_test) = mnist
    folder = str(tmp_path / "run")
    first = trainers.DOWNPOUR(mlp(), num_workers=2, checkpoint_dir=folder, seed=5)
    with pytest.raises(KeyboardInterrupt):
        first.fit(x, y, epochs=4, callbacks=[InterruptAfter(1)], verbose=0)
    assert json.loads(Path(folder, MANIFEST_FILE).read_text())["epoch"] == 2

    model = mlp()
    resumed = trainers.DOWNPOUR(model, num_workers=2, resume_from=folder, seed=5)
    history = resumed.fit(x, y, epochs=4, verbose=0)
    assert history.epoch == [2, 3]
    assert accuracy(model, x_test, y_test) >= 0.93  # as an uninterrupted run; chance: 0.10


def test_resume_from_an_empty_folder_names_it(tmp_path):
    trainer = trainers.DOWNPOUR(mlp(hidden=(4,)), resume_from=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="No checkpoint in"):
        trainer.fit(np.zeros((8, 784), "float32"), np.zeros(8, "int64"), verbose=0)


@pytest.mark.timeout(300 + 2 * float(os.environ.get("DISTKERAS_SOAK_SECONDS", "5")))
def test_soak_sixteen_clients_lose_no_commit():
    """16 clients commit and pull for a while: exact sums, no leaked threads or sockets.

    5 s in `make test`; `make soak` runs it for 300 s (DISTKERAS_SOAK_SECONDS)."""
    seconds = float(os.environ.get("DISTKERAS_SOAK_SECONDS", "5"))
    shapes = [(64, 32), (32,), (32, 10)]
    fds_before = len(os.listdir("/proc/self/fd"))
    counts = [0] * 16
    with ParameterServer([np.zeros(s, np.float32) for s in shapes]) as ps:

        def client_loop(worker):
            deadline = time.monotonic() + seconds
            with Client(ps.address, ps.secret, worker_id=worker) as client:
                ones = [np.ones(s, np.float32) for s in shapes]
                while time.monotonic() < deadline:
                    client.commit(ones)
                    client.pull()
                    counts[worker] += 1

        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        time.sleep(min(2.0, seconds / 4))  # past start-up: buffers allocated
        rss_warm = resident_bytes()
        for thread in threads:
            thread.join(seconds + 60)
        assert resident_bytes() - rss_warm < 64 * 2**20  # memory stays flat under load
        total = sum(counts)
        assert ps.num_updates == total > 16
        for center in ps.get_weights():
            np.testing.assert_array_equal(center, np.full(center.shape, total, np.float32))
    assert not server_threads()
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 2
