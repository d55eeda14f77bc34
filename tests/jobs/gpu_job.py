"""GPUs as Spark schedules them, on a cluster whose discovery script reports two fake GPUs.

One local-cluster executor with 4 cores and GPUs "0" and "1" (one per task): trains and
predicts with the real trainer and inference kernels, and prints one JSON line of what each
task was given and made visible. TensorFlow sees no GPU here, so the tasks that are allowed
the CPU fall back to it, and those that are not fail by name. Run by tests/test_gpu.py.
"""

import argparse
import dataclasses
import json
import sys

import keras
import numpy as np

from distkeras import inference, predictors, trainers
from distkeras.data import numpy_to_frame
from distkeras.executor.devices import task_devices
from distkeras.executor.inference import predict_arrays
from distkeras.spark import get_spark_session

ROWS, FEATURES = 256, 8


def model():
    net = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(2, activation="softmax")])
    net.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return net


def failure(action) -> dict:
    """Runs `action` in a job group; returns its error and the Spark jobs it started."""
    spark = get_spark_session()
    group = "distkeras-gpu-check"
    spark.sparkContext.setJobGroup(group, "gpu check")
    try:
        action()
        error = "no error"
    except Exception as exc:  # the test reads the message
        error = f"{type(exc).__name__}: {exc}"
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    return {"error": error, "jobs": spark.sparkContext.statusTracker().getJobIdsForGroup(group)}


def kernel_tasks(frame, plan, rule: str, gpus: float, barrier: bool) -> list[dict]:
    """Runs the prediction kernel in tasks that take `gpus` GPUs each; returns each task's
    TaskDevices (as the kernel chose them) with the rows it scored."""
    from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

    def score(batches):
        import pyarrow as pa

        rows = 0
        for batch in batches:
            rows += len(predict_arrays(plan, rule, batch.to_struct_array()))
        record = dataclasses.asdict(task_devices(plan.allow_cpu_fallback))  # the kernel's own
        yield pa.RecordBatch.from_pylist([{"record": json.dumps({**record, "rows": rows})}])

    profile = ResourceProfileBuilder().require(TaskResourceRequests().cpus(1).resource("gpu", gpus))
    rows = frame.mapInArrow(score, "record string", barrier=barrier, profile=profile.build)
    return [json.loads(row.record) for row in rows.collect()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--discovery-script", required=True)
    args = parser.parse_args()
    spark = get_spark_session(
        "local-cluster[1,4,1024]",
        app_name="distkeras-gpu-job",
        conf={
            "spark.worker.resource.gpu.amount": 2,
            "spark.worker.resource.gpu.discoveryScript": args.discovery_script,
            "spark.executor.resource.gpu.amount": 2,
            "spark.executor.resource.gpu.discoveryScript": args.discovery_script,
            "spark.task.resource.gpu.amount": 1,
            "spark.task.maxFailures": 1,  # the failures below are meant; no retries
            # Spark's own refusal of a barrier stage too large for the GPUs: at once, not after
            # 40 checks 15 s apart (distkeras' check comes first; this bounds a test of it).
            "spark.scheduler.barrier.maxConcurrentTasksCheck.maxFailures": 1,
            "spark.scheduler.barrier.maxConcurrentTasksCheck.interval": "1s",
            # Workers forked from a daemon that imported Keras: the import lists no device.
            "spark.python.daemon.module": "distkeras.executor.daemon",
        },
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, FEATURES)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    result = {}
    too_many = trainers.DOWNPOUR(model(), num_workers=3, allow_cpu_fallback=True)
    result["too_many"] = failure(lambda: too_many.fit(x, y, epochs=1, verbose=0))
    strict = trainers.DOWNPOUR(model())
    result["no_fallback"] = failure(lambda: strict.fit(x, y, epochs=1, verbose=0))
    trainer = trainers.DOWNPOUR(model(), allow_cpu_fallback=True)
    trainer.fit(x, y, epochs=1, verbose=0)
    result["num_workers"] = trainer.num_workers
    result["workers"] = trainer.worker_summaries
    frame = numpy_to_frame(spark, {"features": x[:64]}).repartition(2).cache()
    net = model()
    plan = inference.make_plan(net, ["features"], 32, allow_cpu_fallback=True)
    rule = inference.prediction_rule(net)
    result["shared"] = kernel_tasks(frame, plan, rule, gpus=0.5, barrier=True)
    result["both"] = kernel_tasks(frame, plan, rule, gpus=2, barrier=False)
    result["predictor_no_fallback"] = failure(
        lambda: predictors.ModelPredictor(model()).predict(frame).collect()
    )
    scored = predictors.ModelPredictor(model(), allow_cpu_fallback=True).predict(frame)
    result["predicted_rows"] = scored.count()
    labelled = numpy_to_frame(spark, {"features": x[:64], "label": y[:64]})
    result["evaluated"] = predictors.evaluate(model(), labelled, allow_cpu_fallback=True)
    print(json.dumps(result), flush=True)
    spark.stop()


if __name__ == "__main__":
    sys.exit(main())
