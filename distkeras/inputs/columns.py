"""The named columns the workers read, and the one transport of in-memory rows to them.

TrainingColumns names a Spark DataFrame's feature, label and weight columns. `from_frame`
checks a user's DataFrame; `from_arrays` is the single place where rows held on the driver
(an ArrayData) travel to the workers: numeric rows directly, each worker's shard over its
parameter-server connection (`shards`, when the server runs on the driver); strings, and
any rows whose server runs in the cluster, as a Spark DataFrame (`with_frame`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from distkeras import data, validation
from distkeras.inputs.arrays import ArrayData
from distkeras.inputs.shards import Shards
from distkeras.ps.wire.schema import ALLOWED_DTYPES

FEATURE, LABEL, WEIGHT = "__distkeras_x{}", "__distkeras_y{}", "__distkeras_weight"


@dataclasses.dataclass
class TrainingColumns:
    """A DataFrame and the columns of it the workers train on.

    Attributes:
        frame: the Spark DataFrame; None while the rows are held on the driver.
        features: feature columns, in the order of the model's inputs.
        labels: label columns, in the order of the model's outputs.
        sample_weight: the per-row weight column, or None.
        held: column name -> numeric array, for rows held on the driver that can travel
            to the workers directly; None for a DataFrame.
    """

    frame: object
    features: list[str]
    labels: list[str]
    sample_weight: str | None = None
    held: dict[str, np.ndarray] | None = None

    @property
    def columns(self) -> list[str]:
        """Every column the workers read."""
        return self.features + self.labels + ([self.sample_weight] if self.sample_weight else [])

    def widths(self) -> dict[str, int]:
        """Each held column's values per row (1 for scalars)."""
        return {name: int(np.prod(a.shape[1:], dtype=np.int64)) for name, a in self.held.items()}

    def head(self, rows: int) -> ArrayData:
        """The first `rows` rows, on the driver (a Spark job for a DataFrame)."""
        if self.held is not None:
            found = {name: array[:rows] for name, array in self.held.items()}
        else:
            found = data.collect_arrays(self.frame.limit(rows), self.columns)
        return ArrayData(
            [found[c] for c in self.features],
            [found[c] for c in self.labels],
            found[self.sample_weight] if self.sample_weight else None,
        )

    def shards(self, num_workers: int, every_row: bool = False) -> Shards:
        """The held rows as one shard per worker (all the rows each, with `every_row`)."""
        return Shards([self.held[c] for c in self.columns], num_workers, every_row)


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

    Numeric rows stay on the driver (`held`) until the run sends them to the workers
    directly; rows with strings become a DataFrame at once. Either way floating point
    features travel as float32 rows, integers (token ids, class indices), booleans and
    strings as they are.
    """
    columns = {FEATURE.format(i): a for i, a in enumerate(arrays.features)}
    columns.update({LABEL.format(i): a for i, a in enumerate(arrays.labels)})
    if arrays.sample_weight is not None:
        columns[WEIGHT] = arrays.sample_weight
    train = TrainingColumns(
        None,
        [FEATURE.format(i) for i in range(len(arrays.features))],
        [LABEL.format(i) for i in range(len(arrays.labels))],
        WEIGHT if arrays.sample_weight is not None else None,
        held=columns,
    )
    if all(np.asarray(a).dtype.newbyteorder("<").str in ALLOWED_DTYPES for a in columns.values()):
        return train
    return with_frame(train, spark)


def with_frame(train: TrainingColumns, spark) -> TrainingColumns:
    """Held rows as a Spark DataFrame (shipped in the Spark plan): for rows that cannot
    travel directly, or a parameter server that does not run on the driver."""
    if train.held is None:
        return train
    frame = data.numpy_to_frame(spark, train.held, packed=True)
    return dataclasses.replace(train, frame=frame, held=None)
