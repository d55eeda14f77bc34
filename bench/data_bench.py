"""The columnar feed's conversion speed next to a plain `df.toPandas()`, in one run.

Builds an MNIST-shaped DataFrame (ML vectors of 784 values and an integer label), then
times, alternately: (a) distkeras' feed: vectors to arrays, `mapInArrow`, and
`arrow_to_numpy` in every partition, as the workers do; (b) `df.toPandas()` of the same
frame on the driver followed by stacking the vectors into one numpy array, the
obvious way to get numpy arrays out of Spark. Prints rows/s of each and their ratio.

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

    from distkeras.data import columnar_frame, numpy_to_frame
    from distkeras.spark import get_spark_session

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
    feed(frame)  # warm up the Python workers
    best = {"feed": float("inf"), "toPandas": float("inf")}
    for _ in range(args.repeat):
        for name, run in (("feed", lambda: feed(frame)), ("toPandas", lambda: to_pandas(df))):
            started = time.perf_counter()
            assert run() == args.rows
            best[name] = min(best[name], time.perf_counter() - started)
    rate = {name: args.rows / seconds for name, seconds in best.items()}
    print(
        f"rows: {args.rows:,} of 784 float32 features (ML vectors), local[2], best of {args.repeat}"
    )
    print(f"{'method':<34} {'seconds':>8} {'rows/s':>12}")
    print(f"{'distkeras feed (Arrow, per part.)':<34} {best['feed']:>8.2f} {rate['feed']:>12,.0f}")
    print(f"{'df.toPandas() + np.stack':<34} {best['toPandas']:>8.2f} {rate['toPandas']:>12,.0f}")
    print(f"ratio feed / toPandas: {rate['feed'] / rate['toPandas']:.1f}x")
    spark.stop()


if __name__ == "__main__":
    main()
