"""Every notebook runs headless (nbclient) and is committed with its outputs.

Small settings come in through DISTKERAS_EXAMPLE_EPOCHS / _ROWS / _TRIALS; each run
pays its own Spark and TensorFlow start-up, so the data are a few hundred rows.
examples/mnist.py runs under spark-submit in tests/test_cluster.py (standalone master).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
SMALL = {
    "DISTKERAS_EXAMPLE_EPOCHS": "1",
    "DISTKERAS_EXAMPLE_ROWS": "300",
    "DISTKERAS_EXAMPLE_TRIALS": "3",
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
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setenv("DISTKERAS_EXAMPLE_OUTPUT", str(tmp_path / "model.keras"))
    for key, value in SMALL.items():
        monkeypatch.setenv(key, value)
    book = nbformat.read(path, as_version=4)
    client = NotebookClient(
        book,
        kernel_name=kernel_in_this_python(tmp_path),
        timeout=600,
        resources={"metadata": {"path": str(EXAMPLES)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, when a cell raises


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
    assert {p.stem for p in NOTEBOOKS} >= {"mnist", "algorithms", "tuning"}
    assert (EXAMPLES / "mnist.py").exists()
