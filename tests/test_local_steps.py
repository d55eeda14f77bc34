"""WindowRunner: a window of local steps in one traced call, traced once, without retracing
warnings."""

import logging

import numpy as np

from distkeras.executor.local_steps import WindowRunner

from .conftest import mlp


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_windows_of_any_size_train_on_one_trace_without_retracing_warnings():
    records = _Records()
    logger = logging.getLogger("tensorflow")
    logger.addHandler(records)
    rng = np.random.default_rng(0)
    x = rng.random((70, 8), dtype=np.float32)
    y = rng.integers(0, 3, 70)
    try:
        for _ in range(3):  # three short fits in one process, as on a reused executor
            model = mlp(input_dim=8, hidden=(4,), classes=3)
            before = [w.copy() for w in model.get_weights()]
            runner = WindowRunner(model, batch_size=16)
            assert runner.run(x[:64], y[:64]) == 4
            assert runner.run(x[64:], y[64:]) == 1  # the epoch's smaller last window
            assert runner.run(x[:32], y[:32]) == 2  # any other size
            assert runner._run.experimental_get_tracing_count() == 1  # one trace for all
            assert int(model.optimizer.iterations) == 7
            assert set(runner.logs()) == {"loss", "accuracy"}
            assert any(np.any(a != b) for a, b in zip(before, model.get_weights()))
    finally:
        logger.removeHandler(records)
    assert not [m for m in records.messages if "retracing" in m]
