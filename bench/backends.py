"""The default trainer against each Keras backend's own `model.fit`, side by side in one run.

The benchmark workload (MNIST 8,000 rows, MLP 784-256-128-10, Adam(1e-3), batch 32, 2 workers
on `local[2]`), once per backend. Keras fixes its backend at import, so each backend runs in
a child process of its own (`KERAS_BACKEND`), which builds its own session and measures, in
order: `model.fit` in the driver process; the default trainer's first fit of the session, one
epoch on 256 rows (executors import the backend and compile their steps); the default
trainer on the workload; a later fit of one epoch on 256 rows (the fixed cost of a fit once
the session is warm). samples/s are samples over the wall time of the `fit` call (for the
trainer: every sample every worker trained), test accuracy is on the 2,000 test rows.

Usage: .venv/bin/python bench/backends.py [--epochs 20] [--backends tensorflow,jax,torch]
(default: each of the three that is installed; `make test-torch` installs PyTorch)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def mlp():
    import keras

    model = keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    return model


def test_accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, batch_size=512, verbose=0), 1) == y))


def measure(epochs: int) -> dict:
    """The child's work, on this process's backend: one JSON-able dict of figures."""
    import keras

    from distkeras.algorithms import registry
    from distkeras.datasets import load_mnist
    from distkeras.spark.session import get_spark_session
    from distkeras.trainers import make_trainer

    (x, y), (x_test, y_test) = load_mnist()
    get_spark_session("local[2]", app_name="distkeras-backends-bench")
    samples = epochs * len(x)
    result = {"backend": keras.backend.backend()}

    keras.utils.set_random_seed(0)
    model = mlp()
    started = time.perf_counter()
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    result["fit_seconds"] = time.perf_counter() - started
    result["fit_rate"] = samples / result["fit_seconds"]
    result["fit_accuracy"] = test_accuracy(model, x_test, y_test)

    try:
        result["first_fit_seconds"] = small_fit(x, y)
    except Exception as error:  # a backend the trainers do not run: its error is the figure
        result["error"] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        return result

    keras.utils.set_random_seed(0)
    model = mlp()
    trainer = make_trainer(registry.DEFAULT, model, num_workers=2, seed=0)
    started = time.perf_counter()
    trainer.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    result["trainer_seconds"] = time.perf_counter() - started
    trained = sum(summary["samples"] for summary in trainer.worker_summaries)
    result["trainer_rate"] = trained / result["trainer_seconds"]
    result["trainer_accuracy"] = test_accuracy(model, x_test, y_test)
    result["later_fit_seconds"] = small_fit(x, y)
    return result


def small_fit(x, y) -> float:
    """Seconds of the default trainer's fit of one epoch on 256 rows (a fresh model)."""
    from distkeras.algorithms import registry
    from distkeras.trainers import make_trainer

    trainer = make_trainer(registry.DEFAULT, mlp(), num_workers=2, seed=0)
    started = time.perf_counter()
    trainer.fit(x[:256], y[:256], batch_size=32, epochs=1, verbose=0)
    return time.perf_counter() - started


def run_child(backend: str, epochs: int) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend, "PYSPARK_PYTHON": sys.executable}
    child = subprocess.run(
        [sys.executable, __file__, "--child", "--epochs", str(epochs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if child.returncode != 0:
        tail = child.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"backend": backend, "error": f"exit {child.returncode}: {tail[0]}"}
    return json.loads(child.stdout.strip().splitlines()[-1])


def print_table(results: list[dict], epochs: int) -> None:
    print(
        f"MNIST 8,000 rows x {epochs} epochs, MLP 784-256-128-10, Adam(1e-3), batch 32; "
        "default trainer: 2 workers on local[2]"
    )
    print(
        f"{'backend':<11} {'fit samples/s':>13} {'fit acc':>8} {'trainer samples/s':>17} "
        f"{'trainer acc':>11} {'speed-up':>8} {'acc diff':>8} {'1st fit s':>9} {'later s':>7}"
    )
    for r in results:
        if "fit_rate" not in r or "trainer_rate" not in r:
            print(f"{r['backend']:<11} {r.get('error', '')}")
            continue
        print(
            f"{r['backend']:<11} {r['fit_rate']:>13,.0f} {r['fit_accuracy']:>8.4f} "
            f"{r['trainer_rate']:>17,.0f} {r['trainer_accuracy']:>11.4f} "
            f"{r['trainer_rate'] / r['fit_rate']:>7.2f}x "
            f"{100 * (r['trainer_accuracy'] - r['fit_accuracy']):>+7.2f}p "
            f"{r['first_fit_seconds']:>9.1f} {r['later_fit_seconds']:>7.1f}"
        )


def installed_backends() -> list[str]:
    import importlib.util

    return [name for name in ("tensorflow", "jax", "torch") if importlib.util.find_spec(name)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--backends", default=",".join(installed_backends()))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.stdout.write(json.dumps(measure(args.epochs)) + "\n")
        return
    results = [run_child(backend, args.epochs) for backend in args.backends.split(",")]
    print_table(results, args.epochs)


if __name__ == "__main__":
    main()
