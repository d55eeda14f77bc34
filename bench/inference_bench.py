"""Inference benchmark: KerasModel.transform on local[2] next to one-process model.predict.

Usage: .venv/bin/python bench/inference_bench.py [--rows 100000] [--repeats 2]

One run measures, on the same MNIST-shaped float32 data (rows x 784) and the tests' MLP
(784-256-128-10): rows/s of `KerasModel.transform` on a cached DataFrame, forced over every
row with a `noop` write, and rows/s of `model.predict` in this process (TensorFlow on all
cores). Data generation and caching are not timed; each side is warmed up once and the
best of `--repeats` runs counts. Prints a table and the ratio (Spark / single process).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def best_rate(action, rows: int, repeats: int) -> float:
    """Runs `action` once to warm up, then `repeats` times; returns the best rows/s."""
    action()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return rows / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4096)
    args = parser.parse_args()

    from distkeras.data import numpy_to_frame
    from distkeras.ml import KerasModel
    from distkeras.spark import get_spark_session
    from tests.conftest import mlp

    spark = get_spark_session(
        "local[2]", app_name="inference-bench", conf={"spark.driver.memory": "4g"}
    )
    rng = np.random.default_rng(0)
    x = rng.random((args.rows, 784), dtype=np.float32)
    model = mlp()
    frame = numpy_to_frame(spark, {"features": x}).repartition(2).cache()
    frame.count()
    stage = KerasModel(model=model, inferenceBatchSize=args.batch_size)
    result = stage.transform(frame)

    def spark_transform():
        result.write.format("noop").mode("overwrite").save()

    def single_predict():
        model.predict(x, batch_size=args.batch_size, verbose=0)

    spark_rate = best_rate(spark_transform, args.rows, args.repeats)
    single_rate = best_rate(single_predict, args.rows, args.repeats)
    print(
        f"rows: {args.rows:,} x 784 float32, batch size {args.batch_size}, "
        f"best of {args.repeats} after one warm-up"
    )
    print("| what                                      | rows/s  |")
    print("|-------------------------------------------|--------:|")
    print(f"| KerasModel.transform, local[2], noop write | {spark_rate:>7,.0f} |")
    print(f"| model.predict, one process                 | {single_rate:>7,.0f} |")
    print(f"ratio (transform / predict): {spark_rate / single_rate:.2f}")
    spark.stop()


if __name__ == "__main__":
    main()
