"""Labels: the range check of class indices, and class weights as per-row weights.

`check_array_labels` (numpy, on the driver) and `check_frame_labels` (one Spark aggregate)
find class indices outside a sparse categorical output's range, or NaN, before training.
Class weights become per-row weights in executor.model_data's `row_weights`, on the workers.
"""

from __future__ import annotations

import numpy as np


def _is_sparse_categorical(loss) -> bool:
    import keras

    if isinstance(loss, str):
        return loss.lower().replace("_", "") in (
            "sparsecategoricalcrossentropy",
            "sparsecategoricalfocalcrossentropy",
        )
    if isinstance(loss, dict) and "class_name" in loss:  # a serialized Keras loss
        return _is_sparse_categorical(loss["class_name"])
    if isinstance(loss, keras.losses.SparseCategoricalCrossentropy):
        return True
    fn = getattr(loss, "fn", loss)
    return fn is keras.losses.sparse_categorical_crossentropy


def sparse_outputs(model, loss, names: list[str]) -> dict[int, int]:
    """Outputs trained with a sparse categorical loss: output index -> number of classes.

    Args:
        model: the Keras model.
        loss: the loss it trains with (one loss, a list or a dict by output name).
        names: the model's output names, in its order.
    """
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return {}
    if not outputs:
        return {}
    found = {}
    for index, tensor in enumerate(outputs):
        if isinstance(loss, dict) and "class_name" not in loss:
            output_loss = loss.get(names[index]) if index < len(names) else None
        elif isinstance(loss, (list, tuple)):
            output_loss = loss[index] if index < len(loss) else None
        else:
            output_loss = loss
        classes = tensor.shape[-1] if len(tensor.shape) > 1 else None
        if classes and classes > 1 and _is_sparse_categorical(output_loss):
            found[index] = int(classes)
    return found


def _range_error(labels: str, low, high, classes: int) -> ValueError:
    return ValueError(
        f"{labels} holds class indices from {low} to {high}, but the model's "
        f"output has {classes} classes, so a sparse categorical loss expects indices 0 to "
        f"{classes - 1}. Received: labels from {low} to {high}"
    )


def _nan_error(labels: str, count: int) -> ValueError:
    return ValueError(
        f"{labels} has {count} NaN or null labels; a sparse categorical loss "
        f"expects class indices. Received: {count} NaN labels"
    )


def check_array_labels(classes: dict[int, int], labels: list, names: list[str]) -> None:
    """Checks numpy labels of sparse categorical outputs (see `sparse_outputs`).

    Args:
        classes: output index -> number of classes.
        labels: the labels of each output.
        names: how each output's labels are named in a message, e.g. "`y['priority']`".

    Raises:
        ValueError: naming the labels, the range found and the range expected.
    """
    for index, count in classes.items():
        values = np.asarray(labels[index])
        if values.dtype.kind not in "biuf" or not len(values):
            continue
        if values.dtype.kind == "f":
            nans = int(np.isnan(values).sum())
            if nans:
                raise _nan_error(names[index], nans)
        low, high = values.min(), values.max()
        if low < 0 or high >= count:
            raise _range_error(names[index], _plain(low), _plain(high), count)


def check_frame_labels(classes: dict[int, int], df, columns: list[str]) -> None:
    """Checks label columns of sparse categorical outputs with one Spark aggregate.

    Raises:
        ValueError: naming the label column, the range found and the range expected.
    """
    from pyspark.sql import functions as F

    from distkeras.data import SCALAR, column_kind

    checked = [
        (columns[i], count)
        for i, count in classes.items()
        if column_kind(df.schema[columns[i]].dataType) == SCALAR
    ]
    if not checked:
        return
    aggregates = []
    for position, (column, _) in enumerate(checked):
        value = F.col(f"`{column}`").cast("double")
        aggregates += [
            F.min(value).alias(f"low{position}"),
            F.max(value).alias(f"high{position}"),
            F.sum(F.when(value.isNull() | F.isnan(value), 1).otherwise(0)).alias(f"nan{position}"),
        ]
    row = df.agg(*aggregates).first()
    for position, (column, count) in enumerate(checked):
        name = f"Label column `{column}`"
        if row[f"nan{position}"]:
            raise _nan_error(name, int(row[f"nan{position}"]))
        low, high = row[f"low{position}"], row[f"high{position}"]
        if low is not None and (low < 0 or high >= count):
            raise _range_error(name, _plain(low), _plain(high), count)


def _plain(value):
    value = float(value)
    return int(value) if value.is_integer() else value


def check_class_weight(class_weight, num_outputs: int | None) -> dict[int, float] | None:
    """Returns `class_weight` as {class index: weight}, or raises naming it."""
    if class_weight is None:
        return None
    if not isinstance(class_weight, dict):
        raise TypeError(
            "Expected `class_weight` to be a dict of class index -> weight. Received: "
            f"class_weight={class_weight!r}"
        )
    if num_outputs is not None and num_outputs > 1:
        raise ValueError(
            "`class_weight` is only supported for models with a single output, as in Keras. "
            f"Received: class_weight={class_weight!r} for a model with {num_outputs} outputs"
        )
    weights = {}
    for key, value in class_weight.items():
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
            raise TypeError(
                f"Expected `class_weight` keys to be class indices. Received: key {key!r}"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise TypeError(
                f"Expected `class_weight` values to be numbers. Received: {key}: {value!r}"
            )
        weights[int(key)] = float(value)
    return weights
