"""Each argument of `fit` has its Keras effect in a distributed run; bad data fails early.

Small models, one or two workers, a few hundred rows: each test shows an effect (weights
left unchanged, epochs trained, validation rows held out), not only acceptance.
"""

from __future__ import annotations

import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

from distkeras import inputs
from distkeras.inputs import FitOptions
from distkeras.ml import KerasEstimator
from distkeras.trainers import ADAG, SingleTrainer
from tests.conftest import jobs_started


def small_model(classes=3):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(classes, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(0)
    x = rng.random((200, 4), dtype=np.float32)
    return x, (x[:, 0] * 3).astype("int64").clip(0, 2)


def unchanged(before, model) -> bool:
    return all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


@pytest.mark.parametrize(
    "zero, some",
    [
        ({"sample_weight": np.zeros(200)}, {"sample_weight": np.ones(200)}),
        ({"class_weight": {0: 0.0, 1: 0.0, 2: 0.0}}, {"class_weight": {0: 1.0, 1: 0.0}}),
    ],
    ids=["sample_weight", "class_weight"],
)
def test_zero_weights_leave_the_model_unchanged(spark, rows, zero, some):
    x, y = rows
    model = small_model()
    before = model.get_weights()
    ADAG(model, num_workers=2).fit(x, y, epochs=1, verbose=0, **zero)
    assert unchanged(before, model)
    ADAG(model, num_workers=2).fit(x, y, epochs=1, verbose=0, **some)  # the positive control
    assert not unchanged(before, model)


def test_initial_epoch_and_validation_freq(spark, rows):
    x, y = rows
    trainer = SingleTrainer(small_model())
    history = trainer.fit(
        x, y, epochs=5, initial_epoch=3, validation_data=(x[:20], y[:20]), validation_freq=2
    )
    assert history.epoch == [3, 4]  # two epochs, numbered as in Keras
    assert len(history.history["loss"]) == 2
    assert len(history.history["val_loss"]) == 1  # after epoch 4 (1-based), not 5


def test_steps_per_epoch_is_shared_by_the_workers(spark, rows):
    x, y = rows
    trainer = ADAG(small_model(), num_workers=2)
    trainer.fit(x, y, batch_size=8, epochs=2, steps_per_epoch=4, shuffle=False, verbose=0)
    assert sorted(s["samples"] for s in trainer.worker_summaries) == [32, 32]  # 2 x 2 x 8


def test_validation_split_holds_out_the_last_tenth(spark, rows):
    x, y = rows
    prepared = inputs.prepare(
        small_model(), x, y, options=FitOptions(epochs=1, validation_split=0.1), spark=lambda: spark
    )
    np.testing.assert_array_equal(prepared.validation.y, y[180:])
    np.testing.assert_array_equal(prepared.train.held["__distkeras_y0"], y[:180])


class ValidationBatches(keras.utils.PyDataset):
    """`x`, `y` in two batches."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    def __len__(self):
        return 2

    def __getitem__(self, index):
        rows = slice(index * len(self.x) // 2, (index + 1) * len(self.x) // 2)
        return self.x[rows], self.y[rows]


@pytest.mark.parametrize("form", ["triple", "dataset", "pydataset"])
def test_validation_data_in_each_form_overrides_validation_split(spark, rows, form):
    """(x, y, sample_weight), a dataset and a PyDataset are the validation rows, and every
    training row trains: validation_split is ignored, as in Keras."""
    x, y = rows
    x_val, y_val, w_val = x[:30] + 1.0, y[:30], np.linspace(0.0, 1.0, 30, dtype=np.float32)
    validation_data = {
        "triple": (x_val, y_val, w_val),
        "dataset": tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(8),
        "pydataset": ValidationBatches(x_val, y_val),
    }[form]
    prepared = inputs.prepare(
        small_model(),
        x,
        y,
        options=FitOptions(epochs=1, validation_split=0.5),
        validation_data=validation_data,
        spark=lambda: spark,
    )
    np.testing.assert_array_equal(prepared.train.held["__distkeras_y0"], y)  # all 200 rows
    np.testing.assert_array_equal(np.asarray(prepared.validation.x), x_val)
    np.testing.assert_array_equal(np.asarray(prepared.validation.y), y_val)
    if form == "triple":
        np.testing.assert_array_equal(prepared.validation.sample_weight, w_val)


def test_per_output_sample_weights_are_refused_naming_the_argument(spark, rows):
    x, y = rows
    inputs_ = keras.Input((4,))
    model = keras.Model(
        inputs_,
        [
            keras.layers.Dense(3, activation="softmax", name="a")(inputs_),
            keras.layers.Dense(3, activation="softmax", name="b")(inputs_),
        ],
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    trainer = SingleTrainer(model)
    weights = {"a": np.ones(200), "b": np.ones(200)}
    with pytest.raises(TypeError, match="Expected `sample_weight` to be one weight per row"):
        trainer.fit(x, {"a": y, "b": y}, sample_weight=weights, verbose=0)
    history = trainer.fit(x, {"a": y, "b": y}, sample_weight=np.ones(200), verbose=0)
    assert history.epoch == [0]  # one weight per row: accepted


def test_validation_steps_and_batch_size():
    x, y = np.random.default_rng(1).random((10, 4)), np.arange(10) % 3
    model = small_model()
    validation = inputs.ValidationSet(x, y, batch_size=2, steps=1)
    first_batch = model.evaluate(x[:2], y[:2], verbose=0, return_dict=True)
    assert validation.evaluate(model)["val_loss"] == pytest.approx(first_batch["loss"])


def test_dataframe_weights_column_and_estimator_weight_col(spark, rows):
    from distkeras.data import numpy_to_frame

    x, y = rows
    frame = numpy_to_frame(
        spark, {"features": x, "label": y, "w": np.zeros(200), "one": np.ones(200)}
    )
    model = small_model()
    before = model.get_weights()
    SingleTrainer(model, sample_weight_col="w").train(frame)
    assert unchanged(before, model)
    fitted = KerasEstimator(model=model, trainer="single", weightCol="w").fit(frame)
    assert unchanged(before, fitted.getModel())
    # The positive controls: the same column read, with weights of one, trains.
    fitted = KerasEstimator(model=model, trainer="single", weightCol="one").fit(frame)
    assert not unchanged(before, fitted.getModel())
    SingleTrainer(model, sample_weight_col="one").train(frame)
    assert not unchanged(before, model)


def test_bad_data_is_refused_before_any_spark_job(spark, rows):
    x, y = rows
    trainer = ADAG(small_model(), num_workers=2)
    cases = {
        "class indices from 0 to 3.*3 classes.*indices 0 to 2": (x, np.append(y[:-1], 3)),
        "`y` has 1 NaN": (x, np.append(y[:-1], np.nan)),
        "`x` has keys.*unknown": ({"pixels": x}, y),
        "infinite dataset": (tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat(), None),
        "`x` has rows of different lengths": ([[0.1] * 4] * 199 + [[0.1] * 3], y),
        "`validation_data y` holds class indices from 0 to 9": (x, y),
    }

    def bad_fits():
        for message, (features, labels) in cases.items():
            validation = (x[:10], np.arange(10)) if "validation_data" in message else None
            with pytest.raises(ValueError, match=message):
                trainer.fit(features, labels, validation_data=validation, verbose=0)
        with pytest.raises(TypeError, match="unexpected keyword argument 'validation_splt'"):
            trainer.fit(x, y, validation_splt=0.1)

    assert jobs_started(spark, bad_fits) == []


def test_the_job_counter_sees_jobs_of_other_threads_and_groups(spark):
    """The positive control of `jobs_started`: the trainers start their jobs in background
    threads under their own job group, which a counter of the caller's group cannot see."""

    def in_another_thread():
        def count():
            spark.sparkContext.setJobGroup("another-group", "a background job")
            spark.sparkContext.parallelize([1, 2], 2).count()

        thread = threading.Thread(target=count)
        thread.start()
        thread.join(60)
        assert not thread.is_alive()

    assert len(jobs_started(spark, in_another_thread)) == 1
    assert jobs_started(spark, lambda: None) == []


def test_dataframe_labels_are_checked_by_one_aggregate(spark):
    df = spark.createDataFrame([([0.1] * 4, 1), ([0.2] * 4, 7)], ["features", "label"])
    with pytest.raises(ValueError, match="Label column `label`.*from 1 to 7.*indices 0 to 2"):
        SingleTrainer(small_model()).train(df)
    with pytest.raises(ValueError, match="validation_split.*randomSplit"):
        SingleTrainer(small_model()).fit(df, validation_split=0.1)
    with pytest.raises(TypeError, match="sample_weight_col"):
        SingleTrainer(small_model()).fit(df, sample_weight=np.ones(2))
    with pytest.raises(TypeError, match="`validation_data` is a DataFrame but `x` is not"):
        SingleTrainer(small_model()).fit(np.zeros((2, 4)), np.array([0, 1]), validation_data=df)
