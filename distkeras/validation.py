"""Checks of arguments and of model shapes, run on the driver before any training job starts.

Column checks (existence, kind, width) live with the column kinds in data.py; this module
checks plain arguments and that column widths fit the model. Every error names the argument
or column and echoes the value received, in the style of Keras ("Expected `x` ... Received:
x=...").
"""

from __future__ import annotations

import math


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


def flag(name: str, value) -> bool:
    """Returns `value` if it is True or False; raises TypeError naming `name`."""
    if not isinstance(value, bool):
        raise TypeError(f"Expected `{name}` to be True or False. Received: {name}={value!r}")
    return value


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


def check_callbacks(callbacks) -> None:
    """Refuses callbacks the trainers cannot honour, naming them.

    Raises:
        ValueError: for `keras.callbacks.BackupAndRestore`, whose restore sets Keras' own
            training loop's epoch; the trainers' `checkpoint_dir`/`resume_from` do its job.
    """
    import keras

    for callback in callbacks or ():
        if isinstance(callback, keras.callbacks.BackupAndRestore):
            raise ValueError(
                "`keras.callbacks.BackupAndRestore` is not supported by the distkeras trainers: "
                "pass `checkpoint_dir=` to the trainer and `resume_from=` to resume instead. "
                f"Received: callbacks containing {callback!r}"
            )
