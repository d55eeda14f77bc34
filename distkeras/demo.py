"""The main job behind `make demo`: distributed training on an embedded local Spark.

Trains a small MLP with two workers of the default trainer (distkeras.algorithms.registry's
DEFAULT) on scikit-learn's bundled 8x8 digits (no download) on `local[*]`, with a progress
bar, then prints the held-out accuracy.
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np

from distkeras.quiet import import_keras

logger = logging.getLogger(__name__)


def build_model(input_dim: int, classes: int):
    """A compiled 64-64-10 MLP."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((input_dim,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(classes, activation="softmax"),
        ]
    )
    model.compile(
        keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    return model


def run(master: str = "local[*]", epochs: int = 10, workers: int = 2, verbose="auto") -> float:
    """Trains on the digits and returns the held-out accuracy."""
    from distkeras.algorithms.registry import DEFAULT
    from distkeras.datasets import load_digits
    from distkeras.spark.session import get_spark_session
    from distkeras.trainers import make_trainer

    (x_train, y_train), (x_test, y_test) = load_digits()
    get_spark_session(master, app_name="distkeras-demo")
    model = build_model(x_train.shape[1], 10)
    trainer = make_trainer(DEFAULT, model, batch_size=16, num_workers=workers, seed=0)
    trainer.fit(x_train, y_train, epochs=epochs, validation_data=(x_test, y_test), verbose=verbose)
    predictions = np.argmax(model.predict(x_test, verbose=0), axis=1)
    return float(np.mean(predictions == y_test))


def main(argv=None) -> int:
    """Command-line entry point: prints the held-out accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--master", default="local[*]", help="Spark master URL")
    parser.add_argument("--epochs", type=int, default=10, help="passes over the data")
    parser.add_argument("--workers", type=int, default=2, help="parallel workers")
    args = parser.parse_args(argv)
    import_keras()  # without TensorFlow's start-up chatter
    accuracy = run(args.master, args.epochs, args.workers)
    sys.stdout.write(f"Held-out accuracy on the digits: {accuracy:.4f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
