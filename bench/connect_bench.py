"""One training run on a classic session and the same run over Spark Connect, side by side.

The default trainer (DOWNPOUR), 2 workers, MLP 784-256-128-10, batch 32, on the MNIST
files (8,000 train rows, 2,000 test rows), on `local[2]`. The Connect session is a Spark
Connect endpoint on the same JVM (`distkeras.spark.serve_connect`), so both use the same
executors and only the client path differs. Three setups, in alternating rounds after one
warm-up run each: classic; Connect with the server on the client; Connect with the server
in worker 0's task (`ps_placement="cluster"`). Prints, per setup, the median wall time of
`train` (input checks, data to the executors, training, the final weights) and of the
Spark job alone (`get_training_time()`), test accuracy, and the ratio to classic.

Usage: .venv/bin/python bench/connect_bench.py [--epochs 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time

import numpy as np

SETUPS = (("classic", "classic", "auto"), ("connect", "connect", "client"))
SETUPS += (("connect, in cluster", "connect", "cluster"),)


def run(session, placement: str, arrays: dict, test, epochs: int):
    """One training run; returns (wall seconds, job seconds, test accuracy)."""
    from distkeras.data import numpy_to_frame
    from distkeras.trainers import DOWNPOUR
    from tests.conftest import accuracy, mlp

    started = time.perf_counter()
    trainer = DOWNPOUR(mlp(), num_workers=2, num_epoch=epochs, seed=1, ps_placement=placement)
    model = trainer.train(numpy_to_frame(session, arrays).repartition(2), verbose=0)
    wall = time.perf_counter() - started
    return wall, trainer.get_training_time(), accuracy(model, *test)


def measure(sessions: dict, arrays: dict, test, epochs: int, rounds: int) -> dict:
    """Warm-up runs, then `rounds` alternating rounds; setup name -> list of run results."""

    def one(setup):
        _, kind, placement = setup
        if kind == "connect":  # PySpark builds Connect columns only in Connect mode
            os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"
        try:
            return run(sessions[kind], placement, arrays, test, epochs)
        finally:
            os.environ.pop("SPARK_CONNECT_MODE_ENABLED", None)

    for setup in SETUPS[:2]:  # warm-up: each session's Python workers import TensorFlow
        one(setup)
    results = {setup[0]: [] for setup in SETUPS}
    for round_ in range(rounds):
        for setup in SETUPS:
            results[setup[0]].append(one(setup))
            wall, job, acc = results[setup[0]][-1]
            print(f"round {round_ + 1}: {setup[0]}: {wall:.1f} s ({job:.1f} s job), {acc:.4f}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    from pyspark.sql.connect.session import SparkSession as ConnectSession

    from distkeras.datasets import load_mnist
    from distkeras.spark.session import get_spark_session
    from distkeras.testing import serve_connect

    (x_train, y_train), test = load_mnist()
    arrays = {"features": x_train, "label": y_train}
    spark = get_spark_session("local[2]", app_name="distkeras-connect-bench")
    with serve_connect(spark) as url:
        sessions = {"classic": spark, "connect": ConnectSession.builder.remote(url).create()}
        try:
            results = measure(sessions, arrays, test, args.epochs, args.rounds)
        finally:
            sessions["connect"].stop()  # its gRPC channel would keep the process alive

    base = statistics.median(r[0] for r in results["classic"])
    print(f"{args.epochs} epochs, {args.rounds} rounds, medians")
    print(f"{'setup':<22}{'train s':>9}{'job s':>8}{'accuracy':>10}{'vs classic':>12}")
    for name, rows in results.items():
        wall = statistics.median(r[0] for r in rows)
        job = statistics.median(r[1] for r in rows)
        acc = float(np.mean([r[2] for r in rows]))
        print(f"{name:<22}{wall:>9.1f}{job:>8.1f}{acc:>10.4f}{wall / base:>11.2f}x")


if __name__ == "__main__":
    main()
