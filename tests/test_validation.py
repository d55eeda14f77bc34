"""Bad input is refused before any Spark job, with the argument and the value in the message."""

import keras
import numpy as np
import pytest

from distkeras.trainers import SingleTrainer

from .conftest import mlp


@pytest.fixture(scope="module")
def frame(spark):
    rows = [([0.1] * 784, 1, "a"), ([0.2] * 784, 2, "b")]
    return spark.createDataFrame(rows, ["features", "label", "text"])


def test_missing_column_lists_available_ones(frame):
    trainer = SingleTrainer(mlp(), features_col="pixels")
    with pytest.raises(ValueError, match=r"`pixels`.*Available columns: \['features', 'label'"):
        trainer.train(frame)


def test_non_numeric_column(frame):
    trainer = SingleTrainer(mlp(), label_col="text")
    with pytest.raises(TypeError, match="`text`.*must be numeric.*string"):
        trainer.train(frame)


def test_feature_width_must_fit_the_model(spark):
    df = spark.createDataFrame([([0.5] * 10, 1)], ["features", "label"])
    with pytest.raises(ValueError, match="`features` has 10 values per row.*784"):
        SingleTrainer(mlp()).train(df)


def test_labels_must_fit_the_output(spark):
    df = spark.createDataFrame([([0.5] * 784, [0.0, 1.0, 0.0])], ["features", "label"])
    with pytest.raises(ValueError, match="`label` has 3 values per row.*10 units"):
        SingleTrainer(mlp()).train(df)


def test_empty_dataframe(frame):
    with pytest.raises(ValueError, match="empty"):
        SingleTrainer(mlp()).train(frame.limit(0))


def test_uncompiled_model_without_loss():
    with pytest.raises(ValueError, match="not compiled.*`optimizer` and `loss`"):
        SingleTrainer(mlp(compile=False))


@pytest.mark.parametrize("argument", ["batch_size", "num_epoch"])
@pytest.mark.parametrize("value", [0, -3])
def test_counts_must_be_positive(argument, value):
    with pytest.raises(ValueError, match=f"`{argument}`.*Received: {argument}={value}"):
        SingleTrainer(mlp(), **{argument: value})


def test_num_workers_must_be_positive():
    from distkeras.trainers import ADAG

    with pytest.raises(ValueError, match="num_workers=0"):
        ADAG(mlp(), num_workers=0)


def test_counts_must_be_ints():
    with pytest.raises(TypeError, match="batch_size='32'"):
        SingleTrainer(mlp(), batch_size="32")


def test_not_a_keras_model():
    with pytest.raises(TypeError, match="keras.Model.*Received: keras_model=.*list"):
        SingleTrainer([keras.layers.Dense(3)])


def test_fit_needs_labels_for_numpy_features():
    with pytest.raises(ValueError, match="`y` is required"):
        SingleTrainer(mlp()).fit(np.zeros((4, 784), "float32"))


def test_fit_refuses_y_beside_a_dataframe(frame):
    with pytest.raises(TypeError, match="`y` must be None"):
        SingleTrainer(mlp()).fit(frame, np.zeros(2))


def test_too_few_task_slots(frame):
    from distkeras.trainers import DOWNPOUR

    with pytest.raises(RuntimeError, match="num_workers=3.*only 2 tasks"):
        DOWNPOUR(mlp(), num_workers=3).train(frame)


def test_column_counts_must_match_inputs_and_outputs(spark):
    df = spark.createDataFrame([([0.5] * 784, [0.1] * 3, 1, 2)], ["features", "extra", "a", "b"])
    with pytest.raises(ValueError, match=r"1 inputs but 2 feature columns.*'features', 'extra'"):
        SingleTrainer(mlp(), features_col=["features", "extra"], label_col="a").train(df)
    with pytest.raises(ValueError, match=r"1 outputs but 2 label columns.*label_col=\['a', 'b'\]"):
        SingleTrainer(mlp(), label_col=["a", "b"]).train(df)


def test_packed_rows_must_be_whole_float32_values(spark):
    df = spark.createDataFrame([(bytearray(10), 1)], "features binary, label long")
    with pytest.raises(ValueError, match="`features` is binary.*Received: rows of 10 bytes"):
        SingleTrainer(mlp()).train(df)
