"""GPU check: the devices each task used, and samples/s on GPUs, in a few minutes.

With no GPU visible to TensorFlow it says so and exits 0. With N GPUs: `model.fit` on one GPU
in this process, then a local-cluster executor whose discovery script reports the N GPUs
(one task per GPU: the default trainer with one worker per GPU, and inference tasks), then
the same with `spark.task.resource.gpu.amount=0.5` (two workers sharing each GPU). For the
benchmark workload (MNIST 8,000 rows, MLP 784-256-128-10, Adam, batch 32) and a small
convnet, it prints samples/s and, for every worker and inference task, its host, process
and devices.

Usage: .venv/bin/python bench/gpu_check.py [--epochs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time

from train_bench import mlp  # the benchmark workload's model

from distkeras.quiet import import_tensorflow


def convnet():
    """A small convnet on 28x28 images: two 3x3 convolutions, pooling, one dense layer."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["acc"])
    return model


MODELS = {"mlp": mlp, "convnet": convnet}


def fit_rate(make, x, y, epochs: int) -> float:
    """Samples/s of `model.fit` in this process (its first GPU), after one traced epoch."""
    model = make()
    model.fit(x[:256], y[:256], batch_size=32, epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    return epochs * len(x) / (time.perf_counter() - started)


@contextlib.contextmanager
def gpu_session(gpus: int, task_amount: float):
    """A local-cluster session of one executor holding `gpus` GPUs, `task_amount` per task."""
    from distkeras.spark import get_spark_session

    with tempfile.TemporaryDirectory() as folder:
        script = os.path.join(folder, "discover_gpus.sh")
        addresses = json.dumps({"name": "gpu", "addresses": [str(i) for i in range(gpus)]})
        with open(script, "w") as out:
            out.write(f"#!/bin/sh\necho '{addresses}'\n")
        os.chmod(script, 0o755)
        cores = max(2, int(gpus / task_amount))
        spark = get_spark_session(
            f"local-cluster[1,{cores},8192]",
            app_name="distkeras-gpu-check",
            conf={
                "spark.worker.resource.gpu.amount": gpus,
                "spark.worker.resource.gpu.discoveryScript": script,
                "spark.executor.resource.gpu.amount": gpus,
                "spark.executor.resource.gpu.discoveryScript": script,
                "spark.task.resource.gpu.amount": task_amount,
                "spark.python.worker.reuse": "false",  # docs/cluster.md, GPUs
                "spark.python.daemon.module": "distkeras.executor.daemon",
            },
        )
        try:
            yield spark
        finally:
            spark.stop()


def train(label: str, make, df, epochs: int) -> None:
    """The default trainer, one worker per GPU task slot; prints samples/s and devices."""
    from distkeras import trainers

    trainer = trainers.DOWNPOUR(make())
    trainer.fit(df, epochs=epochs, verbose=0)
    samples = sum(s["samples"] for s in trainer.worker_summaries)
    print(f"{label}: {trainer.num_workers} workers, {samples / trainer.get_training_time():,.0f} "
          "samples/s")  # fmt: skip
    for s in sorted(trainer.worker_summaries, key=lambda s: s["worker"]):
        print(f"  worker {s['worker']}: {s['host']} pid {s['pid']}: {s['devices']}")


def inference_tasks(df, model) -> None:
    """Runs the prediction kernel in one task per GPU slot; prints what each task used and
    ModelPredictor's rows/s."""
    import pyarrow as pa

    from distkeras import inference, predictors
    from distkeras.executor.devices import task_devices
    from distkeras.executor.inference import predict_arrays

    plan = inference.make_plan(model, ["features"], 4096)
    rule = inference.prediction_rule(model)

    def score(batches):
        rows = sum(len(predict_arrays(plan, rule, b.to_struct_array())) for b in batches)
        record = {**dataclasses.asdict(task_devices()), "rows": rows}
        yield pa.RecordBatch.from_pylist([{"record": json.dumps(record)}])

    for row in df.mapInArrow(score, "record string").collect():
        record = json.loads(row.record)
        given = ",".join(record["addresses"]) or "none"
        print(f"  inference task: {record['host']} pid {record['pid']}: GPU {given}, "
              f"TensorFlow sees {record['visible']}")  # fmt: skip
    started = time.perf_counter()
    rows = predictors.ModelPredictor(model).predict(df).count()
    print(f"ModelPredictor: {rows / (time.perf_counter() - started):,.0f} rows/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    tf = import_tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        print(f"no GPU: TensorFlow sees none (built with CUDA: {tf.test.is_built_with_cuda()}); "
              "nothing to measure")  # fmt: skip
        return 0
    for gpu in gpus:  # this process shares the GPUs with the executors' workers
        tf.config.experimental.set_memory_growth(gpu, True)
    from distkeras.data import numpy_to_frame
    from distkeras.datasets import load_mnist

    (x, y), _ = load_mnist()
    print(f"{len(gpus)} GPU(s): {[gpu.name for gpu in gpus]}")
    for name, make in MODELS.items():
        print(f"model.fit {name} on one GPU: {fit_rate(make, x, y, args.epochs):,.0f} samples/s")
    for amount in (1.0, 0.5):
        print(f"-- spark.task.resource.gpu.amount={amount:g}")
        with gpu_session(len(gpus), amount) as spark:
            df = numpy_to_frame(spark, {"features": x, "label": y}, packed=True).cache()
            df.count()
            for name, make in MODELS.items():
                train(f"DOWNPOUR {name}", make, df, args.epochs)
            if amount == 1.0:  # one task per GPU; float rows, as users' frames hold them
                inference_tasks(numpy_to_frame(spark, {"features": x}), mlp())
    return 0


if __name__ == "__main__":
    sys.exit(main())
