"""DOWNPOUR's communication window: `model.fit` and DOWNPOUR at several windows, alternated.

Part 1, the time-to-accuracy workload (MNIST 8,000 rows, MLP 784-256-128-10, Adam(1e-3),
batch 32, 20 epochs, 2 workers on `local[2]`, cached DataFrame): each repetition runs
`model.fit`, then DOWNPOUR at its default window and at each fixed window, and prints
every run's accuracy minus `fit`'s of the same repetition and its samples/s over `fit`'s.
Part 2, short runs (5 epochs): the center's test accuracy at every epoch end, mean and
lowest over the repetitions, next to `model.fit`'s. Part 3, scikit-learn's digits
(tests/test_accuracy.py's setting: MLP 64-64-10, 30 epochs, about 22 steps per
worker and epoch): accuracy of `fit` and of each window.

Usage: .venv/bin/python bench/window_study.py [--repeat 4] [--windows 10,20]
    [--epochs 20] [--skip-long] [--skip-digits]
"""

from __future__ import annotations

import argparse
import logging

from time_to_accuracy import (
    alternate_with_fit,
    cached_mnist,
    fit_run,
    print_pairs,
    trainer_run,
)
from train_bench import mlp

DIGITS_EPOCHS = 30
CURVE_EPOCHS = 5


def window_label(window: int | None) -> str:
    return "default" if window is None else f"λ={window}"


def downpour(model, window: int | None, seed: int = 0):
    from distkeras import trainers

    return trainers.DOWNPOUR(model, num_workers=2, seed=seed, communication_window=window)


def mnist_study(data, windows: list, repeat: int, epochs: int) -> None:
    makers = {window_label(w): lambda w=w: downpour(mlp(), w) for w in windows}
    pairs = alternate_with_fit(data, makers, repeat, epochs)
    print_pairs(pairs, f"MNIST 8,000 rows x {epochs} epochs, {repeat} alternations with fit")


def curve_study(data, windows: list, repeat: int, epochs: int) -> None:
    """The center's test accuracy at every epoch end of short runs: the mean and the lowest
    over `repeat` runs, per window, next to `model.fit`'s."""
    import numpy as np

    x, y, x_test, y_test, df = data
    curves = {"fit": [], **{window_label(w): [] for w in windows}}
    for _ in range(repeat):
        curves["fit"].append(fit_run(x, y, x_test, y_test, epochs).curve)
        for window in windows:
            make = lambda window=window: downpour(mlp(), window)  # noqa: E731
            run = trainer_run("downpour", window_label(window), make, df, x_test, y_test, epochs)
            curves[window_label(window)].append(run.curve)
    print(f"\nTest accuracy at each epoch end, {repeat} runs of {epochs} epochs: mean (lowest)")
    for label, runs in curves.items():
        accuracies = np.array([[acc for _, acc in curve] for curve in runs])
        cells = "  ".join(
            f"{m:.4f} ({low:.4f})" for m, low in zip(accuracies.mean(0), accuracies.min(0))
        )
        print(f"{label:<8} {cells}")


def digits_study(windows: list) -> None:
    import keras
    import numpy as np

    from distkeras.datasets import load_digits

    (x, y), (x_test, y_test) = load_digits()

    def digits_mlp():
        model = keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(64, activation="relu"),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
        return model

    def accuracy(model) -> float:
        return float(np.mean(np.argmax(model.predict(x_test, verbose=0), axis=1) == y_test))

    keras.utils.set_random_seed(0)
    reference = digits_mlp()
    start = [w.copy() for w in reference.get_weights()]
    reference.fit(x, y, batch_size=32, epochs=DIGITS_EPOCHS, verbose=0)
    print(f"\ndigits ({len(x)} rows) x {DIGITS_EPOCHS} epochs: fit {accuracy(reference):.4f}")
    for window in windows:
        model = digits_mlp()
        model.set_weights(start)
        downpour(model, window).fit(x, y, epochs=DIGITS_EPOCHS, batch_size=32, verbose=0)
        print(f"  {window_label(window):<8} {accuracy(model):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--windows", default="10,20", help="fixed windows besides the default")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--skip-long", action="store_true", help="only the short runs, digits")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from distkeras.spark.session import get_spark_session

    windows = [None] + [int(w) for w in args.windows.split(",") if w]
    spark = get_spark_session("local[2]", app_name="distkeras-window-study")
    try:
        data = cached_mnist(spark)
        downpour(mlp(), None).fit(data[-1].limit(64), verbose=0)  # warm the executors
        if not args.skip_long:
            mnist_study(data, windows, args.repeat, args.epochs)
        curve_study(data, windows, args.repeat, CURVE_EPOCHS)
        data[-1].unpersist()
        if not args.skip_digits:
            digits_study(windows)
    finally:
        spark.stop()


if __name__ == "__main__":
    main()
