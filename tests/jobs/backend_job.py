"""The core paths of distkeras on the Keras backend given by `--backend`.

Keras fixes its backend when it is imported, so tests/test_backends.py runs this script in a
process of its own and reads the one JSON line it prints: the backend of the driver and of
the workers, the default trainer's and a synchronous trainer's test accuracy on the digits,
what a callback and `validation_data` saw, and a Spark ML pipeline's predictions before and
after a save and load. The script builds its local[2] session first and only then picks its
backend (as a notebook may): the executors must follow the driver, not the environment
their JVM was started with.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

from distkeras import predictors
from distkeras.algorithms import registry
from distkeras.data import numpy_to_frame
from distkeras.datasets import load_digits
from distkeras.spark.session import get_spark_session
from distkeras.trainers import AveragingTrainer, make_trainer


def mlp():
    import keras

    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    return model


def accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))


def seen_callback():
    """A callback that counts batch hooks and keeps the epoch logs' keys."""
    import keras

    class Seen(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.batches = 0
            self.keys = set()

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1

        def on_epoch_end(self, epoch, logs=None):
            self.keys.update(logs or {})

    return Seen()


def windows(digits) -> dict:
    """This backend's window runner: windows of 2 + 2 batches train as one of 4 (the
    optimizer's state carries over), and a window's smaller last batch is one more step."""
    import keras

    from distkeras.executor.backend import window_runner

    (x, y), _ = digits
    models = [mlp() for _ in range(2)]
    models[1].set_weights(models[0].get_weights())
    runners = []
    for model in models:
        model.optimizer.build(model.trainable_variables)
        runners.append(window_runner(keras.backend.backend(), model, 32))
    steps = [runners[0].run(x[:128], y[:128]), runners[1].run(x[:64], y[:64])]
    steps.append(runners[1].run(x[64:128], y[64:128]))
    difference = max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(models[0].get_weights(), models[1].get_weights())
    )
    steps.append(runners[1].run(x[:70], y[:70]))  # its compiled window of 2, and one step
    return {
        "window_steps": steps,
        "window_difference": difference,
        "window_iterations": int(models[1].optimizer.iterations.numpy()),
        "window_logs": sorted(runners[1].logs()),
    }


def default_trainer(digits, epochs: int) -> dict:
    import keras

    (x, y), (x_test, y_test) = digits
    keras.utils.set_random_seed(0)
    model = mlp()
    trainer = make_trainer(registry.DEFAULT, model, num_workers=2, seed=0)
    trainer.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    pids = sorted({summary["pid"] for summary in trainer.worker_summaries})
    return {"default_accuracy": accuracy(model, x_test, y_test), "worker_pids": pids}


def synchronous_trainer(digits, epochs: int) -> dict:
    """Averaging with validation_data, a callback and sample weights (class 0 weighs 0)."""
    import keras

    (x, y), (x_test, y_test) = digits
    keras.utils.set_random_seed(1)
    model = mlp()
    seen = seen_callback()
    trainer = AveragingTrainer(model, num_workers=2, seed=1)
    history = trainer.fit(
        x,
        y,
        epochs=epochs,
        batch_size=32,
        verbose=0,
        sample_weight=(y != 0).astype(np.float32),
        validation_data=(x_test, y_test),
        callbacks=[seen],
    )
    predicted = np.argmax(model.predict(x_test, verbose=0), axis=1)
    return {
        "sync_accuracy": float(np.mean(predicted[y_test != 0] == y_test[y_test != 0])),
        "sync_zero_recall": float(np.mean(predicted[y_test == 0] == 0)),
        "sync_epochs": history.epoch,
        "sync_logs": sorted(seen.keys),
        "sync_batches": seen.batches,
    }


def pipeline(spark, digits, epochs: int, path: str) -> dict:
    """KerasEstimator in a Pipeline, KerasModel.transform, then the pipeline saved and loaded."""
    import keras
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.functions import array_to_vector

    from distkeras.ml import KerasEstimator

    (x, y), (x_test, y_test) = digits
    train = numpy_to_frame(spark, {"f": x, "label": y})
    test = numpy_to_frame(spark, {"f": x_test, "label": y_test})
    vectors = [df.select(array_to_vector("f").alias("features"), "label") for df in (train, test)]
    keras.utils.set_random_seed(2)
    estimator = KerasEstimator(model=mlp(), epochs=epochs, numWorkers=2, trainerParams={"seed": 2})
    fitted = Pipeline(stages=[estimator]).fit(vectors[0])
    before = [r.prediction for r in fitted.transform(vectors[1]).orderBy("label").collect()]
    fitted.write().overwrite().save(path)
    loaded = PipelineModel.load(path)
    after = [r.prediction for r in loaded.transform(vectors[1]).orderBy("label").collect()]
    metrics = predictors.evaluate(loaded.stages[-1].getModel(), vectors[1])
    labels = [r.label for r in vectors[1].orderBy("label").collect()]
    return {
        "transform_accuracy": float(np.mean(np.asarray(before) == np.asarray(labels))),
        "loaded_same": before == after,
        "evaluate_accuracy": metrics["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", required=True, help="the driver's Keras backend")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--path", required=True, help="a folder for the saved pipeline")
    args = parser.parse_args()
    started = time.monotonic()
    spark = get_spark_session("local[2]", app_name="distkeras-backend-job")
    os.environ["KERAS_BACKEND"] = args.backend  # after the session: its executors run another
    import keras

    digits = load_digits()
    result = {"driver_backend": keras.backend.backend()}
    seconds = {"session": time.monotonic() - started}
    for name, check in (
        ("windows", lambda: windows(digits)),
        ("default", lambda: default_trainer(digits, args.epochs)),
        ("sync", lambda: synchronous_trainer(digits, args.epochs)),
        ("pipeline", lambda: pipeline(spark, digits, args.epochs, args.path)),
    ):
        started = time.monotonic()
        result.update(check())
        seconds[name] = round(time.monotonic() - started, 1)
    result["seconds"] = seconds
    result["worker_backend"] = (
        spark.range(0, 1, 1, 1).mapInArrow(_worker_backend, "backend string").collect()[0].backend
    )
    spark.stop()
    sys.stdout.write(json.dumps(result) + "\n")


def _worker_backend(batches):
    import keras
    import pyarrow as pa

    for _ in batches:
        pass
    yield pa.RecordBatch.from_pylist([{"backend": keras.backend.backend()}])


if __name__ == "__main__":
    main()
