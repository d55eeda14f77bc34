"""Model zoo: `model.fit` and the default trainer on each model family, side by side.

scikit-learn's digits (1,347 train rows, 450 test), batch 32, `--epochs` epochs, 2 workers
on `local[2]`, executors warmed up by one fit of another architecture first. Per family:
the means of `--pairs` paired runs (each pair starts from the same initial weights) of
`model.fit`'s and the default trainer's test accuracy, and the end-to-end seconds of the
first fit of the family (a new architecture in a warm session: the workers build and trace
it) next to `model.fit`'s first fit; later pairs reuse the workers' built model. Then the
first `fit` of the process's Spark session against the 8 s target is printed only when
`--first-fit` is given, in a fresh process (it must be the session's first job).

Usage: .venv/bin/python bench/model_zoo.py [--epochs 8] [--pairs 3] [--families mlp,gru]
    [--first-fit] [--algorithm ADAG] [--workers 2] [--window 5] [--worker-lr 1.41e-3]

`--worker-lr` gives the workers Adam at that rate instead of the model's Adam(1e-3)
(`worker_optimizer`, which DOWNPOUR does not scale): how the default's rate scale was
chosen, see docs/performance.md, "Model zoo". `--workers N` runs on `local[N]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

TIME_TARGET = 1.2  # the trainer's first fit of a new architecture / model.fit's
FIRST_FIT_TARGET = 8.0  # seconds: the first fit of a session the user built


def mlp(keras):
    return keras.Sequential(
        [keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10, activation="softmax")]
    )


def bn_convnet(keras):
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((64,)),
            layers.Reshape((8, 8, 1)),
            layers.Conv2D(16, 3, padding="same", activation="relu"),
            layers.BatchNormalization(),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dropout(0.25),
            layers.Dense(10, activation="softmax"),
        ]
    )


def gru(keras):
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Reshape((8, 8)),
            keras.layers.GRU(32),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def embedding(keras):
    """Token ids: each pixel's ink level (0-16) is a token, embedded and averaged."""
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Rescaling(16.0),
            keras.layers.Embedding(17, 16),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def subclassed(keras):
    class Classifier(keras.Model):  # defined here: the executors cannot import it
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.hidden = keras.layers.Dense(64, activation="relu")
            self.out = keras.layers.Dense(10, activation="softmax")

        def call(self, inputs):
            return self.out(self.hidden(inputs))

    return Classifier()


def custom_train_step(keras):
    class ClippedStep(keras.Sequential):  # "Customizing what happens in fit()"
        def train_step(self, data):
            x, y = data
            import tensorflow as tf

            with tf.GradientTape() as tape:
                y_pred = self(x, training=True)
                loss = self.compute_loss(x=x, y=y, y_pred=y_pred)
            grads = tape.gradient(loss, self.trainable_variables)
            grads = [tf.clip_by_norm(g, 1.0) for g in grads]
            self.optimizer.apply(grads, self.trainable_variables)
            for metric in self.metrics:
                if metric.name == "loss":
                    metric.update_state(loss)
                else:
                    metric.update_state(y, y_pred)
            return {m.name: m.result() for m in self.metrics}

    return ClippedStep(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


FAMILIES = {
    "mlp": mlp,
    "bn_convnet": bn_convnet,
    "gru": gru,
    "embedding": embedding,
    "subclassed": subclassed,
    "custom_train_step": custom_train_step,
}


def compiled(family, seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    model = FAMILIES[family](keras)
    model.compile(
        keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    return model


def accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, batch_size=256, verbose=0), -1) == y))


