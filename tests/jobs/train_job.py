"""A training run in its own process, for tests that need their own Spark master or signals.

Trains the tests' MLP on MNIST with one trainer and prints one JSON line: test accuracy,
parameter-server stats and worker summaries, or {"interrupted": ...} after Ctrl-C.
Prints "epoch N" after each epoch so that a test can time its signal; `--then-interrupt`
runs a second fit after the first's result, for a Ctrl-C test to share the process.
"""

import argparse
import json
import socket
import sys
import time

import faults  # tests/jobs/faults.py, next to this script
import keras
import numpy as np
from pyspark import cloudpickle

from distkeras import trainers
from distkeras.datasets import load_mnist
from distkeras.spark.session import get_spark_session
from distkeras.trainers import run as trainers_run


class EpochPrinter(keras.callbacks.Callback):
    """Prints "epoch N" after each epoch and, given a path, leaves `<path>.epoch-N` too."""

    def __init__(self, path=None, prefix=""):
        super().__init__()
        self.path = path
        self.prefix = prefix

    def on_epoch_end(self, epoch, logs=None):
        if self.path is not None:
            open(f"{self.path}.epoch-{epoch}", "w").close()
        print(f"{self.prefix}epoch {epoch}", flush=True)


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a new server would
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def mnist_mlp():
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


def train(args, mnist, epochs, rows, fault=None, ps_port=0, checkpoint_dir=None, prefix=""):
    """One fit; returns its JSON result, or prints {"interrupted": ...} and exits with 130
    after Ctrl-C."""
    (x, y), (x_test, y_test) = mnist
    model = mnist_mlp()
    trainer = getattr(trainers, args.trainer)(
        model,
        num_workers=2,
        seed=0,
        ps_port=ps_port,
        checkpoint_dir=checkpoint_dir,
        checkpoint_interval=1.0,
    )
    marker = None  # the fault's marker file; the driver's epoch files are named after it
    plain_plan = trainers_run.WorkerPlan
    if fault:
        worker, after, action, marker = fault.split(":")
        wait_for = (
            None if args.fault_after_epoch is None else f"{marker}.epoch-{args.fault_after_epoch}"
        )
        # The executors cannot import this folder's modules: the hook travels by value.
        cloudpickle.register_pickle_by_value(faults)
        hook = faults.exchange_fault(int(worker), int(after), action, marker, wait_for=wait_for)
        trainers_run.WorkerPlan = faults.plan_with(hook)
    started = time.monotonic()
    try:
        trainer.fit(
            x[:rows], y[:rows], epochs=epochs, callbacks=[EpochPrinter(marker, prefix)], verbose=0
        )
    except KeyboardInterrupt:
        result = {
            "interrupted": True,
            "port_free": port_is_free(ps_port),
            "updates": trainer.parameter_server_stats.get("num_updates"),
            "weights_finite": bool(all(np.isfinite(w).all() for w in trainer.model.get_weights())),
            "ended": time.time(),
        }
        print(json.dumps(result), flush=True)
        sys.exit(130)
    finally:
        trainers_run.WorkerPlan = plain_plan
    predictions = np.argmax(model.predict(x_test, verbose=0), axis=1)
    return {
        "accuracy": float(np.mean(predictions == y_test)),
        "stats": trainer.parameter_server_stats,
        "summaries": trainer.worker_summaries,
        "seconds": time.monotonic() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--trainer", default="ADAG")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--fault", default=None, help="worker:after_commits:action:marker")
    parser.add_argument(
        "--fault-after-epoch",
        type=int,
        default=None,
        help="the fault waits until the driver has ended this epoch (0-based)",
    )
    parser.add_argument(
        "--then-interrupt",
        nargs=2,
        metavar=("PS_PORT", "CHECKPOINT_DIR"),
        default=None,
        help="after the first run, a second one of 200 epochs on 2,000 rows, printing "
        '"long epoch N", for a test to stop with Ctrl-C (its server on PS_PORT)',
    )
    args = parser.parse_args()

    spark = get_spark_session(args.master, app_name="distkeras-test-job")
    mnist = load_mnist()
    result = train(args, mnist, args.epochs, 8000, args.fault)
    print(json.dumps({**result, "master": spark.sparkContext.master}), flush=True)
    if args.then_interrupt:
        port, folder = args.then_interrupt
        train(args, mnist, 200, 2000, ps_port=int(port), checkpoint_dir=folder, prefix="long ")
    spark.stop()


if __name__ == "__main__":
    main()
