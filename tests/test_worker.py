"""The worker's pieces that run without Spark: local steps and error descriptions."""

import numpy as np

from distkeras.local_steps import WindowRunner
from distkeras.worker import describe

from .conftest import mlp


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
