"""Time to accuracy: every trainer next to `keras.Model.fit`, at the model's own settings.

The benchmark workload: MNIST (first 8,000 images train, last 2,000 test), MLP
784-256-128-10 compiled with Adam(1e-3), batch 32, 20 epochs, 2 workers on `local[2]`,
executors warmed up, training DataFrame cached. In one run it measures `model.fit`,
`model.fit` with `steps_per_execution` tuned (the fastest of a short probe), then every
trainer twice: with the model's own optimizer and with the trainer's documented setting
(where it differs). Each run records the test accuracy of the model (the center) at every
epoch end and the seconds since training began, and prints the seconds to reach `fit`'s
final accuracy minus 0.5 points, the final accuracy and samples/s.

Before the table, in the same fresh session: the session's first fit (executors' imports
included) and the warm overhead of later fits, on 512 rows; after it, one epoch on a
627 MB float32 numpy array (bench/fixed_costs.py). The default trainer's targets are
judged on `--repeat` alternations of `fit` and the default (one run of `fit` moved by up to
0.75 points from the next in docs/performance.md's runs), each compared with the `fit`
just before it; every alternation is printed, then the targets, met or not.

Usage: .venv/bin/python bench/time_to_accuracy.py [--epochs 20] [--runs adag,downpour,...]
    [--adag-window 4] [--skip-fixed-costs] [--repeat 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time

import fixed_costs
from train_bench import mlp  # the same model as the throughput bench

from distkeras.algorithms import registry
from distkeras.algorithms.adag import learning_rate as adag_learning_rate

logger = logging.getLogger(__name__)

TOLERANCE = 0.005  # time to reach fit's final accuracy minus 0.5 points
ADAM_LEARNING_RATE = 1e-3


@dataclasses.dataclass
class Run:
    """One training run: accuracy after each epoch and when it was reached."""

    name: str
    setting: str
    samples: int = 0
    seconds: float = 0.0
    curve: list = dataclasses.field(default_factory=list)  # (seconds, test accuracy)

    @property
    def accuracy(self) -> float:
        return self.curve[-1][1]

    def time_to(self, target: float) -> float | None:
        return next((t for t, acc in self.curve if acc >= target), None)


def accuracy_recorder(run: Run, x_test, y_test):
    """A Keras callback appending (seconds since train begin, val accuracy) at epoch ends."""
    import keras

    class Recorder(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            run.curve.append((time.perf_counter() - self.started, float(logs["val_acc"])))

        def on_train_end(self, logs=None):
            run.seconds = time.perf_counter() - self.started

    return Recorder()


def fit_run(x, y, x_test, y_test, epochs, steps_per_execution=1) -> Run:
    setting = "Adam(1e-3)" + (
        f", steps_per_execution={steps_per_execution}" if steps_per_execution > 1 else ""
    )
    run = Run("keras fit", setting, samples=epochs * len(x))
    model = mlp(steps_per_execution=steps_per_execution)
    model.fit(
        x,
        y,
        batch_size=32,
        epochs=epochs,
        verbose=0,
        validation_data=(x_test, y_test),
        callbacks=[accuracy_recorder(run, x_test, y_test)],
    )
    return run


def tuned_steps_per_execution(x, y) -> int:
    """The fastest steps_per_execution for one epoch of fit on 2,000 rows."""
    best, best_seconds = 1, float("inf")
    for steps in (1, 8, 32, 128):
        model = mlp(steps_per_execution=steps)
        model.fit(x[:256], y[:256], batch_size=32, epochs=1, verbose=0)  # trace
        started = time.perf_counter()
        model.fit(x[:2000], y[:2000], batch_size=32, epochs=1, verbose=0)
        seconds = time.perf_counter() - started
        if seconds < best_seconds:
            best, best_seconds = steps, seconds
    return best


def trainer_run(name, setting, make_trainer, df, x_test, y_test, epochs) -> Run:
    run = Run(name, setting)
    trainer = make_trainer()
    trainer.fit(
        df,
        epochs=epochs,
        validation_data=(x_test, y_test),
        callbacks=[accuracy_recorder(run, x_test, y_test)],
        verbose=0,
    )
    run.samples = sum(summary["samples"] for summary in trainer.worker_summaries)
    return run


def cached_mnist(spark, mnist=None):
    """The benchmark workload's data: (x, y, x_test, y_test, a cached 2-partition DataFrame
    of the training rows), from `mnist` (`load_mnist()`'s result) or loaded here."""
    from distkeras.data import numpy_to_frame
    from distkeras.datasets import load_mnist

    (x, y), (x_test, y_test) = mnist or load_mnist()
    df = numpy_to_frame(spark, {"features": x, "label": y}, packed=True).repartition(2).cache()
    df.count()
    return x, y, x_test, y_test, df


def alternate_with_fit(data, makers: dict, repeat: int, epochs: int) -> dict[str, list]:
    """Runs `model.fit`, then each trainer of `makers` (label -> trainer factory), `repeat`
    times; returns per label, for every repetition, (accuracy minus that repetition's fit's,
    in points; samples/s over fit's)."""
    x, y, x_test, y_test, df = data
    pairs = {label: [] for label in makers}
    for repetition in range(repeat):
        fit = fit_run(x, y, x_test, y_test, epochs)
        fit_rate = fit.samples / fit.seconds
        for label, make in makers.items():
            run = trainer_run("trainer", label, make, df, x_test, y_test, epochs)
            pairs[label].append(
                ((run.accuracy - fit.accuracy) * 100, run.samples / run.seconds / fit_rate)
            )
            logger.info(
                "repetition %d, %s: %.4f against fit's %.4f, %.2fx",
                repetition + 1,
                label,
                run.accuracy,
                fit.accuracy,
                pairs[label][-1][1],
            )
    return pairs


def print_pairs(pairs: dict, title: str) -> None:
    """One line per label: every repetition's accuracy gap and speed ratio, and their means."""
    print(f"\n{title}")
    print(f"{'run':<20} {'accuracy − fit (points)':<34} {'samples/s vs fit':<34} mean")
    for label, measured in pairs.items():
        gaps = ", ".join(f"{gap:+.2f}" for gap, _ in measured)
        ratios = ", ".join(f"{ratio:.2f}x" for _, ratio in measured)
        mean_gap = sum(gap for gap, _ in measured) / len(measured)
        mean_ratio = sum(ratio for _, ratio in measured) / len(measured)
        print(f"{label:<20} {gaps:<34} {ratios:<34} {mean_gap:+.2f}, {mean_ratio:.2f}x")


def documented_settings(name: str, adag_window: int | None = None) -> dict[str, tuple]:
    """Setting label -> (model learning rate, trainer kwargs): the model's own Adam(1e-3),
    then the setting docs/trainers.md documents for the trainer, where it differs."""
    own = {"model's Adam(1e-3)": (ADAM_LEARNING_RATE, {})}
    if name == "adag":
        window = adag_window or registry.spec("adag").window
        rate = adag_learning_rate(ADAM_LEARNING_RATE, window)
        kwargs = {"communication_window": window}
        return {
            f"Adam(1e-3), λ={window}": (ADAM_LEARNING_RATE, kwargs),
            f"Adam({rate:g}) = 1e-3 x λ (docs)": (rate, kwargs),
        }
    if name == "eamsgd":  # its own Nesterov SGD unless given a worker optimizer
        return {
            "model's Adam(1e-3)": (ADAM_LEARNING_RATE, {"worker_optimizer": "model"}),
            "its Nesterov SGD(0.1) (docs)": (ADAM_LEARNING_RATE, {}),
        }
    return own


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--runs", default="", help="comma-separated registry names; all if empty")
    parser.add_argument("--adag-window", type=int, help="ADAG's λ (default: the registry's)")
    parser.add_argument("--skip-fixed-costs", action="store_true")
    parser.add_argument("--large-rows", type=int, default=200_000, help="rows of the array")
    parser.add_argument(
        "--repeat", type=int, default=3, help="alternations of fit and the default trainer"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from distkeras import trainers
    from distkeras.datasets import load_mnist
    from distkeras.spark.session import get_spark_session

    mnist = load_mnist()
    spark = get_spark_session("local[2]", app_name="distkeras-time-to-accuracy")
    costs = {}
    if not args.skip_fixed_costs:  # before the DataFrame's jobs: the session's first fit
        costs["first"] = fixed_costs.first_fit(*mnist[0])
        costs["warm"] = fixed_costs.warm_overhead(*mnist[0])
    data = cached_mnist(spark, mnist)
    x, y, x_test, y_test, df = data
    trainers.DOWNPOUR(mlp(), num_workers=2).fit(df.limit(64), verbose=0)  # warm, if not yet

    runs = [fit_run(x, y, x_test, y_test, args.epochs)]
    steps = tuned_steps_per_execution(x, y)
    runs.append(fit_run(x, y, x_test, y_test, args.epochs, steps))
    target = runs[0].accuracy - TOLERANCE
    names = args.runs.split(",") if args.runs else registry.names()
    for name in names:
        for label, (learning_rate, kwargs) in documented_settings(name, args.adag_window).items():

            def make(name=name, learning_rate=learning_rate, kwargs=kwargs):
                model = mlp(learning_rate)
                kwargs = dict(kwargs)
                if kwargs.get("worker_optimizer") == "model":
                    kwargs["worker_optimizer"] = model.optimizer
                return trainers.make_trainer(name, model, num_workers=2, seed=0, **kwargs)

            runs.append(trainer_run(name, label, make, df, x_test, y_test, args.epochs))
            logger.info("%s %s: %.4f", name, label, runs[-1].accuracy)
    print_table(runs, target, args.epochs)
    default = {
        f"{registry.DEFAULT} (default)": lambda: trainers.make_trainer(
            registry.DEFAULT, mlp(), num_workers=2
        )
    }
    pairs = alternate_with_fit(data, default, args.repeat, args.epochs)
    print_pairs(pairs, f"The default trainer and fit, alternated {args.repeat} times")
    if not args.skip_fixed_costs:
        df.unpersist()
        costs["large"] = fixed_costs.large_array(args.large_rows)
    print_targets(next(iter(pairs.values())), costs)
    spark.stop()


def print_targets(default: list, costs: dict) -> None:
    """`default`: the default trainer's (gap, ratio) in each alternation with fit."""
    print("\nTargets")
    gap = -sum(gap for gap, _ in default) / len(default)
    ratio = sum(ratio for _, ratio in default) / len(default)
    print(
        f"default trainer ({registry.DEFAULT}), mean of {len(default)} alternations: "
        f"{ratio:.2f}x fit's samples/s (target >= 2), {gap:+.2f} points below fit "
        "(target <= 0.3)"
    )
    if "first" in costs:
        first, warm = costs["first"], costs["warm"]
        print(
            f"first fit of the session (512 rows, 1 epoch): {first['trainer_first']:.2f} s "
            f"(target <= 8; the process's first model.fit: {first['keras_first']:.2f} s)"
        )
        print(
            f"later fit: {warm['trainer']:.2f} s, model.fit on a fresh model: {warm['keras']:.2f} s"
            f", overhead {warm['trainer'] - warm['keras']:.2f} s (target <= 0.5; medians of 5)"
        )
    if "large" in costs:
        large = costs["large"]
        print(
            f"one epoch on a {large['megabytes']:.0f} MB float32 array: {large['trainer']:.1f} s, "
            f"model.fit {large['keras']:.1f} s: {large['trainer'] / large['keras']:.2f}x "
            "(target <= 1.2)"
        )


def print_table(runs, target: float, epochs: int) -> None:
    fit_rate = runs[0].samples / runs[0].seconds
    print(
        f"\nMNIST 8,000 rows x {epochs} epochs, MLP 784-256-128-10, batch 32, local[2]; "
        f"target: fit's final accuracy - 0.5 points = {target:.4f}"
    )
    header = (
        f"{'run':<18} {'setting':<38} {'s to target':>11} {'final acc':>9} "
        f"{'samples/s':>10} {'vs fit':>7}"
    )
    print(header)
    for run in runs:
        reached = run.time_to(target)
        shown = "not reached" if reached is None else f"{reached:.1f}"
        rate = run.samples / run.seconds
        print(
            f"{run.name:<18} {run.setting:<38} {shown:>11} {run.accuracy:>9.4f} "
            f"{rate:>10,.0f} {rate / fit_rate:>6.2f}x"
        )


if __name__ == "__main__":
    main()
