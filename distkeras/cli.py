"""The `distkeras` command: train, predict and demo on Spark from the shell.

Parsing and input checks live here (bad options or paths: one line on stderr, exit 2);
training is distkeras.trainers', inference distkeras.predictors', the demo distkeras.demo's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from distkeras.algorithms import registry
from distkeras.errors import DistKerasError
from distkeras.quiet import BACKEND_ENV, import_keras

USAGE_ERROR = 2
RUN_ERROR = 1

FORMATS = ("parquet", "csv")
BACKENDS = ("tensorflow", "jax", "torch")  # what KERAS_BACKEND takes
_ASSEMBLED = "__distkeras_features"


class UsageError(Exception):
    """A bad option, path or column: reported in one line with exit code 2."""


# ----------------------------------------------------------------------------- parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


class _ColumnNames(argparse.Action):
    """Column names given as `a b c` or `a,b,c` (the old dist-keras spelling), or both."""

    def __call__(self, parser, namespace, values, option_string=None):
        names = [name.strip() for value in values for name in value.split(",")]
        if not all(names):
            parser.error(f"{option_string}: empty column name in {' '.join(values)!r}")
        setattr(namespace, self.dest, names)


def _add_spark_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--master",
        default="local[*]",
        help="Spark master URL when not run by spark-submit (default: %(default)s, an "
        "embedded Spark using every core)",
    )


def _add_data_options(parser: argparse.ArgumentParser, features_help: str) -> None:
    parser.add_argument(
        "--data",
        required=True,
        metavar="PATH",
        help="the data: a Parquet file or folder, or a CSV file or folder with a header row",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="format of --data (and --validation); default: from the extension "
        "(.csv is CSV, anything else Parquet)",
    )
    parser.add_argument(
        "--features-col",
        nargs="+",
        action=_ColumnNames,
        default=["features"],
        metavar="COL",
        help=features_help + " Several columns: `a b c` or `a,b,c`.",
    )


def build_parser() -> argparse.ArgumentParser:
    """The `distkeras` argument parser with its three subcommands."""
    parser = argparse.ArgumentParser(
        prog="distkeras",
        description="Distributed training of Keras 3 models on Apache Spark.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train a saved Keras model on a Parquet or CSV data set",
        description="Trains a saved, compiled Keras model (.keras) on a Parquet or CSV data "
        "set with a distkeras trainer, shows a progress bar, writes the trained model and "
        "prints its final metrics.",
    )
    _add_data_options(
        train,
        "feature column(s) (default: features). One column holding an ML vector, an array "
        "or a number per row; several numeric columns are assembled into one vector for a "
        "model with one input, or fed to the inputs in order for a model with several",
    )
    train.add_argument(
        "--model",
        required=True,
        metavar="MODEL.keras",
        help="the compiled Keras model to train, saved with model.save()",
    )
    train.add_argument(
        "--label-col", default="label", metavar="COL", help="label column (default: label)"
    )
    train.add_argument(
        "--sample-weight-col",
        metavar="COL",
        help="a column of per-row loss weights (Keras' sample_weight); default: none",
    )
    train.add_argument(
        "--trainer",
        choices=registry.names(),
        default=registry.DEFAULT,
        help="distributed algorithm (default: %(default)s); see the docs' Trainers page",
    )
    train.add_argument(
        "--workers",
        type=_positive_int,
        default=2,
        metavar="N",
        help="parallel workers, one Spark task each, all running at once (default: 2; "
        "for `ensemble`, the number of members)",
    )
    train.add_argument(
        "--epochs", type=_positive_int, default=1, metavar="E", help="passes over the data"
    )
    train.add_argument(
        "--batch-size", type=_positive_int, default=32, metavar="B", help="rows per local step"
    )
    train.add_argument(
        "--communication-window",
        type=_positive_int,
        metavar="W",
        help="local steps between two exchanges with the parameter server (default: the "
        "trainer's own)",
    )
    train.add_argument("--seed", type=int, help="seed of the workers' shuffles")
    train.add_argument(
        "--validation",
        metavar="PATH",
        help="validation data with the same columns and format as --data, evaluated at "
        "each epoch end (val_* metrics)",
    )
    train.add_argument(
        "--output",
        required=True,
        metavar="OUT.keras",
        help="where to write the trained model (a .keras file; replaced if present)",
    )
    train.add_argument(
        "--json",
        action="store_true",
        help="end with a one-line JSON summary (metrics, rows, time) on stdout",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_spark_options(train)

    predict = commands.add_parser(
        "predict",
        help="append a saved Keras model's predictions to a data set",
        description="Predicts with a saved Keras model on the Spark executors, in batches, "
        "and writes the data with a prediction column (an array of floats) to Parquet.",
    )
    predict.add_argument(
        "--model", required=True, metavar="MODEL.keras", help="the Keras model (.keras)"
    )
    _add_data_options(
        predict,
        "feature column(s) (default: features); several numeric columns are assembled "
        "into one vector for a model with one input",
    )
    predict.add_argument(
        "--output",
        required=True,
        metavar="OUT.parquet",
        help="the Parquet folder to write: every input column plus --prediction-col",
    )
    predict.add_argument(
        "--prediction-col",
        default="prediction",
        metavar="COL",
        help="name of the added column (default: prediction)",
    )
    predict.add_argument(
        "--batch-size",
        type=_positive_int,
        default=1024,
        metavar="B",
        help="rows per model call on the executors (default: 1024)",
    )
    predict.add_argument(
        "--overwrite", action="store_true", help="replace --output if it already exists"
    )
    _add_spark_options(predict)

    demo = commands.add_parser(
        "demo",
        help="train a small MLP on scikit-learn's digits (what `make demo` runs)",
        description="Trains a small MLP with two workers of the default trainer on scikit-learn's "
        "digits, with a progress bar, and prints the held-out accuracy. No download.",
    )
    demo.add_argument("--epochs", type=_positive_int, default=10, help="passes over the data")
    demo.add_argument("--workers", type=_positive_int, default=2, help="parallel workers")
    demo.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="Keras backend of the driver and the workers (default: KERAS_BACKEND or Keras' "
        "own choice; docs/backends.md)",
    )
    _add_spark_options(demo)
    return parser


# ----------------------------------------------------------------------------- input checks


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _is_remote(path: str) -> bool:
    return "://" in path


def _data_format(path: str, explicit: str | None) -> str:
    if explicit:
        return explicit
    return "csv" if path.rstrip("/").lower().endswith(".csv") else "parquet"


def _check_input_path(option: str, path: str) -> None:
    if not _is_remote(path) and not os.path.exists(path):
        raise UsageError(f"{option}: no such file or folder: {path}")


def _check_output_path(option: str, path: str, suffix: str | None = None) -> None:
    if suffix and not path.endswith(suffix):
        raise UsageError(f"{option}: expected a path ending in {suffix}, got {path}")
    if _is_remote(path):
        return
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise UsageError(f"{option}: folder does not exist: {parent}")


def _load_model(path: str):
    _check_input_path("--model", path)
    import keras

    try:
        return keras.saving.load_model(path)
    except Exception as error:  # a corrupt or foreign file: the user's input, not a bug
        raise UsageError(f"--model: cannot load {path}: {_one_line(error)}") from error


def _read(spark, path: str, data_format: str, option: str):
    _check_input_path(option, path)
    try:
        if data_format == "csv":
            return spark.read.csv(path, header=True, inferSchema=True)
        return spark.read.parquet(path)
    except Exception as error:  # Spark's AnalysisException: unreadable or not that format
        raise UsageError(
            f"{option}: cannot read {path} as {data_format}: {_one_line(error)}"
        ) from error


def _feature_columns(df, columns: list[str], model, option: str = "--features-col"):
    """Returns (df, feature columns): several numeric scalar columns for a one-input model
    are assembled into one vector column."""
    from distkeras.data import SCALAR, column_kind

    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UsageError(
            f"{option}: no column {', '.join(missing)} in the data (columns: "
            f"{', '.join(df.columns)})"
        )
    if len(columns) == 1 or len(model.inputs) > 1:
        return df, columns
    kinds = {c: column_kind(df.schema[c].dataType) for c in columns}
    not_scalar = [c for c, kind in kinds.items() if kind != SCALAR]
    if not_scalar:
        raise UsageError(
            f"{option}: several columns for a model with one input must all be numbers; "
            f"not numbers: {', '.join(not_scalar)}"
        )
    from pyspark.ml.feature import VectorAssembler

    assembler = VectorAssembler(inputCols=columns, outputCol=_ASSEMBLED)
    return assembler.transform(df), [_ASSEMBLED]


def _session(master: str):
    from distkeras.spark.session import get_spark_session

    return get_spark_session(master, app_name="distkeras-cli")


# ----------------------------------------------------------------------------- commands


def _make_trainer(args, model, features):
    from distkeras.trainers import make_trainer

    options = {
        "features_col": features,
        "label_col": args.label_col,
        "sample_weight_col": args.sample_weight_col,
        "batch_size": args.batch_size,
        "num_epoch": args.epochs,
        "seed": args.seed,
    }
    if args.communication_window is not None:
        if registry.spec(args.trainer).workers == registry.ONE:
            raise UsageError(f"--communication-window: the {args.trainer} trainer does not take it")
        options["communication_window"] = args.communication_window
    return make_trainer(args.trainer, model, num_workers=args.workers, **options)


def _train(args) -> int:
    data_format = _data_format(args.data, args.format)
    _check_input_path("--data", args.data)
    if args.validation:
        _check_input_path("--validation", args.validation)
    _check_output_path("--output", args.output, ".keras")
    model = _load_model(args.model)
    if not model.compiled:
        raise UsageError(
            f"--model: {args.model} is not compiled; compile it (optimizer, loss) before saving"
        )
    spark = _session(args.master)
    df = _read(spark, args.data, data_format, "--data")
    df, features = _feature_columns(df, args.features_col, model)
    if args.label_col not in df.columns:
        raise UsageError(f"--label-col: no column {args.label_col} in the data")
    validation_df = None
    if args.validation:
        validation_df = _read(spark, args.validation, data_format, "--validation")
        validation_df, _ = _feature_columns(validation_df, args.features_col, model)
    trainer = _make_trainer(args, model, features)
    verbose = 0 if args.quiet else 1
    try:
        history = trainer.fit(df, validation_data=validation_df, verbose=verbose)
    except (ValueError, TypeError) as error:  # raised by the checks before any Spark job
        raise UsageError(str(error)) from error
    trained = trainer.ensemble_model() if hasattr(trainer, "ensemble_model") else trainer.model
    trained.save(args.output)
    metrics = {name: float(values[-1]) for name, values in history.history.items() if values}
    if not args.json:
        for name, value in metrics.items():
            print(f"{name}: {value:.4f}")
        print(f"training time: {trainer.get_training_time():.1f} s; model written to {args.output}")
    else:
        summary = {
            "trainer": args.trainer,
            "workers": args.workers,
            "epochs": len(history.epoch),
            "batch_size": args.batch_size,
            "training_time": round(trainer.get_training_time(), 3),
            "metrics": metrics,
            "output": args.output,
        }
        print(json.dumps(summary))
    return 0


def _predict(args) -> int:
    data_format = _data_format(args.data, args.format)
    _check_input_path("--data", args.data)
    _check_output_path("--output", args.output)
    if not args.overwrite and not _is_remote(args.output) and os.path.exists(args.output):
        raise UsageError(f"--output: {args.output} exists; pass --overwrite to replace it")
    model = _load_model(args.model)
    spark = _session(args.master)
    df = _read(spark, args.data, data_format, "--data")
    if args.prediction_col in df.columns:
        raise UsageError(f"--prediction-col: the data already has a column {args.prediction_col}")
    original = df.columns
    df, features = _feature_columns(df, args.features_col, model)
    from pyspark.ml.functions import vector_to_array

    from distkeras.predictors import ModelPredictor

    try:
        predictor = ModelPredictor(
            model, features, output_col=args.prediction_col, batch_size=args.batch_size
        )
        predicted = predictor.predict(df)
    except (ValueError, TypeError) as error:  # column checks, before any Spark job
        raise UsageError(str(error)) from error
    output = predicted.select(
        *[f"`{c}`" for c in original],
        vector_to_array(predicted[args.prediction_col], "float32").alias(args.prediction_col),
    )
    output.write.mode("overwrite" if args.overwrite else "errorifexists").parquet(args.output)
    rows = spark.read.parquet(args.output).count()
    print(f"{rows} rows with `{args.prediction_col}` written to {args.output}")
    return 0


def _demo(args) -> int:
    from distkeras import demo

    accuracy = demo.run(args.master, args.epochs, args.workers)
    print(f"Held-out accuracy on the digits: {accuracy:.4f}")
    return 0


COMMANDS = {"train": _train, "predict": _predict, "demo": _demo}


def main(argv=None) -> int:
    """Runs `distkeras COMMAND ...`; returns the exit code (2 for bad options or paths)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "backend", None):  # before Keras is imported: it fixes its backend then
        os.environ[BACKEND_ENV] = args.backend
    import_keras()  # before Spark and the model: without TensorFlow's start-up chatter
    try:
        return COMMANDS[args.command](args)
    except UsageError as error:
        print(f"distkeras {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return USAGE_ERROR
    except (RuntimeError, DistKerasError) as error:  # no Java, too few slots, a failed worker
        print(f"distkeras {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return RUN_ERROR


if __name__ == "__main__":
    sys.exit(main())
