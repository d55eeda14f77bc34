"""The columnar feed's conversion speed next to a plain `df.toPandas()`, in one run.

Builds an MNIST-shaped DataFrame (ML vectors of 784 values and an integer label), then
times, alternately: (a) distkeras' feed: vectors to arrays, `mapInArrow`, and
`arrow_to_numpy` in every partition, as the workers do; (b) the same feed from a cached copy
of the frame whose features were packed once with `pack_column`; (c) `df.toPandas()` of the
vector frame on the driver followed by stacking the vectors into one numpy array, the
obvious way to get numpy arrays out of Spark. Prints rows/s of each and the ratios.

Usage: .venv/bin/python bench/data_bench.py [--rows 40000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def feed(frame) -> int:
    """Runs the workers' conversion in every partition; returns the rows converted."""
    import pyarrow as pa

    from distkeras.data import arrow_to_numpy

    def convert(batches):
        columns = arrow_to_numpy(batches, ["features", "label"])
        yield pa.RecordBatch.from_pydict({"rows": [len(columns["label"])]})

    return sum(row.rows for row in frame.mapInArrow(convert, "rows long").collect())


def to_pandas(df) -> int:
    """The plain way: toPandas, then one numpy matrix of the vectors."""
    pdf = df.toPandas()
    matrix = np.stack(pdf["features"].map(lambda v: v.toArray()).to_numpy())
    return len(matrix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from pyspark.ml.functions import array_to_vector

    from distkeras.data import columnar_frame, numpy_to_frame, pack_column
    from distkeras.spark.session import get_spark_session

    spark = get_spark_session("local[2]", app_name="distkeras-data-bench")
    rng = np.random.default_rng(0)
    arrays = {
        "features": rng.random((args.rows, 784), dtype=np.float32),
        "label": rng.integers(0, 10, args.rows),
    }
    df = numpy_to_frame(spark, arrays).repartition(2)
    df = df.select(array_to_vector("features").alias("features"), "label").cache()
    df.count()
    frame = columnar_frame(df, ["features", "label"])
    packed = pack_column(df, "features").cache()
    packed.count()
    packed_frame = columnar_frame(packed, ["features", "label"])
    feed(frame)  # warm up the Python workers
    runs = {
        "distkeras feed (Arrow, per part.)": lambda: feed(frame),
        "same, features packed once": lambda: feed(packed_frame),
        "df.toPandas() + np.stack": lambda: to_pandas(df),
    }
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(args.repeat):
        for name, run in runs.items():
            started = time.perf_counter()
            assert run() == args.rows
            best[name] = min(best[name], time.perf_counter() - started)
    print(
        f"rows: {args.rows:,} of 784 float32 features (ML vectors), local[2], best of {args.repeat}"
    )
    print(f"{'method':<34} {'seconds':>8} {'rows/s':>12} {'vs toPandas':>12}")
    baseline = best["df.toPandas() + np.stack"]
    for name, seconds in best.items():
        print(
            f"{name:<34} {seconds:>8.2f} {args.rows / seconds:>12,.0f} {baseline / seconds:>11.1f}x"
        )
    spark.stop()


if __name__ == "__main__":
    main()