def pair(family: str, seed: int, digits, epochs: int, trainer_args: dict | None = None) -> dict:
    """`model.fit` and a trainer (the default, or `trainer_args`: algorithm, num_workers,
    communication_window) from the same initial weights."""
    from distkeras.algorithms import registry
    from distkeras.trainers import make_trainer

    (x, y), (x_test, y_test) = digits
    reference = compiled(family, seed)
    reference.build((None, 64))
    start = [w.copy() for w in reference.get_weights()]
    started = time.perf_counter()
    reference.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    fit_seconds = time.perf_counter() - started

    model = compiled(family, seed)
    model.build((None, 64))
    model.set_weights(start)
    args = {"algorithm": registry.DEFAULT, "num_workers": 2, **(trainer_args or {})}
    trainer = make_trainer(args.pop("algorithm"), model, seed=seed, **args)
    started = time.perf_counter()
    trainer.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    trainer_seconds = time.perf_counter() - started
    return {
        "fit": accuracy(reference, x_test, y_test),
        "trainer": accuracy(model, x_test, y_test),
        "fit_s": fit_seconds,
        "trainer_s": trainer_seconds,
    }


def first_session_fit(digits) -> float:
    """Seconds of the first fit in a session built the way a user builds one."""
    from pyspark.sql import SparkSession

    from distkeras.algorithms import registry
    from distkeras.trainers import make_trainer

    (x, y), _ = digits
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # as in an activated virtualenv
    SparkSession.builder.master("local[2]").getOrCreate()
    trainer = make_trainer(registry.DEFAULT, compiled("mlp", 0), num_workers=2, seed=0)
    started = time.perf_counter()
    trainer.fit(x[:512], y[:512], epochs=1, batch_size=32, verbose=0)
    return time.perf_counter() - started


def with_worker_rate(trainer_args: dict, rate: float | None) -> dict:
    """`trainer_args`, with a fresh Adam at `rate` for the workers when one is given."""
    if rate is None:
        return trainer_args
    import keras

    return {**trainer_args, "worker_optimizer": keras.optimizers.Adam(rate)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--first-fit", action="store_true")
    parser.add_argument("--algorithm", default=None, help="instead of the default trainer")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--window", type=int, default=None, help="communication_window")
    parser.add_argument("--worker-lr", type=float, default=None, help="the workers' Adam rate")
    args = parser.parse_args()

    from distkeras.datasets import load_digits

    digits = load_digits()
    if args.first_fit:
        seconds = first_session_fit(digits)
        print(f"first fit of a user-built session: {seconds:.1f} s (target {FIRST_FIT_TARGET} s)")
    else:
        from distkeras.spark import get_spark_session

        get_spark_session(f"local[{max(2, args.workers)}]")
    pair("mlp", 99, digits, 1)  # warm: the executors import TensorFlow
    print(
        f"{'family':<18} {'fit acc':>8} {'trainer':>8} {'diff':>6} {'fit s':>6} "
        f"{'trainer s':>9} {'ratio':>6} {'later s':>8}"
    )
    trainer_args = {"num_workers": args.workers, "communication_window": args.window}
    if args.algorithm:
        trainer_args["algorithm"] = args.algorithm
    for family in args.families.split(","):
        runs = [
            pair(family, seed, digits, args.epochs, with_worker_rate(trainer_args, args.worker_lr))
            for seed in range(args.pairs)
        ]
        fit_acc = statistics.mean(r["fit"] for r in runs)
        trainer_acc = statistics.mean(r["trainer"] for r in runs)
        first = runs[0]
        later = statistics.median(r["trainer_s"] for r in runs[1:]) if len(runs) > 1 else 0.0
        ratio = first["trainer_s"] / first["fit_s"]
        print(
            f"{family:<18} {fit_acc:8.4f} {trainer_acc:8.4f} {100 * (trainer_acc - fit_acc):+6.2f} "
            f"{first['fit_s']:6.1f} {first['trainer_s']:9.1f} {ratio:6.2f} {later:8.1f}"
            f"  {'ok' if ratio <= TIME_TARGET else 'over'} time, "
            f"{'ok' if trainer_acc >= fit_acc - 0.01 else 'under'} accuracy",
            flush=True,
        )
        diffs = " ".join(f"{100 * (r['trainer'] - r['fit']):+.1f}" for r in runs)
        print(f"{'':<18} pairs' differences (points): {diffs}", flush=True)


if __name__ == "__main__":
    main()
