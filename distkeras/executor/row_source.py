"""A worker's rows in bounded memory: rows in once, shuffled epochs of rows out.

RowSource: the interface a worker trains from: blocks of numpy columns, read one at a time.
ArraySource: rows already in memory (a shard of numpy arrays): one block, an exact shuffle.
SpillSource: a partition's Arrow batches, streamed once to a spill file (Arrow IPC) in the
executor's local directory and read back block by block; the file never outlives the worker.
EpochReader: one epoch of a source: blocks in a random order, `buffer_rows` at a time,
shuffled row by row within that buffer (tf.data's shuffle buffer, fed by shuffled blocks).
"""

from __future__ import annotations

import abc
import logging
import os
import random
import tempfile
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from distkeras import data

logger = logging.getLogger(__name__)

BLOCK_BYTES = 1 << 20  # a spill block, the unit of the block shuffle: about 1 MB of rows
BUFFER_BYTES = 32 << 20  # the shuffle buffer: about 32 MB of rows


class RowSource(abc.ABC):
    """Rows of one worker as blocks of numpy columns (column name -> array, rows first).

    Attributes:
        block_rows: the number of rows of each block, in block order.
        buffer_rows: how many rows an epoch shuffles together (see `EpochReader`).
        piece_rows: how many rows to `take` at once so that the copy stays small next to
            the buffer.
    """

    block_rows: list[int]
    buffer_rows: int

    @abc.abstractmethod
    def block(self, index: int) -> dict[str, np.ndarray]:
        """The columns of block `index`."""

    @property
    def piece_rows(self) -> int:
        return max(1, self.buffer_rows // 16)

    @property
    def rows(self) -> int:
        """The number of rows."""
        return sum(self.block_rows)

    def epoch(self, rng: np.random.Generator | None) -> EpochReader:
        """One pass over the rows: shuffled with `rng`, in stored order when it is None."""
        return EpochReader(self, rng)

    def close(self) -> None:
        """Releases what the source holds (a spill file); idempotent."""
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class ArraySource(RowSource):
    """Rows already in memory: every epoch is an exact shuffle of all of them.

    Args:
        columns: column name -> numpy array; all arrays have the same number of rows.
    """

    def __init__(self, columns: dict[str, np.ndarray]):
        lengths = {len(array) for array in columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"Columns must have the same number of rows. Received: {lengths}")
        self._columns = columns
        rows = lengths.pop() if lengths else 0
        self.block_rows = [rows] if rows else []
        self.buffer_rows = max(rows, 1)

    def block(self, index: int) -> dict[str, np.ndarray]:
        return self._columns


class SpillSource(RowSource):
    """A partition streamed once from Arrow batches to a local spill file, then read back.

    Each incoming batch is checked and converted once (`data.arrow_to_numpy`): list and
    packed columns become fixed-width float32 rows, other columns stay as Spark sent them.
    Blocks of about `block_bytes` are written to an Arrow IPC file and read back with plain
    reads (served from the page cache), so resident memory holds at most a buffer of rows,
    never the partition. On Linux the file is unlinked as soon as it is open: the kernel
    frees it when the worker closes it or dies, even by SIGKILL when a task is cancelled.

    Args:
        batches: the partition's Arrow record batches.
        columns: the columns to keep, in order.
        directory: where to spill; None: Spark's local directories (SPARK_LOCAL_DIRS).
        block_bytes: approximate size of a block, the unit of the epoch's block shuffle.
        buffer_bytes: approximate size of the shuffle buffer.

    Raises:
        ValueError: on null values, or rows whose width differs from the first rows',
            naming the column.
    """

    def __init__(
        self,
        batches: Iterable,
        columns: Sequence[str],
        directory: str | None = None,
        block_bytes: int = BLOCK_BYTES,
        buffer_bytes: int = BUFFER_BYTES,
    ):
        import pyarrow as pa

        self.columns = list(columns)
        self.block_rows = []
        self.widths: dict[str, int] = {}
        self.nbytes = 0  # the spill file's size
        self._file, self._path = _unlinked_file(directory or spill_directory())
        self._reader = None
        try:
            sink = pa.PythonFile(self._file, mode="w")
            writer = None
            for batch in batches:
                if not batch.num_rows:
                    continue
                encoded = self._encode(batch)
                if writer is None:
                    writer = pa.ipc.new_file(sink, encoded.schema)
                    row_bytes = max(1, encoded.nbytes // encoded.num_rows)
                    self._rows_per_block = max(1, block_bytes // row_bytes)
                    self.buffer_rows = max(1, buffer_bytes // row_bytes)
                for start in range(0, encoded.num_rows, self._rows_per_block):
                    block = encoded.slice(start, self._rows_per_block)
                    writer.write_batch(block)
                    self.block_rows.append(block.num_rows)
            if writer is None:
                self.buffer_rows = 1
                return
            writer.close()
            self._file.flush()
            self.nbytes = os.fstat(self._file.fileno()).st_size
            self._reader = pa.ipc.open_file(pa.PythonFile(self._file, mode="r"))
        except BaseException:
            self.close()
            raise

    def _encode(self, batch):
        import pyarrow as pa

        arrays = data.arrow_to_numpy([batch], self.columns)
        encoded = []
        for name in self.columns:
            array = arrays[name]
            if array.ndim == 2:
                width = array.shape[1]
                if self.widths.setdefault(name, width) != width:
                    raise ValueError(
                        f"Column `{name}` has rows of unequal width (from "
                        f"{self.widths[name]} to {width})."
                    )
                values = pa.array(np.ascontiguousarray(array).reshape(-1))
                encoded.append(pa.FixedSizeListArray.from_arrays(values, width))
            else:
                encoded.append(batch.column(name))
        return pa.RecordBatch.from_arrays(encoded, names=self.columns)

    def block(self, index: int) -> dict[str, np.ndarray]:
        batch = self._reader.get_batch(index)
        columns = {}
        for name in self.columns:
            array = batch.column(name)
            if name in self.widths:
                flat = array.flatten().to_numpy(zero_copy_only=False)
                columns[name] = flat.reshape(len(array), self.widths[name])
            else:
                columns[name] = array.to_numpy(zero_copy_only=False)
        return columns

    def close(self) -> None:
        self._reader = None
        if self._file is None:
            return
        self._file.close()
        self._file = None
        if self._path is not None:  # not unlinked at open
            os.remove(self._path)


class EpochReader:
    """One epoch of a RowSource, handed out `take(n)` rows at a time.

    Shuffled, an epoch visits the blocks in a random order, loads them `buffer_rows` at a
    time and permutes the rows of that buffer: two rows meet in a batch only if their
    blocks fall into the same buffer, which a new block order decides every epoch. When
    the source fits in its buffer the shuffle is an exact permutation of all rows.

    Args:
        source: the rows.
        rng: the random generator; None keeps the stored order.
    """

    def __init__(self, source: RowSource, rng: np.random.Generator | None):
        self.source = source
        self.rng = rng
        count = len(source.block_rows)
        order = rng.permutation(count) if rng is not None else range(count)
        self._buffers = _buffers(order, source.block_rows, source.buffer_rows)
        self._columns: dict[str, np.ndarray] = {}
        self._index: np.ndarray | None = None
        self._rows = self._position = 0
        self.remaining = source.rows

    def take(self, n: int) -> dict[str, np.ndarray] | None:
        """The next `n` rows (fewer at the end of the epoch), None once all were taken."""
        parts = []
        while n > 0 and (self._position < self._rows or self._load()):
            stop = min(self._position + n, self._rows)
            rows = slice(self._position, stop)
            picked = rows if self._index is None else self._index[rows]
            parts.append({name: array[picked] for name, array in self._columns.items()})
            n -= stop - self._position
            self._position = stop
        if not parts:
            return None
        taken = parts[0] if len(parts) == 1 else _concatenate(parts)
        self.remaining -= len(next(iter(taken.values())))
        return taken

    def _load(self) -> bool:
        blocks = next(self._buffers, None)
        self._columns = {}  # free the previous buffer before reading the next
        if blocks is None:
            return False
        self._rows = sum(self.source.block_rows[index] for index in blocks)
        self._columns = _fill(self.source, blocks, self._rows)
        self._position = 0
        self._index = None if self.rng is None else self.rng.permutation(self._rows)
        return True


def _fill(source: RowSource, blocks: list[int], rows: int) -> dict[str, np.ndarray]:
    """The blocks' rows in one array per column, read one block at a time (so that the
    buffer and one block are all the memory it takes).
    """
    columns: dict[str, np.ndarray] = {}
    start = 0
    for index in blocks:
        block = source.block(index)
        if len(blocks) == 1:
            return block
        for name, array in block.items():
            if name not in columns:
                columns[name] = np.empty((rows, *array.shape[1:]), dtype=array.dtype)
            columns[name][start : start + len(array)] = array
        start += source.block_rows[index]
    return columns


def _buffers(order: Iterable[int], block_rows: list[int], buffer_rows: int) -> Iterator[list]:
    """Groups consecutive blocks of `order` into buffers of about `buffer_rows` rows."""
    group, rows = [], 0
    for index in order:
        if group and rows + block_rows[index] > buffer_rows:
            yield group
            group, rows = [], 0
        group.append(int(index))
        rows += block_rows[index]
    if group:
        yield group


def _concatenate(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def spill_directory() -> str:
    """One of Spark's local directories for this executor (SPARK_LOCAL_DIRS, which Spark
    sets for its Python workers), picked at random; the system's temporary folder outside
    Spark.
    """
    directories = [d for d in os.environ.get("SPARK_LOCAL_DIRS", "").split(",") if d]
    return random.choice(directories) if directories else tempfile.gettempdir()


def _unlinked_file(directory: str):
    """A new read-write binary file in `directory` and its path, None once unlinked (at
    once where the OS allows it, else by `SpillSource.close`).
    """
    descriptor, path = tempfile.mkstemp(prefix="distkeras-spill-", suffix=".arrow", dir=directory)
    try:
        os.unlink(path)
        path = None
    except OSError:  # e.g. Windows cannot unlink an open file
        logger.debug("cannot unlink the open spill file %s; removing it at close", path)
    return os.fdopen(descriptor, "w+b", buffering=0), path
