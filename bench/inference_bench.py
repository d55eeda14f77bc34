"""Inference benchmark: KerasModel.transform on local[2] next to one-process model.predict.

Usage: .venv/bin/python bench/inference_bench.py [--rows 100000] [--repeats 8]

One run measures, on the same MNIST-shaped float32 data (rows x 784) and the tests' MLP
(784-256-128-10): rows/s of `KerasModel.transform` on a cached DataFrame, forced over every
row with a `noop` write, with the features as an `array<float>` column and as a packed
float32 (binary) column; and rows/s of `model.predict` in this process (TensorFlow on all
cores). Data generation and caching are not timed. Each side is warmed up once, then the two
sides alternate `--repeats` times, so that a burst of load elsewhere on the machine hits
both; the table gives the best and the median of each side and the ratios (Spark / single
process).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def alternate(actions: dict, repeats: int, pause: float) -> dict[str, list[float]]:
    """Runs each action once to warm up, then all of them in turn `repeats` times.

    Sleeps `pause` seconds before each timed run, so that work one side leaves behind (the
    JVM's compiler and garbage collector threads) does not slow the other.
    Returns each action's run times in seconds.
    """
    for action in actions.values():
        action()
    times: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(repeats):
        for name, action in actions.items():
            time.sleep(pause)
            started = time.perf_counter()
            action()
            times[name].append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--pause", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=4096)
    args = parser.parse_args()

    from distkeras.data import numpy_to_frame
    from distkeras.ml import KerasModel
    from distkeras.spark.session import get_spark_session
    from tests.conftest import mlp

    spark = get_spark_session(
        "local[2]", app_name="inference-bench", conf={"spark.driver.memory": "4g"}
    )
    rng = np.random.default_rng(0)
    x = rng.random((args.rows, 784), dtype=np.float32)
    model = mlp()
    stage = KerasModel(model=model, inferenceBatchSize=args.batch_size)
    actions, labels = {}, {}
    for packed, label in ((False, "array<float> column"), (True, "packed float32 column")):
        frame = numpy_to_frame(spark, {"features": x}, packed=packed).repartition(2).cache()
        frame.count()
        result = stage.transform(frame)
        name = "packed" if packed else "array"
        actions[name] = lambda result=result: result.write.format("noop").mode("overwrite").save()
        labels[name] = f"KerasModel.transform, {label}"
    actions["single"] = lambda: model.predict(x, batch_size=args.batch_size, verbose=0)
    labels["single"] = "model.predict, one process, numpy"

    times = alternate(actions, args.repeats, args.pause)
    best = {name: args.rows / min(runs) for name, runs in times.items()}
    median = {name: args.rows / statistics.median(runs) for name, runs in times.items()}
    print(
        f"rows: {args.rows:,} x 784 float32, batch size {args.batch_size}, local[2] with a noop "
        f"write; {args.repeats} alternating runs after one warm-up, {args.pause:g} s pause "
        "before each"
    )
    print(
        "| what                                         | best rows/s | median rows/s "
        "| ratio, best | ratio, median |"
    )
    print(
        "|----------------------------------------------|------------:|--------------:"
        "|------------:|--------------:|"
    )
    for name, label in labels.items():
        ratios = ["", ""]
        if name != "single":
            ratios = [f"{rate[name] / rate['single']:.2f}" for rate in (best, median)]
        print(
            f"| {label:<44} | {best[name]:>11,.0f} | {median[name]:>13,.0f} "
            f"| {ratios[0]:>11} | {ratios[1]:>13} |"
        )
    for name, runs in times.items():
        print(f"{name} run times (s): {' '.join(f'{t:.2f}' for t in runs)}")
    spark.stop()


if __name__ == "__main__":
    main()
