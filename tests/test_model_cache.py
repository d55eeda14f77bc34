"""Executor-side model reuse: a cached model trains exactly as a freshly built one."""

import numpy as np

from distkeras.executor import model_cache
from distkeras.executor.local_steps import WindowRunner
from distkeras.model_spec import ModelSpec

from .conftest import mlp


def _window(spec, x, y):
    model, runner = model_cache.model_and_runner(spec, None, 16, lambda m: WindowRunner(m, 16))
    runner.reset()
    runner.run(x, y)
    return model, runner, [w.copy() for w in model.get_weights()]


def test_a_reused_model_trains_like_a_fresh_one(monkeypatch):
    monkeypatch.setattr(model_cache, "MODELS", model_cache.ModelCache(max_entries=2))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 20)).astype("float32")
    y = rng.integers(0, 3, size=64)
    spec = ModelSpec.from_model(mlp(input_dim=20, hidden=(8,), classes=3))
    first_model, first_runner, fresh = _window(spec, x, y)
    assert int(first_model.optimizer.iterations.numpy()) == 4
    again_model, again_runner, reused = _window(spec, x, y)
    assert again_model is first_model and again_runner is first_runner
    for a, b in zip(fresh, reused):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert int(again_model.optimizer.iterations.numpy()) == 4


def test_another_architecture_gets_its_own_model(monkeypatch):
    monkeypatch.setattr(model_cache, "MODELS", model_cache.ModelCache(max_entries=2))
    small = ModelSpec.from_model(mlp(input_dim=20, hidden=(8,), classes=3))
    large = ModelSpec.from_model(mlp(input_dim=20, hidden=(16,), classes=3))
    build = lambda m: WindowRunner(m, 16)  # noqa: E731
    a, _ = model_cache.model_and_runner(small, None, 16, build)
    b, _ = model_cache.model_and_runner(large, None, 16, build)
    c, _ = model_cache.model_and_runner(small, None, 32, build)
    assert len({id(a), id(b), id(c)}) == 3
    assert len(model_cache.MODELS) == 2  # the least recently used went


def test_a_fresh_model_of_the_same_architecture_reuses_the_built_one(monkeypatch):
    monkeypatch.setattr(model_cache, "MODELS", model_cache.ModelCache(max_entries=2))
    build = lambda m: WindowRunner(m, 16)  # noqa: E731
    first = ModelSpec.from_model(mlp(input_dim=20, hidden=(8,), classes=3))
    fresh = ModelSpec.from_model(mlp(input_dim=20, hidden=(8,), classes=3))
    assert first.architecture != fresh.architecture  # new automatic layer names
    a, _ = model_cache.model_and_runner(first, None, 16, build)
    b, _ = model_cache.model_and_runner(fresh, None, 16, build)
    assert a is b
    for got, want in zip(b.get_weights(), fresh.weights):
        np.testing.assert_array_equal(got, want)
    wider = ModelSpec.from_model(mlp(input_dim=20, hidden=(9,), classes=3))
    assert model_cache.model_and_runner(wider, None, 16, build)[0] is not a
