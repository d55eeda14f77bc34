"""The `distkeras` command: help, bad-input exits, and train/predict end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distkeras import cli

COMMANDS = ("train", "predict", "demo")


def subparsers():
    parser = cli.build_parser()
    (action,) = [a for a in parser._actions if a.dest == "command"]
    return action.choices


@pytest.mark.parametrize("command", COMMANDS)
def test_help_explains_every_option(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--master" in capsys.readouterr().out
    undocumented = [a.dest for a in subparsers()[command]._actions if not a.help]
    assert not undocumented


def test_console_script_reports_a_bad_path_in_one_line(tmp_path):
    script = Path(sys.executable).with_name("distkeras")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "distkeras.cli"]
    result = subprocess.run(
        [*command, "train", "--data", str(tmp_path / "missing.parquet")]
        + ["--model", "m.keras", "--output", str(tmp_path / "out.keras")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"distkeras train: error: --data: no such file or folder: {tmp_path / 'missing.parquet'}"
    ]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A compiled 4-input model and the same 240 rows as Parquet (a vector column) and CSV."""
    import keras
    import pandas as pd

    folder = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
    frame = pd.DataFrame({name: x[:, i] for i, name in enumerate("abcd")})
    frame["label"] = y
    frame.to_csv(folder / "data.csv", index=False)
    pd.DataFrame({"features": list(x), "label": y}).to_parquet(folder / "data.parquet")

    def mlp():
        return keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(8, activation="relu"),
                keras.layers.Dense(2, activation="softmax"),
            ]
        )

    mlp().save(folder / "uncompiled.keras")
    model = mlp()
    model.compile(
        keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.save(folder / "model.keras")
    (folder / "not_a_model.keras").write_text("no")
    return folder


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_train_and_predict_on_parquet(spark, files, tmp_path, capsys):
    output = tmp_path / "trained.keras"
    code, out, _ = run(
        ["train", "--data", files / "data.parquet", "--model", files / "model.keras"]
        + ["--output", output, "--epochs", 1, "--batch-size", 16, "--workers", 2, "--json"],
        capsys,
    )
    assert code == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["trainer"] == "downpour" and summary["epochs"] == 1
    assert set(summary["metrics"]) == {"loss", "accuracy"}
    assert output.exists()

    predictions = tmp_path / "predictions.parquet"
    code, out, _ = run(
        ["predict", "--model", output, "--data", files / "data.parquet", "--output", predictions],
        capsys,
    )
    assert code == 0 and "240 rows" in out
    result = spark.read.parquet(str(predictions)).toPandas()
    assert list(result.columns) == ["features", "label", "prediction"]
    assert np.allclose(np.stack(result["prediction"]).sum(axis=1), 1.0, atol=1e-4)


@pytest.mark.slow
def test_train_and_predict_on_csv_columns(spark, files, tmp_path, capsys):
    output = tmp_path / "trained.keras"
    csv = files / "data.csv"
    code, out, _ = run(
        ["train", "--data", csv, "--features-col", "a,b", "c", "d", "--validation", csv]
        + ["--model", files / "model.keras", "--output", output, "--trainer", "downpour"]
        + ["--quiet"],
        capsys,
    )
    assert code == 0
    assert "val_accuracy:" in out and output.exists()

    predictions = tmp_path / "predictions.parquet"
    argv = ["predict", "--model", output, "--data", csv, "--features-col", "a", "b", "c", "d"]
    code, _, _ = run([*argv, "--output", predictions], capsys)
    assert code == 0
    result = spark.read.parquet(str(predictions))
    assert result.columns == ["a", "b", "c", "d", "label", "prediction"]
    assert result.count() == 240

    code, _, err = run([*argv, "--output", predictions], capsys)  # exists: refused
    assert code == 2 and "--overwrite" in err


def test_features_col_takes_spaces_or_commas():
    from distkeras.cli import build_parser

    parse = build_parser().parse_args
    common = ["train", "--data", "d", "--model", "m", "--output", "o.keras"]
    assert parse([*common, "--features-col", "a,b,c"]).features_col == ["a", "b", "c"]
    assert parse([*common, "--features-col", "a", "b,c"]).features_col == ["a", "b", "c"]
    assert parse(common).features_col == ["features"]


def test_demo_takes_a_keras_backend(capsys):
    from distkeras.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["demo", "--backend", "jax"]).backend == "jax"
    assert parse(["demo"]).backend is None  # KERAS_BACKEND or Keras' own choice
    with pytest.raises(SystemExit):
        parse(["demo", "--backend", "theano"])
    assert "invalid choice: 'theano'" in capsys.readouterr().err


def bad_inputs(files, tmp):
    model, parquet = files / "model.keras", files / "data.parquet"
    train = ["train", "--data", parquet, "--model", model, "--output", tmp / "o.keras"]
    return {
        "missing data": (["train", "--data", tmp / "x.parquet", "--model", model]
                         + ["--output", tmp / "o.keras"], "--data: no such file"),
        "missing model": (["train", "--data", parquet, "--model", tmp / "m.keras"]
                          + ["--output", tmp / "o.keras"], "--model: no such file"),
        "not a model": (["train", "--data", parquet, "--model", files / "not_a_model.keras"]
                        + ["--output", tmp / "o.keras"], "--model: cannot load"),
        "uncompiled": (["train", "--data", parquet, "--model", files / "uncompiled.keras"]
                       + ["--output", tmp / "o.keras"], "not compiled"),
        "output suffix": ([*train[:-1], tmp / "o.h5x"], "ending in .keras"),
        "output folder": ([*train[:-1], tmp / "no" / "o.keras"], "folder does not exist"),
        "missing column": ([*train, "--features-col", "zz"], "no column zz"),
        "missing label": ([*train, "--label-col", "zz"], "no column zz"),
        "missing weight": ([*train, "--sample-weight-col", "zz"],
                           "`zz` (from `sample_weight_col`)"),
        "csv as parquet": ([*train[:2], files / "data.csv", *train[3:], "--format", "parquet"],
                           "cannot read"),
        "window for single": ([*train, "--trainer", "single", "--communication-window", "4"],
                              "single trainer"),
        "zero workers": ([*train, "--workers", "0"], "positive integer"),
        "unknown trainer": ([*train, "--trainer", "sgd"], "invalid choice"),
        "predict missing data": (["predict", "--model", model, "--data", tmp / "x.csv"]
                                 + ["--output", tmp / "p.parquet"], "--data: no such file"),
    }  # fmt: skip


CASES = list(bad_inputs(Path("f"), Path("t")))


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_line(case, spark, files, tmp_path, capsys):
    argv, expected = bad_inputs(files, tmp_path)[case]
    try:
        code, _, err = run(argv, capsys)
    except SystemExit as exit_info:  # argparse's own errors
        code, err = exit_info.code, capsys.readouterr().err
        err = err.strip().splitlines()[-1]
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert expected in err
