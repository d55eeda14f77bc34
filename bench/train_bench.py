"""Training throughput of every trainer next to plain `keras.Model.fit`, in one run.

The test's model (MLP 784-256-128-10, batch 32) on the MNIST files (8,000 train rows,
2,000 test rows), 5 epochs: `fit` in this process, then each trainer with 2 workers on
`local[2]`. Executors are warmed up first (one tiny run, so that their Python workers have
imported TensorFlow), then each trainer's time is `get_training_time()`: from launching
the Spark job to the last worker's end, including the model rebuild on the executors.
Prints samples/s (samples trained by all workers; an ensemble of 2 trains every row twice),
wall time, test accuracy and each trainer's samples/s ratio to `fit`'s.

Usage: .venv/bin/python bench/train_bench.py [--epochs 5] [--trainers ADAG,EASGD,...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

# Worker optimizer per trainer (None: the model's Adam). ADAG commits Δ/λ, so its local
# steps take a larger learning rate; EAMSGD brings its own Nesterov SGD.
TRAINERS = {
    "SingleTrainer": {},
    "ADAG": {"learning_rate": 0.005},
    "DOWNPOUR": {},
    "DynSGD": {},
    "AEASGD": {},
    "EAMSGD": {},
    "EASGD": {},
    "AveragingTrainer": {},
    "EnsembleTrainer": {},
}


def mlp(learning_rate: float = 0.001, steps_per_execution: int = 1):
    """The benchmark's MLP 784-256-128-10, compiled with Adam."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        keras.optimizers.Adam(learning_rate),
        "sparse_categorical_crossentropy",
        metrics=["acc"],
        steps_per_execution=steps_per_execution,
    )
    return model


def test_accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, batch_size=512, verbose=0), 1) == y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--trainers", default=",".join(TRAINERS))
    args = parser.parse_args()

    from distkeras import trainers
    from distkeras.data import numpy_to_frame
    from distkeras.datasets import load_mnist
    from distkeras.spark.session import get_spark_session

    (x, y), (x_test, y_test) = load_mnist()
    spark = get_spark_session("local[2]", app_name="distkeras-train-bench")
    df = numpy_to_frame(spark, {"features": x, "label": y}).cache()
    df.count()
    samples = args.epochs * len(x)
    rows = []

    model = mlp()
    started = time.perf_counter()
    model.fit(x, y, batch_size=32, epochs=args.epochs, verbose=0)
    fit_seconds = time.perf_counter() - started
    rows.append(
        ("keras fit (1 process)", fit_seconds, samples, test_accuracy(model, x_test, y_test))
    )

    trainers.ADAG(mlp(), num_workers=2).train(df.limit(64), verbose=0)  # warm up executors
    for name in args.trainers.split(","):
        settings = TRAINERS[name]
        model = mlp(settings.get("learning_rate", 0.001))
        workers = {"SingleTrainer": {}, "EnsembleTrainer": {"num_ensembles": 2}}
        kwargs = workers.get(name, {"num_workers": 2})
        trainer = getattr(trainers, name)(model, num_epoch=args.epochs, seed=0, **kwargs)
        trainer.train(df, shuffle=True, verbose=0)
        if name == "EnsembleTrainer":
            model = trainer.ensemble_model()
        trained = sum(summary["samples"] for summary in trainer.worker_summaries)
        label = f"{name} ({len(trainer.worker_summaries)} workers)"
        rows.append(
            (label, trainer.get_training_time(), trained, test_accuracy(model, x_test, y_test))
        )

    print(f"MNIST 8,000 rows x {args.epochs} epochs, MLP 784-256-128-10, batch 32, local[2]")
    print(f"{'run':<28} {'seconds':>8} {'samples/s':>10} {'test acc':>9} {'vs fit':>7}")
    fit_rate = samples / fit_seconds
    for name, seconds, trained, acc in rows:
        rate = trained / seconds
        print(f"{name:<28} {seconds:>8.2f} {rate:>10,.0f} {acc:>9.4f} {rate / fit_rate:>6.2f}x")
    spark.stop()


if __name__ == "__main__":
    main()
