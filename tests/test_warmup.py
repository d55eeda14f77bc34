"""Executors' early imports: once per session, and harmless when they fail."""

from distkeras.spark import warmup


def test_imports_start_once_per_session_and_finish(spark, monkeypatch):
    monkeypatch.setattr(warmup, "_WARMED", type(warmup._WARMED)())
    job = warmup.start_imports(spark, 2)
    assert job is not None
    assert warmup.start_imports(spark, 2) is None
    warmup.finish(job, timeout=300.0)
    assert [row.imported for row in job.result()] == [1, 1]


def test_a_failed_warm_up_is_only_logged(spark, caplog):
    class Failed:
        def result(self, timeout):
            raise RuntimeError("no Python on the executors")

    warmup.finish(Failed())
    assert "early imports failed" in caplog.text
    warmup.finish(None)


def _alive(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_python_workers_outlive_a_fit_on_arrays(spark):
    """Spark keeps a Python worker (its imports, its built model) only if the task read all
    its input; a fit on arrays gets its rows from the driver directly, not from that input."""
    import time

    import keras
    import numpy as np

    from distkeras.trainers import DOWNPOUR

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    trainer = DOWNPOUR(model, num_workers=2)
    x = np.random.default_rng(0).random((64, 4), dtype=np.float32)
    trainer.fit(x, (x[:, 0] > 0.5).astype("int32"), batch_size=8, verbose=0)
    pids = [summary["pid"] for summary in trainer.worker_summaries]
    time.sleep(1.0)  # an exiting worker is gone (or a zombie) well within this
    assert [_alive(pid) for pid in pids] == [True, True]


def test_python_workers_start_with_keras_imported(spark):
    """Sessions built by get_spark_session fork Python workers from a daemon that imported
    TensorFlow (distkeras.executor.daemon)."""
    import pyarrow as pa

    def daemon_has_tensorflow(batches):
        import os

        for _ in batches:
            pass
        with open(f"/proc/{os.getppid()}/maps") as maps:
            loaded = any("libtensorflow_framework" in line for line in maps)
        yield pa.RecordBatch.from_pylist([{"loaded": loaded}])

    rows = spark.range(0, 2, 1, 2).mapInArrow(daemon_has_tensorflow, "loaded boolean").collect()
    assert [row.loaded for row in rows] == [True, True]


def test_a_failed_keras_preload_is_logged_and_the_daemon_goes_on(monkeypatch, caplog):
    """The daemon serves every Python task of the application: a failed import is logged,
    and each worker then imports Keras itself."""
    from distkeras import quiet
    from distkeras.executor import daemon as executor_daemon

    def broken(devices=True):
        raise ImportError("no TensorFlow here")

    monkeypatch.setattr(quiet, "import_keras", broken)
    executor_daemon.preload()
    assert "could not preload Keras: no TensorFlow here" in caplog.text
