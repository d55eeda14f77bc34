"""Every input form `fit` takes, as the named columns the workers read.

arrays: in-memory forms (arrays, tensors, dicts, pandas, datasets) -> ArrayData, numpy
columns in the model's order. columns: ArrayData or a Spark DataFrame -> TrainingColumns
(the one transport of driver rows to the workers). labels: label range checks and class
weights. options: `fit`'s other arguments and the validation set. `prepare` (here) joins
them for Trainer.fit, Trainer.train, KerasEstimator and the CLI.
"""

from __future__ import annotations

import dataclasses

from distkeras.data import holds_strings
from distkeras.inputs import arrays, columns, labels
from distkeras.inputs.arrays import ArrayData, adapt, train_validation_split
from distkeras.inputs.columns import TrainingColumns
from distkeras.inputs.options import FitOptions, ValidationSet

__all__ = [
    "ArrayData",
    "FitInputs",
    "FitOptions",
    "TrainingColumns",
    "ValidationSet",
    "adapt",
    "prepare",
    "row_shapes",
    "train_validation_split",
]


@dataclasses.dataclass
class FitInputs:
    """What a run trains and validates on.

    Attributes:
        train: the DataFrame and the columns the workers read.
        validation: the validation set, or None.
        batch_size: the batch size a dataset came batched with, or None.
    """

    train: TrainingColumns
    validation: ValidationSet | None = None
    batch_size: int | None = None


def is_dataframe(value) -> bool:
    """True for a Spark DataFrame (classic or Spark Connect)."""
    from pyspark.sql import DataFrame

    if isinstance(value, DataFrame):
        return True
    try:
        from pyspark.sql.connect.dataframe import DataFrame as ConnectDataFrame
    except ImportError:
        return False
    return isinstance(value, ConnectDataFrame)


def row_shapes(model) -> list:
    """Per model input, the shape (without batch) flat rows are reshaped to, or None."""
    from distkeras import validation

    shapes = validation.model_input_shapes(model)
    if shapes is None:
        return []
    return [
        tuple(s[1:]) if len(s) > 2 and validation.flat_size(s) is not None else None for s in shapes
    ]


def prepare(
    model,
    x,
    y=None,
    sample_weight=None,
    *,
    options: FitOptions,
    validation_data=None,
    loss=None,
    features_col=("features",),
    label_col=("label",),
    sample_weight_col: str | None = None,
    spark=None,
) -> FitInputs:
    """Checks the inputs of `fit` and turns them into the columns the workers read.

    Args:
        model: the Keras model.
        x: as `keras.Model.fit` takes it, or a Spark DataFrame whose columns
            `features_col`, `label_col` and `sample_weight_col` are read.
        y: labels when `x` holds only features.
        sample_weight: one weight per row when `x` holds only features.
        options: the checked arguments of `fit`.
        validation_data: `(x, y)`, `(x, y, sample_weight)`, a dataset or a DataFrame.
        loss: the loss the model trains with (for the label range check).
        features_col: the feature columns of a DataFrame `x`.
        label_col: the label columns of a DataFrame `x`.
        sample_weight_col: the weight column of a DataFrame `x`, or None.
        spark: a callable returning the SparkSession, called only for in-memory inputs.

    Raises:
        ValueError, TypeError: naming the argument or column, before any training job.
    """
    out_names = arrays.output_names(model) or []
    classes = labels.sparse_outputs(model, loss, out_names)
    held_out = None
    if is_dataframe(x):
        _dataframe_only(y, sample_weight, options)
        train = columns.from_frame(x, features_col, label_col, sample_weight_col)
        strings = [holds_strings(x.schema[c].dataType) for c in train.features]
        arrays.check_strings(model, strings, train.features)
        labels.check_frame_labels(classes, x, train.labels)
        batch_size = None
    else:
        data = adapt(model, x, y, sample_weight, steps=options.steps_per_epoch)
        if options.validation_split and validation_data is None:
            data, held_out = train_validation_split(data, options.validation_split)
        names = _label_names(out_names, len(data.labels))
        arrays.check_strings(model, [a.dtype.kind == "O" for a in data.features], ["x"])
        labels.check_array_labels(classes, data.labels, names)
        train = columns.from_arrays(spark(), data)
        batch_size = data.batch_size
    val = _validation(
        model, validation_data, held_out, options, train, classes, out_names, is_dataframe(x)
    )
    return FitInputs(train, val, batch_size)


def _dataframe_only(y, sample_weight, options: FitOptions) -> None:
    if y is not None:
        raise TypeError(
            "When `x` is a DataFrame the labels come from `label_col`; `y` must be None. "
            f"Received: y of type {type(y).__name__}"
        )
    if sample_weight is not None:
        raise TypeError(
            "When `x` is a DataFrame the weights come from the trainer's `sample_weight_col`; "
            f"`sample_weight` must be None. Received: sample_weight of type "
            f"{type(sample_weight).__name__}"
        )
    if options.validation_split:
        raise ValueError(
            "`validation_split` needs rows in an order, which a Spark DataFrame does not "
            "have: split it with `df.randomSplit` and pass `validation_data`. Received: "
            f"validation_split={options.validation_split}"
        )


def _label_names(out_names: list[str], count: int, argument: str = "y") -> list[str]:
    """How each output's labels are named in messages: `y`, `y['name']` or `y[1]`."""
    if count == 1:
        return [f"`{argument}`"]
    if len(out_names) == count:
        return [f"`{argument}[{name!r}]`" for name in out_names]
    return [f"`{argument}[{i}]`" for i in range(count)]


def _validation(model, validation_data, held_out, options, train, classes, out_names, x_is_frame):
    """The ValidationSet of `validation_data` (or of the held-out rows), or None."""
    if validation_data is None and held_out is None:
        return None
    if held_out is not None:
        data = held_out
    elif is_dataframe(validation_data):
        data = _collect(model, validation_data, train, x_is_frame)
    elif isinstance(validation_data, (tuple, list)):
        if len(validation_data) not in (2, 3):
            raise ValueError(
                "Expected `validation_data` to be (x_val, y_val) or (x_val, y_val, "
                f"val_sample_weight). Received: a {type(validation_data).__name__} of length "
                f"{len(validation_data)}"
            )
        data = adapt(model, *validation_data, argument="validation_data")
    else:
        data = adapt(model, validation_data, argument="validation_data")
    names = _label_names(out_names, len(data.labels), "validation_data y")
    labels.check_array_labels(classes, data.labels, names)
    x, y, weights = data.model_inputs(model)
    batch_size = options.validation_batch_size or options.batch_size or data.batch_size or 32
    return ValidationSet(
        x, y, weights, batch_size, options.validation_steps, options.validation_freq
    )


def _collect(model, df, train: TrainingColumns, x_is_frame: bool) -> ArrayData:
    """Collects a validation DataFrame's columns, named like those of the DataFrame `x`."""
    from distkeras import data

    names = train.features + train.labels
    if train.sample_weight:
        names.append(train.sample_weight)
    if not x_is_frame:
        raise TypeError(
            "`validation_data` is a DataFrame but `x` is not: give both as DataFrames, or "
            "validation_data as (x_val, y_val). Received: validation_data of type DataFrame"
        )
    data.check_columns(df, names, "validation_data")
    found = data.collect_arrays(df, names)
    features = data.reshaped(found, train.features, row_shapes(model) or [None] * len(names))
    weights = found[train.sample_weight] if train.sample_weight else None
    return ArrayData(features, [found[c] for c in train.labels], weights)
