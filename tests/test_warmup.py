"""Executors' early imports: once per session, and harmless when they fail."""

from distkeras import warmup


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
