"""In-memory rows sent directly: Shards cut the driver's arrays, the server sends the chunks,
and a numpy fit builds no DataFrame of them."""

import numpy as np
import pytest

from distkeras.errors import DistKerasError
from distkeras.inputs.shards import Shards
from distkeras.ps.client import Client
from distkeras.ps.server import ParameterServer

from .conftest import mlp


def _columns(rows=10):
    x = np.arange(rows * 6, dtype=np.float64).reshape(rows, 2, 3)
    y = np.arange(rows, dtype=np.int64)
    return [x, y]


def test_workers_get_interleaved_rows_in_chunks_of_at_most_max_bytes():
    shards = Shards(_columns(), num_workers=3)
    row_bytes = 6 * 4 + 8
    chunks, last, chunk = [], False, 0
    while not last:
        arrays, last = shards(1, chunk, 8 * 2 + 2 * row_bytes)
        assert len(arrays[1]) <= 2
        chunks.append(arrays)
        chunk += 1
    x = np.concatenate([c[0] for c in chunks])
    y = np.concatenate([c[1] for c in chunks])
    np.testing.assert_array_equal(y, [1, 4, 7])
    assert x.dtype == np.float32 and x.shape == (3, 6) and y.dtype == np.int64
    np.testing.assert_array_equal(x[1], np.arange(24, 30))
    assert [shards.shard_rows(w) for w in range(3)] == [4, 3, 3]


def test_ensembles_give_every_worker_every_row_and_bad_requests_are_refused():
    shards = Shards(_columns(), num_workers=2, every_row=True)
    arrays, last = shards(1, 0, 1 << 20)
    assert last and list(arrays[1]) == list(range(10))
    with pytest.raises(ValueError, match="worker 2"):
        shards(2, 0, 1 << 20)
    with pytest.raises(ValueError, match="one row"):
        shards(0, 0, 20)


def test_a_client_receives_its_shard_over_its_authenticated_connection():
    x = np.random.default_rng(0).random((1000, 5), dtype=np.float32)
    y = np.arange(1000)
    server = ParameterServer([np.zeros(3, np.float32)], shards=Shards([x, y], 2))
    server.start()
    try:
        with Client(server.address, server.secret, worker_id=1, timeout=10.0) as client:
            chunks = list(client.shard(max_bytes=4096))
        assert len(chunks) > 1
        np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), x[1::2])
        np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), y[1::2])
        with pytest.raises(DistKerasError, match="auth|secret|digest"):
            with Client(server.address, b"x" * 32, worker_id=0, timeout=10.0) as stranger:
                next(stranger.shard())
    finally:
        server.stop()


def test_a_run_without_shards_refuses_the_request():
    server = ParameterServer([np.zeros(3, np.float32)])
    server.start()
    try:
        with Client(server.address, server.secret, worker_id=0, timeout=10.0) as client:
            with pytest.raises(DistKerasError, match="no data"):
                next(client.shard())
    finally:
        server.stop()


def test_numpy_fit_sends_the_shards_directly_and_builds_no_dataframe(spark, monkeypatch):
    """No DataFrame of the arrays (so no task carrying them): the stage reads an empty range."""
    from distkeras import data
    from distkeras.trainers import DOWNPOUR

    def no_frame(*args, **kwargs):
        raise AssertionError("numpy input was turned into a DataFrame")

    plans = []
    frame_class = type(spark.range(1))
    map_in_arrow = frame_class.mapInArrow

    def spy(self, *args, **kwargs):
        plans.append(self._jdf.queryExecution().optimizedPlan().toString())
        return map_in_arrow(self, *args, **kwargs)

    monkeypatch.setattr(data, "numpy_to_frame", no_frame)
    monkeypatch.setattr(frame_class, "mapInArrow", spy)
    rng = np.random.default_rng(0)
    x = rng.random((300, 12))
    y = (x[:, 0] > 0.5).astype(np.int64)
    weights = np.where(y == 1, 2.0, 1.0)
    trainer = DOWNPOUR(mlp(input_dim=12, hidden=(8,), classes=2), num_workers=2)
    history = trainer.fit(x, y, sample_weight=weights, epochs=1, batch_size=16, verbose=0)
    assert history.epoch == [0]
    assert plans and all("Range" in p and "LocalRelation" not in p for p in plans)  # + warmup
    summaries = sorted(trainer.worker_summaries, key=lambda s: s["worker"])
    assert [s["rows"] for s in summaries] == [150, 150]
    assert all(s["spill_bytes"] > 0 for s in summaries)


def test_string_features_still_travel_as_a_dataframe(spark):
    from distkeras.inputs import columns
    from distkeras.inputs.arrays import ArrayData

    strings = ArrayData([np.array(["a b", "c"], dtype=object)], [np.array([0, 1])])
    numbers = ArrayData([np.zeros((2, 3))], [np.array([0, 1])])
    assert columns.from_arrays(spark, strings).frame is not None
    held = columns.from_arrays(spark, numbers)
    assert held.frame is None and held.widths() == {"__distkeras_x0": 3, "__distkeras_y0": 1}
    assert columns.with_frame(held, spark).frame.count() == 2
