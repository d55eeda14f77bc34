"""Tests of distkeras.predictors and distkeras.inference: ModelPredictor, evaluate, the
per-process model cache, prediction rules and bad input."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from distkeras import inference
from distkeras.data import numpy_to_frame
from distkeras.executor import inference as executor_inference
from distkeras.executor.model_cache import MODELS
from distkeras.predictors import ModelPredictor, evaluate
from tests.conftest import mlp


@pytest.fixture(scope="module")
def small(spark):
    """300 rows of 12 features, a binary label, in 3 partitions."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 12)).astype(np.float32)
    y = (x[:, 0] - x[:, 3] > 0).astype(np.int64)
    df = numpy_to_frame(spark, {"features": x, "label": y}).repartition(3).cache()
    arrays = df.select("features", "label").collect()
    x = np.array([row["features"] for row in arrays], dtype=np.float32)
    y = np.array([row["label"] for row in arrays])
    return df, x, y


@pytest.fixture
def small_batches(spark):
    """Arrow batches of 64 rows, so that a partition spans several batches."""
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    previous = spark.conf.get(key)
    spark.conf.set(key, "64")
    yield
    spark.conf.set(key, previous)


def classifier(units=2, activation="softmax", loss="sparse_categorical_crossentropy", metrics=()):
    model = keras.Sequential(
        [
            keras.Input((12,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(units, activation=activation),
        ]
    )
    if loss:
        model.compile("adam", loss, metrics=list(metrics))
    return model


def vectors(df, column):
    return np.array([row[column].toArray() for row in df.select(column).collect()])


def test_predictor_matches_model_predict_over_several_batches(small, small_batches):
    df, x, _ = small
    model = classifier()
    out = ModelPredictor(model, batch_size=50).predict(df)
    assert out.columns == ["features", "label", "prediction"]
    np.testing.assert_allclose(vectors(out, "prediction"), model.predict(x, verbose=0), atol=1e-6)


def test_predictor_takes_ml_vectors_and_reshapes_to_the_input(spark, mnist):
    from pyspark.ml.functions import array_to_vector

    (_, _), (x, _) = mnist
    x = x[:200]
    model = keras.Sequential(
        [keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(10, "softmax")]
    )  # not compiled: prediction needs no compile
    df = numpy_to_frame(spark, {"pixels": x}).select(array_to_vector("pixels").alias("pixels"))
    out = ModelPredictor(model, features_col="pixels", output_col="probs").predict(df)
    expected = model.predict(x.reshape(-1, 28, 28), verbose=0)
    np.testing.assert_allclose(vectors(out, "probs"), expected, atol=1e-6)


def test_predictor_with_two_inputs(session):
    a_in, b_in = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    joined = keras.layers.Concatenate()([a_in, b_in])
    model = keras.Model([a_in, b_in], keras.layers.Dense(1)(joined))
    rng = np.random.default_rng(1)
    a, b = rng.random((40, 3), np.float32), rng.random((40, 2), np.float32)
    df = numpy_to_frame(session, {"a": a, "b": b})
    out = ModelPredictor(model, features_col=["a", "b"], output_col="y").predict(df)
    np.testing.assert_allclose(vectors(out, "y"), model.predict([a, b], verbose=0), atol=1e-6)


def test_predictor_on_an_empty_frame(small):
    df, _, _ = small
    assert ModelPredictor(classifier()).predict(df.limit(0)).count() == 0


def test_evaluate_equals_keras_evaluate(small, small_batches):
    df, x, y = small
    model = classifier(1, "sigmoid", "binary_crossentropy", ["accuracy", keras.metrics.AUC()])
    expected = model.evaluate(x, y, verbose=0, return_dict=True)
    result = evaluate(model, df, batch_size=32)
    assert set(result) == set(expected)
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, abs=1e-4), name


def test_evaluate_rejects_an_uncompiled_model_and_bad_columns(small):
    df, _, _ = small
    with pytest.raises(ValueError, match="not compiled"):
        evaluate(classifier(loss=None), df)
    with pytest.raises(ValueError, match="`target`.*label_col"):
        evaluate(classifier(), df, label_col="target")


def test_model_is_built_once_per_process(monkeypatch, small):
    import pyarrow as pa

    _, x, _ = small
    model = classifier()
    plan = inference.make_plan(model, ["features"], batch_size=16)
    builds = []
    original = executor_inference._build
    monkeypatch.setattr(executor_inference, "_build", lambda p: builds.append(p.key) or original(p))
    MODELS.clear()
    values = pa.array(list(x[:20]), type=pa.list_(pa.float32()))
    features = pa.StructArray.from_arrays([values], names=["features"])
    for _ in range(3):
        result = inference.predict_arrays(plan, inference.ARGMAX, features)
    assert builds == [plan.key]
    expected = model.predict(x[:20], verbose=0)
    outputs = np.array(result.field("output").to_pylist())
    np.testing.assert_allclose(outputs, expected, atol=1e-6)
    np.testing.assert_array_equal(result.field("prediction"), expected.argmax(axis=1))
    other = inference.make_plan(classifier(), ["features"], batch_size=16)
    inference.predict_arrays(other, inference.ARGMAX, features)
    assert builds == [plan.key, other.key]
    MODELS.clear()


def test_cached_models_are_frozen_out_of_gc_and_evicted_ones_are_freed():
    import gc
    import weakref

    MODELS.clear()
    gc.unfreeze()  # whatever an earlier test froze: the count below is this cache's
    try:
        plans = [inference.make_plan(classifier(), ["features"], 8) for _ in range(5)]
        assert gc.get_freeze_count() == 0
        first = weakref.ref(executor_inference.cached_model(plans[0]))
        assert gc.get_freeze_count() > 0  # PySpark's per-task gc.collect() skips them
        for plan in plans[1:]:
            executor_inference.cached_model(plan)
        gc.collect()
        assert first() is None  # pushed out of the cache of 4, and not kept by the freeze
    finally:
        MODELS.clear()
        gc.unfreeze()


def test_same_weights_share_a_fingerprint():
    model = classifier()
    first = inference.make_plan(model, ["features"], 8)
    assert inference.make_plan(model, ["features"], 8).key == first.key
    model.set_weights([w + 1 for w in model.get_weights()])
    assert inference.make_plan(model, ["features"], 8).key != first.key


@pytest.mark.parametrize(
    ("model", "rule"),
    [
        (lambda: classifier(3), inference.ARGMAX),
        (lambda: classifier(1, "sigmoid", "binary_crossentropy"), inference.THRESHOLD),
        (lambda: classifier(1, "sigmoid", keras.losses.BinaryCrossentropy()), inference.THRESHOLD),
        (lambda: classifier(1, "sigmoid", keras.losses.binary_crossentropy), inference.THRESHOLD),
        (lambda: classifier(1, None, "mse"), inference.VALUE),
        (lambda: classifier(1, "sigmoid", None), inference.VALUE),
    ],
)
def test_prediction_rule(model, rule):
    assert inference.prediction_rule(model()) == rule


def test_predictor_bad_input(small, spark):
    df, _, _ = small
    with pytest.raises(ValueError, match="`pixels`.*features_col"):
        ModelPredictor(classifier(), features_col="pixels").predict(df)
    with pytest.raises(TypeError, match="`features`.*numeric"):
        ModelPredictor(classifier()).predict(df.selectExpr("CAST(features AS STRING) features"))
    with pytest.raises(ValueError, match="Feature column `features` has 12 values.*784"):
        ModelPredictor(mlp()).predict(df)
    with pytest.raises(ValueError, match="`label` already exists"):
        ModelPredictor(classifier(), output_col="label").predict(df)
    with pytest.raises(TypeError, match="keras.Model"):
        ModelPredictor("model")
    with pytest.raises(ValueError, match="batch_size"):
        ModelPredictor(classifier(), batch_size=0)
    two = keras.Model(
        *(lambda i: (i, [keras.layers.Dense(1)(i), keras.layers.Dense(2)(i)]))(keras.Input((12,)))
    )
    with pytest.raises(ValueError, match="one output"):
        ModelPredictor(two).predict(df)


def test_a_width_change_inside_the_data_names_the_column(session):
    """Rows of another width after the first one fail in the executor, naming the column."""
    from pyspark.errors import PythonException

    df = session.createDataFrame([([1.0] * 12,)] + [([1.0] * 5,)] * 3, "features array<float>")
    with pytest.raises(PythonException, match="`features`"):
        ModelPredictor(classifier()).predict(df.coalesce(1)).collect()


def test_packed_features_predict_like_arrays(spark, small):
    from distkeras.data import pack_column

    df, x, _ = small
    model = classifier()
    packed = pack_column(df, "features")
    assert dict(packed.dtypes)["features"] == "binary"
    out = ModelPredictor(model, batch_size=64).predict(packed)
    np.testing.assert_allclose(vectors(out, "prediction"), model.predict(x, verbose=0), atol=1e-6)
    with pytest.raises(ValueError, match=r"`features` has 12 values per row.*shape \(784,\)"):
        ModelPredictor(mlp()).predict(packed)


def test_predictor_reads_strings_for_a_model_that_takes_them(spark):
    """A TextVectorization model scores a string column, vocabulary included."""
    from tests.test_keras_examples import TEXTS, text_classifier

    model = text_classifier()
    df = spark.createDataFrame([(str(text),) for text in TEXTS], "text string")
    out = ModelPredictor(model, features_col="text").predict(df)
    expected = model.predict(TEXTS, verbose=0)
    np.testing.assert_allclose(vectors(out, "prediction"), expected, atol=1e-6)
    with pytest.raises(TypeError, match="`text` holds strings.*float32"):
        ModelPredictor(classifier(), features_col="text").predict(df)


def test_evaluate_reads_strings_for_a_model_that_takes_them(spark):
    from tests.test_keras_examples import TEXTS, text_classifier

    model = text_classifier()
    labels = [1, 1, 1, 0, 0, 0]
    df = spark.createDataFrame(
        [(str(text), label) for text, label in zip(TEXTS, labels)], "text string, label long"
    )
    expected = model.evaluate(TEXTS, np.array(labels), verbose=0, return_dict=True)
    got = evaluate(model, df, features_col="text", label_col="label")
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-5), name
