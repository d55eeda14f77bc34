"""Synchronous trainers (EASGD, model averaging) and ensembles, end to end on MNIST."""

import keras
import numpy as np
import pytest
from pyspark.sql import functions as F

from distkeras import trainers
from distkeras.spark.facts import partition_keys

from .conftest import accuracy, mlp


@pytest.mark.slow
@pytest.mark.parametrize("cls", [trainers.EASGD, trainers.AveragingTrainer])
def test_synchronous_trainer_reaches_093(cls, mnist_frames, mnist):
    train_df, _ = mnist_frames
    (_, _), (x_test, y_test) = mnist
    model = mlp()
    trainer = cls(model, num_epoch=5, num_workers=2, seed=2)
    trainer.train(train_df, shuffle=True, verbose=0)
    assert accuracy(model, x_test, y_test) >= 0.93
    stats = trainer.parameter_server_stats
    assert stats["max_staleness"] == 0  # rounds: every commit sees the same center
    assert stats["num_updates"] == sum(s["commits"] for s in trainer.worker_summaries)
    assert stats["clock"] < stats["num_updates"]  # one clock tick per round of 2 commits


class SkewedAveraging(trainers.AveragingTrainer):
    """Puts about 95% of the rows on worker 0 and 5% on worker 1."""

    def _partition(self, frame):
        big, small = partition_keys(frame.sparkSession, 2)
        key = F.when(F.rand(seed=3) < 0.95, F.lit(big)).otherwise(F.lit(small)).cast("long")
        return frame.withColumn("k", key).repartition(2, "k").drop("k")


def test_partitions_of_very_different_sizes_finish(spark, mnist):
    from distkeras.data import numpy_to_frame

    (x, y), _ = mnist
    trainer = SkewedAveraging(
        mlp(hidden=(16,)), num_workers=2, communication_window=4, worker_timeout=120.0
    )
    frame = numpy_to_frame(spark, {"features": x[:3000], "label": y[:3000]})
    history = trainer.fit(frame, epochs=2, verbose=0)  # a frame: partitioned by _partition
    rows = sorted(s["rows"] for s in trainer.worker_summaries)
    assert rows[0] < 0.1 * rows[1] and sum(rows) == 3000
    assert history.epoch == [0, 1]
    assert np.isfinite(history.history["loss"]).all()


@pytest.mark.slow
def test_ensemble_beats_its_members_mean_and_survives_save(mnist, tmp_path):
    (x, y), (x_test, y_test) = mnist
    trainer = trainers.EnsembleTrainer(mlp(hidden=(64,)), num_ensembles=2, seed=4)
    trainer.fit(x, y, epochs=2, verbose=0)
    members = trainer.members
    assert len(members) == 2
    assert not np.array_equal(members[0].get_weights()[0], members[1].get_weights()[0])
    ensemble = trainer.ensemble_model()
    member_accuracies = [accuracy(m, x_test, y_test) for m in members]
    ensemble_accuracy = accuracy(ensemble, x_test, y_test)
    assert ensemble_accuracy >= np.mean(member_accuracies) - 1e-9  # float rounding of the mean
    assert all(s["rows"] == 8000 for s in trainer.worker_summaries)  # each saw all rows
    path = tmp_path / "ensemble.keras"
    ensemble.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_allclose(
        restored.predict(x_test[:50], verbose=0), ensemble.predict(x_test[:50], verbose=0)
    )


def test_ensemble_train_returns_the_members(mnist_frames):
    train_df, _ = mnist_frames
    trainer = trainers.EnsembleTrainer(mlp(hidden=(8,)), num_ensembles=2, num_epoch=1)
    members = trainer.train(train_df.limit(500), verbose=0)
    assert [m.name for m in members] == ["member_0", "member_1"]
    with pytest.raises(TypeError, match="num_ensembles"):
        trainers.EnsembleTrainer(mlp(), num_workers=2)


def test_a_frame_with_one_partition_per_worker_is_not_shuffled(spark):
    trainer = trainers.DOWNPOUR(mlp(hidden=(8,)), num_workers=2)
    frame = spark.range(0, 10, 1, 2)
    assert trainer._partition(frame) is frame
    assert trainer._partition(spark.range(0, 10, 1, 3)).rdd.getNumPartitions() == 2
