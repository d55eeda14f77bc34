"""Checks of user input, run on the driver before any training job starts.

Every error names the argument or column and echoes the value received, in the style of
Keras ("Expected `x` ... Received: x=...").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from distkeras.data import PACKED, PACKED_DTYPE, SCALAR, column_kind, columnar_frame


def positive_int(name: str, value) -> int:
    """Returns `value` if it is an int >= 1; raises TypeError/ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Expected `{name}` to be an int. Received: {name}={value!r}")
    if value < 1:
        raise ValueError(f"Expected `{name}` to be at least 1. Received: {name}={value!r}")
    return value


def positive_number(name: str, value) -> float:
    """Returns `value` as a float if it is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Expected `{name}` to be a number. Received: {name}={value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"Expected `{name}` to be a positive number. Received: {name}={value!r}")
    return float(value)


def column_list(name: str, value) -> list[str]:
    """Accepts one column name or a non-empty list of names; returns a list."""
    columns = [value] if isinstance(value, str) else value
    if not isinstance(columns, (list, tuple)) or not columns:
        raise TypeError(
            f"Expected `{name}` to be a column name or a list of names. Received: {name}={value!r}"
        )
    for column in columns:
        if not isinstance(column, str):
            raise TypeError(f"Expected `{name}` to hold column names. Received: {name}={value!r}")
    return list(columns)


def check_columns(df, columns: Sequence[str], argument: str) -> None:
    """Checks that each column exists and is numeric (scalar, array or ML vector).

    Raises:
        ValueError: a column is missing; the message lists the available ones.
        TypeError: a column is not numeric; the message gives its type.
    """
    for column in columns:
        if column not in df.columns:
            raise ValueError(
                f"Column `{column}` (from `{argument}`) is not in the DataFrame. "
                f"Available columns: {df.columns}. Received: {argument}={column!r}"
            )
        data_type = df.schema[column].dataType
        if column_kind(data_type) is None:
            raise TypeError(
                f"Column `{column}` (from `{argument}`) must be numeric: a number, an array of "
                f"numbers, an ML Vector or binary packed float32. Received: a column of type "
                f"{data_type.simpleString()}"
            )


def sample_widths(df, columns: Sequence[str]) -> dict[str, int]:
    """Reads one row to learn each column's width (1 for scalars).

    Raises:
        ValueError: if the DataFrame is empty, or a binary column's rows are not whole
            float32 values.
    """

    kinds = {c: column_kind(df.schema[c].dataType) for c in columns}
    frame = columnar_frame(df, columns)  # vectors become arrays, as the workers see them
    rows = frame.select(*[_width_probe(kinds[c], c).alias(c) for c in columns]).head(1)
    if not rows:
        raise ValueError("The DataFrame is empty: there is nothing to train on. Received: 0 rows")
    widths = {}
    for column in columns:
        width = int(rows[0][column])
        if kinds[column] == PACKED:
            if width % PACKED_DTYPE.itemsize:
                raise ValueError(
                    f"Column `{column}` is binary, so it must hold packed float32 values (4 "
                    f"bytes each). Received: rows of {width} bytes"
                )
            width //= PACKED_DTYPE.itemsize
        widths[column] = width
    return widths


def _width_probe(kind: str, column: str):
    """A column's width as Spark computes it: 1 for a scalar, bytes for packed, else size."""
    from pyspark.sql import functions as F

    if kind == SCALAR:
        return F.lit(1)
    if kind == PACKED:
        return F.length(f"`{column}`")
    return F.size(f"`{column}`")


def _shapes(tensors) -> list[tuple] | None:
    try:
        return [tuple(t.shape) for t in tensors]
    except (AttributeError, ValueError, TypeError):
        return None


def model_input_shapes(model) -> list[tuple] | None:
    """The shapes of the model's inputs (batch dimension included), None if unknown."""
    try:
        return _shapes(model.inputs)
    except (AttributeError, ValueError):
        return None


def model_output_shapes(model) -> list[tuple] | None:
    """The shapes of the model's outputs (batch dimension included), None if unknown."""
    try:
        return _shapes(model.outputs)
    except (AttributeError, ValueError):
        return None


def flat_size(shape: tuple) -> int | None:
    """Product of a shape without its batch dimension; None if any dimension is unknown."""
    dims = shape[1:]
    if any(d is None for d in dims):
        return None
    return math.prod(dims)


def check_fit(model, features: dict[str, int], labels: dict[str, int]) -> None:
    """Checks that feature and label widths fit the model's inputs and outputs.

    Args:
        model: the Keras model.
        features: feature column -> width, in the order of the model's inputs.
        labels: label column -> width, in the order of the model's outputs.

    Raises:
        ValueError: naming the column, its width and the model's shape.
    """
    inputs = model_input_shapes(model)
    if inputs is not None:
        _check_count(inputs, features, "inputs", "feature columns", "features_col")
        for (column, width), shape in zip(features.items(), inputs):
            expected = flat_size(shape)
            if expected is not None and expected != width:
                raise ValueError(
                    f"Feature column `{column}` has {width} values per row, but the model's input "
                    f"has shape {shape[1:]} ({expected} values). Received: width={width}"
                )
    outputs = model_output_shapes(model)
    if outputs is None:
        return
    _check_count(outputs, labels, "outputs", "label columns", "label_col")
    for (column, width), shape in zip(labels.items(), outputs):
        units = flat_size(shape)
        if units is not None and width not in (1, units):
            raise ValueError(
                f"Label column `{column}` has {width} values per row, but the model's output has "
                f"{units} units: give a class index (1 value) or a one-hot vector of {units}. "
                f"Received: width={width}"
            )


def _check_count(shapes, columns, parts: str, given: str, argument: str) -> None:
    if len(shapes) != len(columns):
        raise ValueError(
            f"The model has {len(shapes)} {parts} but {len(columns)} {given} were given. "
            f"Received: {argument}={list(columns)}"
        )
