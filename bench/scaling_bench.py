"""How cost grows: a worker's data source and memory, the parameter server, more workers.

Four parts, each one table of figures measured side by side in one run (the machine is
shared: read ratios, not absolute times):

- spill: the benchmark workload (train_bench's MLP 784-256-128-10 on MNIST, batch 32,
  windows of 12 steps), one worker's half of the rows: epoch time fed from memory
  (ArraySource) and from the spill file (SpillSource), alternating, and the time to take
  an epoch's windows from each without training (the data path's own cost); then test accuracy
  after `--epochs` epochs with the exact shuffle and with the block shuffle whose buffer
  holds 1/8 of the rows, on rows as stored and on rows sorted by label (the worst case).
- memory: one worker (SingleTrainer on local[2]) on partitions of 100 MB, 300 MB, 627 MB
  and 1 GB of packed float32 features: its peak resident growth (read from /proc by the
  worker), the spill's size against the feature bytes, and the run's seconds.
- ps: one ParameterServer (DOWNPOUR's rule) and 1..32 client processes committing a
  1M-parameter model (4 MB) as fast as they can: aggregate commits/s, MB/s both ways, the
  server process's CPU use (cores, and CPU ms per commit: 1000 / that is the ceiling of a
  server held to one core by the GIL), the time one rule application takes under the
  lock, and the machine's load average (other jobs share it).
- workers: 1, 2, 4, 8 workers on local-cluster executors of one core each, per algorithm:
  test accuracy after `--epochs` epochs, commits/s and the server's mean staleness.

Usage: .venv/bin/python bench/scaling_bench.py [--parts spill,memory,ps,workers]
    [--epochs 3] [--algorithms ADAG,DOWNPOUR,...] [--sizes-mb 100,300,627,1000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time

import numpy as np
from train_bench import TRAINERS, mlp, test_accuracy

WINDOW = 12  # ADAG's default window, the benchmark workload's


# ----------------------------------------------------------------------------- spill


def arrow_batches(x: np.ndarray, y: np.ndarray, rows_per_batch: int = 10_000):
    """The rows as Spark hands them to a worker: list<float> features, int labels."""
    import pyarrow as pa

    width = x.shape[1]
    for start in range(0, len(x), rows_per_batch):
        part = x[start : start + rows_per_batch]
        offsets = pa.array(np.arange(0, (len(part) + 1) * width, width, dtype=np.int32))
        features = pa.ListArray.from_arrays(offsets, pa.array(part.ravel()))
        labels = pa.array(y[start : start + rows_per_batch].astype(np.int32))
        yield pa.RecordBatch.from_arrays([features, labels], names=["features", "label"])


def train_epochs(model, source, epochs: int, rng) -> float:
    """Trains `epochs` epochs from `source` as a worker does (windows of WINDOW steps, taken
    from the source's shuffled epoch); returns the seconds per epoch.
    """
    from distkeras.executor.local_steps import WindowRunner

    runner = WindowRunner(model, 32)
    started = time.perf_counter()
    for _ in range(epochs):
        runner.reset()
        reader = source.epoch(rng)
        while (columns := reader.take(WINDOW * 32)) is not None:
            runner.run(columns["features"], columns["label"])
    return (time.perf_counter() - started) / epochs


def read_epoch(source, rng) -> float:
    """Seconds to take one epoch's windows from `source` without training on them."""
    started = time.perf_counter()
    reader = source.epoch(rng)
    while reader.take(WINDOW * 32) is not None:
        pass
    return time.perf_counter() - started


def part_spill(args) -> None:
    from distkeras.datasets import load_mnist
    from distkeras.executor.row_source import ArraySource, SpillSource

    (x, y), (x_test, y_test) = load_mnist()
    x, y = x[: len(x) // 2], y[: len(y) // 2]  # one worker's half of 2
    row_bytes = x.shape[1] * 4 + 4
    print(f"\n## spill: {len(x)} rows ({x.nbytes / 1e6:.1f} MB of features), MLP, batch 32")

    memory = ArraySource({"features": x, "label": y})
    with SpillSource(arrow_batches(x, y), ["features", "label"]) as spill:
        sources = (("memory", memory), ("spill", spill))
        model = mlp()
        for _, source in sources:  # trace the steps for each source's dtypes once
            train_epochs(model, source, 1, np.random.default_rng(0))
        times = {"memory": [], "spill": []}
        reads = {"memory": [], "spill": []}
        for _ in range(args.repeat):  # alternate: the same noise for both
            for name, source in sources:
                times[name].append(train_epochs(model, source, 1, np.random.default_rng(1)))
                reads[name].append(read_epoch(source, np.random.default_rng(1)))
        best = {name: min(values) for name, values in times.items()}
        read = {name: min(values) for name, values in reads.items()}
        print(
            f"{'source':<8} {'s/epoch':>8} {'speed':>7} {'data only, ms/epoch':>20} "
            f"(best of {args.repeat})"
        )
        for name in ("memory", "spill"):
            print(
                f"{name:<8} {best[name]:>8.2f} {best['memory'] / best[name]:>6.2f}x "
                f"{read[name] * 1000:>20.1f}"
            )
        print(f"spill file: {spill.nbytes / x.nbytes:.3f}x the feature bytes")

    sorted_rows = np.argsort(y, kind="stable")
    print(f"\ntest accuracy after {args.epochs} epochs (same seeds), buffer of 1/8 = small")
    print(f"{'rows':<16} {'exact shuffle':>14} {'block shuffle':>14}")
    for label, order in (("as stored", np.arange(len(y))), ("sorted by label", sorted_rows)):
        accuracies = []
        for buffer in (None, len(y) // 8):
            xs, ys = x[order], y[order]
            if buffer is None:
                source = ArraySource({"features": xs, "label": ys})
            else:
                source = SpillSource(
                    arrow_batches(xs, ys),
                    ["features", "label"],
                    block_bytes=row_bytes * max(1, buffer // 32),  # 32 blocks per buffer
                    buffer_bytes=row_bytes * buffer,
                )
            with source:
                model = mlp()
                train_epochs(model, source, args.epochs, np.random.default_rng(2))
                accuracies.append(test_accuracy(model, x_test, y_test))
        print(f"{label:<16} {accuracies[0]:>14.4f} {accuracies[1]:>14.4f}")


# ----------------------------------------------------------------------------- memory


def packed_frame(spark, rows: int):
    """`rows` rows of 784 packed float32 features (3,136 bytes) and a label, made by Spark."""
    from pyspark.sql import functions as F

    return spark.range(rows, numPartitions=2).select(
        F.expr("unhex(repeat('0000803F', 784))").alias("features"),
        (F.col("id") % 10).cast("int").alias("label"),
    )


def part_memory(args) -> None:
    import keras

    from distkeras.spark.session import get_spark_session
    from distkeras.trainers import SingleTrainer

    spark = get_spark_session("local[2]", app_name="distkeras-scaling-memory")
    print("\n## memory: one worker, 784 float32 features per row, a linear model, 1 epoch")
    print(
        f"{'partition MB':>12} {'rows':>9} {'peak growth MB':>15} {'spill/features':>15} "
        f"{'seconds':>8}"
    )
    try:
        for megabytes in [0] + [int(s) for s in args.sizes_mb.split(",")]:
            rows = max(1000, megabytes * 10**6 // 3136)  # 0: a warm-up run of 1,000 rows
            model = keras.Sequential(
                [keras.Input((784,)), keras.layers.Dense(10, activation="softmax")]
            )
            model.compile("sgd", "sparse_categorical_crossentropy")
            trainer = SingleTrainer(model, batch_size=500, num_epoch=1)
            trainer.train(packed_frame(spark, rows), verbose=0)
            (summary,) = trainer.worker_summaries
            growth = summary["memory_growth"] / 2**20
            ratio = summary["spill_bytes"] / (rows * 3136)
            print(
                f"{rows * 3136 / 1e6:>12,.0f} {rows:>9,} {growth:>15.0f} {ratio:>15.3f} "
                f"{trainer.get_training_time():>8.1f}",
                flush=True,
            )
    finally:
        spark.stop()


# ----------------------------------------------------------------------------- ps


PARAMS = 1_000_000


def ps_client(address, secret: bytes, worker_id: int, seconds: float, start_at: float, results):
    from distkeras.parameter_server import Client

    delta = [np.zeros(PARAMS // 4, np.float32) for _ in range(4)]
    with Client(address, secret, worker_id=worker_id, timeout=120.0) as client:
        client.pull()
        while time.time() < start_at:
            time.sleep(0.01)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            client.commit_and_pull(delta)
            count += 1
        results.put((count, time.perf_counter() - started))


def part_ps(args) -> None:
    from distkeras.algorithms.downpour import Downpour
    from distkeras.parameter_server import ParameterServer

    weights = [np.zeros(PARAMS // 4, np.float32) for _ in range(4)]
    rule = Downpour(1).server_rule
    center = [w.copy() for w in weights]
    started = time.perf_counter()
    for _ in range(20):
        rule(center, weights, 0)
    rule_ms = (time.perf_counter() - started) / 20 * 1000
    print(f"\n## ps: {PARAMS:,} float32 parameters (4 MB), commit_and_pull, loopback TCP")
    print(
        f"one rule application under the lock: {rule_ms:.2f} ms (at most {1000 / rule_ms:,.0f}/s)"
    )
    print(
        f"{'clients':>7} {'commits/s':>10} {'MB/s (both ways)':>17} {'server cores':>13} "
        f"{'server CPU ms/commit':>21} {'per-client ms':>14} {'load avg':>9}"
    )
    ctx = mp.get_context("spawn")
    for clients in (1, 2, 4, 8, 16, 32):
        with ParameterServer(weights, rule=rule) as server:
            results = ctx.Queue()
            start_at = time.time() + 3.0 + clients * 0.3  # all clients connected by then
            procs = [
                ctx.Process(
                    target=ps_client,
                    args=(server.address, server.secret, w, args.seconds, start_at, results),
                )
                for w in range(clients)
            ]
            for proc in procs:
                proc.start()
            while time.time() < start_at:
                time.sleep(0.01)
            cpu, wall = time.process_time(), time.perf_counter()
            counts = [results.get(timeout=120 + args.seconds) for _ in procs]
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            for proc in procs:
                proc.join(timeout=30)
        rate = sum(count / elapsed for count, elapsed in counts)
        latency = np.mean([elapsed / count for count, elapsed in counts]) * 1000
        print(
            f"{clients:>7} {rate:>10.1f} {rate * 2 * PARAMS * 4 / 1e6:>17.0f} "
            f"{cpu / wall:>13.2f} {cpu / wall / rate * 1000:>21.2f} {latency:>14.1f} "
            f"{os.getloadavg()[0]:>9.1f}",
            flush=True,
        )


# ----------------------------------------------------------------------------- workers


def part_workers(args) -> None:
    from distkeras import trainers
    from distkeras.data import numpy_to_frame
    from distkeras.datasets import load_mnist
    from distkeras.spark.session import get_spark_session

    os.environ["PYSPARK_PYTHON"] = sys.executable
    counts = (1, 2, 4, 8)
    spark = get_spark_session(
        f"local-cluster[{max(counts)},1,1024]", app_name="distkeras-scaling-workers"
    )
    (x, y), (x_test, y_test) = load_mnist()
    df = numpy_to_frame(spark, {"features": x, "label": y}, packed=True).cache()
    df.count()
    print(
        f"\n## workers: MNIST 8,000 rows, {args.epochs} epochs, "
        f"local-cluster[{max(counts)},1,1024] (executors of one core, time-sharing 2 cores)"
    )
    print(
        f"{'algorithm':<18} {'workers':>7} {'test acc':>9} {'commits/s':>10} "
        f"{'mean staleness':>15} {'seconds':>8}"
    )
    try:
        trainers.ADAG(mlp(), num_workers=max(counts)).train(df.limit(800), verbose=0)  # warm-up
        for name in args.algorithms.split(","):
            for workers in counts:
                model = mlp(TRAINERS[name].get("learning_rate", 0.001))
                trainer = getattr(trainers, name)(
                    model, num_epoch=args.epochs, num_workers=workers, seed=0
                )
                trainer.train(df, shuffle=True, verbose=0)
                stats = trainer.parameter_server_stats
                seconds = trainer.get_training_time()
                print(
                    f"{name:<18} {workers:>7} {test_accuracy(model, x_test, y_test):>9.4f} "
                    f"{stats['num_updates'] / seconds:>10.1f} {stats['mean_staleness']:>15.2f} "
                    f"{seconds:>8.1f}",
                    flush=True,
                )
    finally:
        spark.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="spill,memory,ps,workers")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3, help="spill: timed epochs per source")
    parser.add_argument("--seconds", type=float, default=3.0, help="ps: timed seconds per row")
    parser.add_argument("--sizes-mb", default="100,300,627,1000")
    parser.add_argument("--algorithms", default="ADAG,DOWNPOUR,DynSGD,AEASGD,EAMSGD,EASGD")
    args = parser.parse_args()
    parts = {"spill": part_spill, "memory": part_memory, "ps": part_ps, "workers": part_workers}
    for name in args.parts.split(","):
        parts[name](args)


if __name__ == "__main__":
    main()
