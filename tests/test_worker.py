"""The worker: local steps, error descriptions, and its memory and spill file on Spark."""

import glob
import os
import time

import numpy as np
import pytest

from distkeras.errors import WorkerError
from distkeras.executor.local_steps import WindowRunner
from distkeras.executor.worker import describe
from distkeras.trainers import ADAG, SingleTrainer
from distkeras.trainers import run as trainers_run

from .conftest import mlp
from .jobs.faults import exchange_fault, plan_with
from .test_row_source import open_spill_files


def test_window_runner_counts_steps_and_logs_only_after_a_step():
    model = mlp(input_dim=5, hidden=(4,), classes=3)
    runner = WindowRunner(model, batch_size=4)
    runner.reset()
    assert runner.logs() == {}
    x = np.random.rand(10, 5).astype("float32")
    y = np.random.randint(0, 3, 10)
    before = [w.copy() for w in model.get_weights()]
    assert runner.run(x, y) == 3  # 4 + 4 + 2 rows
    assert set(runner.logs()) == {"loss", "accuracy"}
    assert int(model.optimizer.iterations.numpy()) == 3
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_describe_keeps_first_and_last_line():
    error = ValueError("in user code:\n\n  File x, line 1\n\nValueError: the real cause")
    assert describe(error) == "ValueError: in user code: ... ValueError: the real cause"
    assert describe(KeyError("k")) == "KeyError: 'k'"


def descendants(root: int) -> list[int]:
    """The processes below `root` (here: Spark's JVM, its Python daemon and workers)."""
    parents = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.split("/")[2])] = int(fields[1])
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def spill_files_of_spark():
    """Spill files any Spark process of this test session holds, once workers are gone."""
    deadline = time.monotonic() + 30  # a cancelled task's Python worker is killed in ~2 s
    while (links := open_spill_files(descendants(os.getpid()))) and time.monotonic() < deadline:
        time.sleep(0.5)
    return links


def packed_frame(spark, rows: int):
    """`rows` rows of 784 packed float32 (3,136 bytes of features each), made by Spark."""
    from pyspark.sql import functions as F

    return spark.range(rows, numPartitions=2).select(
        F.expr("unhex(repeat('0000803F', 784))").alias("features"),  # 784 x 1.0f
        (F.col("id") % 10).cast("int").alias("label"),
    )


def linear_model():
    import keras

    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    return model


@pytest.mark.slow
def test_worker_memory_does_not_grow_with_its_partition(spark):
    rows = 48_000  # 150 MB of features in one worker's partition
    trainer = SingleTrainer(linear_model(), batch_size=500, num_epoch=2)
    trainer.train(packed_frame(spark, rows), shuffle=True, verbose=0)
    (summary,) = trainer.worker_summaries
    assert summary["rows"] == rows and summary["samples"] == 2 * rows
    feature_bytes = rows * 784 * 4
    assert feature_bytes <= summary["spill_bytes"] <= 1.1 * feature_bytes
    # Read from /proc/self/status by the worker: its peak resident set minus its size once the
    # model was built. Holding the partition (as numpy) alone would be 150 MB.
    assert 0 <= summary["memory_growth"] <= 128 * 2**20, summary
    assert spill_files_of_spark() == []


def test_a_failed_worker_leaves_no_spill_file(spark, tmp_path, monkeypatch):
    hook = exchange_fault(0, 2, "fail", str(tmp_path / "fault"))
    monkeypatch.setattr(trainers_run, "WorkerPlan", plan_with(hook))
    trainer = ADAG(linear_model(), batch_size=100, num_epoch=2)
    with pytest.raises(WorkerError, match="test fault injected"):
        trainer.train(packed_frame(spark, 4000), verbose=0)
    assert (tmp_path / "fault").exists()  # the worker failed while training from its spill
    assert spill_files_of_spark() == []
