"""Every example is run by a test that checks what it shows, and is committed with outputs.

The notebooks run headless (nbclient) with small settings (DISTKERAS_EXAMPLE_EPOCHS / _ROWS /
_TRIALS), those that work over Spark Connect against the tests' own Spark through its Connect
endpoint (SPARK_REMOTE, which `get_spark_session` honours): no Spark start-up of their own.
After its last cell, each notebook runs its CHECKS cell, which asserts what it claims.
examples/mnist.py runs under spark-submit in tests/test_cluster.py (standalone master).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
# The tuning notebook starts a Spark application of its own (it needs a SparkContext): it
# runs with the other separate applications, in `make test-apps`.
RUNS = [pytest.param(p, marks=pytest.mark.apps) if p.stem == "tuning" else p for p in NOTEBOOKS]
SMALL = {
    "DISTKERAS_EXAMPLE_EPOCHS": "1",
    "DISTKERAS_EXAMPLE_ROWS": "300",
    "DISTKERAS_EXAMPLE_TRIALS": "3",
}
# Run after each notebook's last cell, in its kernel: what the notebook shows must hold. On
# 300 rows and one epoch; chance is 0.10 on ten classes.
CHECKS = {
    "algorithms": """
from distkeras.spark.facts import is_connect
assert is_connect(spark)
assert list(results.index) == list(RUNS), results
assert (results["samples seen"] >= ROWS).all(), results
# ADAG scored 0.249 in one run (its rate is the model's: one epoch of 300 rows is little)
assert (results["test accuracy"] > 0.18).all(), results
""",
    "mnist": """
from distkeras.spark.facts import is_connect
assert is_connect(spark)
assert trainer.parameter_server_stats["num_updates"] > 0
assert history.epoch == [0] and history.history["val_accuracy"][-1] > 0.3, history.history
assert evaluate(model, test_df)["accuracy"] > 0.3
assert same and os.path.exists(path)
assert predicted.filter("predicted < 0 OR predicted > 9").count() == 0
""",
    "tuning": """
assert len(study.trials) == TRIALS, study.trials
assert pruned and study.best_trial.state == optuna.trial.TrialState.COMPLETE
""",
    "spark_ml_pipeline": """
from distkeras.spark.facts import is_connect
assert is_connect(spark)
assert metrics["accuracy"] > 0.2, metrics
assert len(keras_stage.history.epoch) == EPOCHS
assert len(cv_model.avgMetrics) == 2 and max(cv_model.avgMetrics) > 0.15, cv_model.avgMetrics
""",
}
# Notebooks that start their own Spark: tuning.ipynb sets Spark's log level through
# `spark.sparkContext`, which a Spark Connect session does not have.
OWN_SPARK = {"tuning"}
# Every example file, and the test (file, function) that runs it.
EXAMPLE_TESTS = {
    **{f"{name}.ipynb": ("test_examples.py", "test_notebook_runs") for name in CHECKS},
    "mnist.py": (
        "test_cluster.py",
        "test_spark_submit_of_the_mnist_example_to_a_standalone_cluster",
    ),
}


def kernel_in_this_python(folder: Path) -> str:
    """Registers a Jupyter kernel that runs this interpreter (the venv's) and returns its name.

    A kernel spec in JUPYTER_PATH wins over any user-wide `python3` spec, so the notebooks
    import the distkeras under test.
    """
    name = "distkeras-tests"
    spec = folder / "kernels" / name
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": name, "language": "python"})
    )
    return name


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", RUNS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, connect_url, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))  # where this process finds the kernel
    env = {  # the kernel's; SPARK_REMOTE there only, this process stays classic
        **os.environ,
        **SMALL,
        "DISTKERAS_EXAMPLE_OUTPUT": str(tmp_path / "model.keras"),
    }
    if path.stem not in OWN_SPARK:
        env["SPARK_REMOTE"] = connect_url
    book = nbformat.read(path, as_version=4)
    book.cells.append(nbformat.v4.new_code_cell(CHECKS[path.stem]))
    client = NotebookClient(
        book,
        kernel_name=kernel_in_this_python(tmp_path),
        timeout=600,  # per cell: the algorithms notebook trains nine models in one
        startup_timeout=300,  # a kernel importing TensorFlow at a load of 20 needs minutes
        resources={"metadata": {"path": str(EXAMPLES)}},
    )
    # Raises CellExecutionError, naming the cell, when a cell (or the checks) raises.
    client.execute(env=env)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_with_outputs(path):
    import nbformat

    book = nbformat.read(path, as_version=4)
    code = [cell for cell in book.cells if cell.cell_type == "code"]
    outputs = [output for cell in code for output in cell.outputs]
    assert all(cell.execution_count for cell in code), "execute every cell before committing"
    assert not [o for o in outputs if o.output_type == "error"]
    assert [o for o in outputs if "image/png" in o.get("data", {})], "no plot in the outputs"


def test_every_example_is_tested():
    """A new example needs its test (and, for a notebook, its CHECKS entry)."""
    examples = {p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".ipynb")}
    assert examples == set(EXAMPLE_TESTS)
    for file, function in EXAMPLE_TESTS.values():
        assert f"def {function}(" in (ROOT / "tests" / file).read_text(), (file, function)
