"""GPUs as Spark schedules them: addresses given per task, made the only visible ones.

One local-cluster run (tests/jobs/gpu_job.py) whose discovery script reports GPUs "0" and
"1": TensorFlow sees neither (no GPU here), which the workers allowed the CPU fall back from
and the others fail on by name.
"""

import socket

import pytest

from distkeras.spark.facts import GpuRequest

from .test_faults import run_job

DISCOVERY = '#!/bin/sh\necho \'{"name": "gpu", "addresses": ["0", "1"]}\'\n'


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory):
    script = tmp_path_factory.mktemp("gpus") / "discover_gpus.sh"
    script.write_text(DISCOVERY)
    script.chmod(0o755)
    code, result = run_job("--discovery-script", str(script), job="gpu_job.py")
    assert code == 0, result
    return result


@pytest.mark.cluster
@pytest.mark.apps
def test_each_worker_makes_its_own_gpu_the_visible_one(gpu_run):
    assert gpu_run["num_workers"] == 2  # the GPU task slots: 2 GPUs, 1 per task (4 cores)
    workers = sorted(gpu_run["workers"], key=lambda w: w["gpu_addresses"])
    assert [w["gpu_addresses"] for w in workers] == [["0"], ["1"]]  # different GPUs
    for worker in workers:
        assert worker["cuda_visible_devices"] == worker["gpu_addresses"][0]
        assert worker["host"] == socket.gethostname()
        assert not any(":GPU:" in name for name in worker["visible_devices"])  # none here
        # Set before TensorFlow listed devices: neither the daemon's nor the warm-up's
        # import of Keras listed them in these Python workers.
        assert worker["devices"].startswith(
            f"CPU fallback (Spark gave GPU {worker['gpu_addresses'][0]}"
        )
        assert "kept" not in worker["devices"]
    assert len({w["pid"] for w in workers}) == 2


@pytest.mark.cluster
@pytest.mark.apps
def test_too_many_workers_for_the_gpus_fail_before_the_job(gpu_run):
    failure = gpu_run["too_many"]
    assert failure["jobs"] == []
    assert "num_workers=3" in failure["error"]
    assert "spark.executor.resource.gpu.amount=2" in failure["error"]
    assert "spark.task.resource.gpu.amount=1" in failure["error"]


@pytest.mark.cluster
@pytest.mark.apps
def test_gpus_given_but_not_seen_fail_without_the_cpu_fallback(gpu_run):
    for failure in gpu_run["no_fallback"], gpu_run["predictor_no_fallback"]:
        assert "DeviceError" in failure["error"]
        assert "GPU addresses ['" in failure["error"]
        assert "TensorFlow sees no GPU" in failure["error"]
        assert "allow_cpu_fallback" in failure["error"]


@pytest.mark.cluster
@pytest.mark.apps
def test_inference_tasks_take_their_gpus_and_a_half_gpu_is_shared(gpu_run):
    shared = gpu_run["shared"]  # a barrier stage at 0.5 GPU per task: both run at once
    assert [r["addresses"] for r in shared] == [["0"], ["0"]]
    assert [r["cuda_visible_devices"] for r in shared] == ["0", "0"]
    assert len({r["pid"] for r in shared}) == 2
    assert sum(r["rows"] for r in shared) == 64
    assert gpu_run["predicted_rows"] == 64
    assert "loss" in gpu_run["evaluated"]


@pytest.mark.cluster
@pytest.mark.apps
def test_a_reused_python_worker_switches_to_the_gpus_of_its_new_task(gpu_run):
    earlier = {r["pid"]: r for r in gpu_run["shared"]}
    earlier.update({w["pid"]: w for w in gpu_run["workers"]})  # (never both: pids differ)
    both = gpu_run["both"]  # 2 GPUs per task
    assert [r["addresses"] for r in both] == [["0", "1"]] * 2
    assert [r["cuda_visible_devices"] for r in both] == ["0,1"] * 2
    reused = [r for r in both if r["pid"] in earlier]
    assert reused, (both, sorted(earlier))
    for record in reused:  # TensorFlow listed its devices for an earlier, single-GPU task
        assert not record["applied"]
        assert record["initialised_under"] in ("0", "1")


def test_gpu_task_slots_follow_the_amounts():
    assert GpuRequest(2, 1, executors=3).slots == 6
    assert GpuRequest(2, 0.5, executors=1).slots == 4  # two tasks per GPU
    assert GpuRequest(1, 0.3, executors=2).slots == 6  # three per GPU, a tenth left over
    assert GpuRequest(2, 1, executors=None).slots is None


def test_workers_given_no_gpu_say_so_and_hide_every_gpu(spark):
    """On a session that requests no GPU (the tests' local[2]): the CPU, said in the summary."""
    import numpy as np

    from distkeras.trainers import ADAG

    from .conftest import mlp

    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    trainer = ADAG(mlp(input_dim=8, hidden=(4,), classes=2))  # num_workers=None: 2 here
    trainer.fit(x, y, epochs=1, verbose=0)
    assert trainer.num_workers == 2
    for summary in trainer.worker_summaries:
        assert summary["devices"] == "CPU (Spark gave this task no GPU)"
        assert summary["gpu_addresses"] == []
        assert summary["cuda_visible_devices"] == ""
        assert summary["host"] == socket.gethostname()
