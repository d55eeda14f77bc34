"""The named columns the workers read, and the one transport of in-memory rows to them.

TrainingColumns names a Spark DataFrame's feature, label and weight columns. `from_frame`
checks a user's DataFrame; `from_arrays` is the single place where rows held on the driver
(an ArrayData) travel to the workers: today as a Spark DataFrame built with
`data.numpy_to_frame`.
"""

from __future__ import annotations

import dataclasses

from distkeras import data, validation
from distkeras.inputs.arrays import ArrayData

FEATURE, LABEL, WEIGHT = "__distkeras_x{}", "__distkeras_y{}", "__distkeras_weight"


@dataclasses.dataclass
class TrainingColumns:
    """A DataFrame and the columns of it the workers train on.

    Attributes:
        frame: the Spark DataFrame.
        features: feature columns, in the order of the model's inputs.
        labels: label columns, in the order of the model's outputs.
        sample_weight: the per-row weight column, or None.
    """

    frame: object
    features: list[str]
    labels: list[str]
    sample_weight: str | None = None

    @property
    def columns(self) -> list[str]:
        """Every column the workers read."""
        return self.features + self.labels + ([self.sample_weight] if self.sample_weight else [])


def from_frame(df, features_col, label_col, sample_weight_col=None) -> TrainingColumns:
    """Checks that `df` has the columns, of types the workers read.

    Raises:
        ValueError, TypeError: naming the column and the argument it came from.
    """
    features = validation.column_list("features_col", features_col)
    labels = validation.column_list("label_col", label_col)
    data.check_columns(df, features, "features_col", strings=True)
    data.check_columns(df, labels, "label_col")
    if sample_weight_col is not None:
        data.check_columns(df, [sample_weight_col], "sample_weight_col")
        data_type = df.schema[sample_weight_col].dataType
        if data.column_kind(data_type) != data.SCALAR:
            raise TypeError(
                f"Column `{sample_weight_col}` (from `sample_weight_col`) must hold one number "
                f"per row. Received: a column of type {data_type.simpleString()}"
            )
    return TrainingColumns(df, features, labels, sample_weight_col)


def from_arrays(spark, arrays: ArrayData) -> TrainingColumns:
    """Hands rows held on the driver to the workers: the one transport of in-memory data.

    Floating point features travel as packed float32 rows, integers (token ids, class
    indices), booleans and strings as they are.
    """
    columns = {FEATURE.format(i): a for i, a in enumerate(arrays.features)}
    columns.update({LABEL.format(i): a for i, a in enumerate(arrays.labels)})
    if arrays.sample_weight is not None:
        columns[WEIGHT] = arrays.sample_weight
    frame = data.numpy_to_frame(spark, columns, packed=True)
    return TrainingColumns(
        frame,
        [FEATURE.format(i) for i in range(len(arrays.features))],
        [LABEL.format(i) for i in range(len(arrays.labels))],
        WEIGHT if arrays.sample_weight is not None else None,
    )
