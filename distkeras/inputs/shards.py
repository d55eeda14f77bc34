"""In-memory rows sent to the workers directly: the driver's arrays cut into shards.

Shards is the parameter server's shard provider (`ParameterServer(shards=...)`): worker i
of n receives rows i, i+n, i+2n, ... (or every row, for ensembles) in chunks that fit the
worker's `max_bytes`, floating point columns as float32. Only a chunk is ever copied; the
arrays never enter the Spark plan. No sockets here.
"""

from __future__ import annotations

import numpy as np

from distkeras.ps.wire.schema import ALIGNMENT


def _wire_dtype(array: np.ndarray) -> np.dtype:
    return np.dtype(np.float32) if array.dtype.kind == "f" else array.dtype


class Shards:
    """One shard per worker of the driver's columns, served chunk by chunk.

    Args:
        columns: numeric arrays, one per column the workers read, of equal length.
        num_workers: the number of shards.
        every_row: give every worker all the rows (ensembles) instead of 1/n of them.
    """

    def __init__(self, columns: list[np.ndarray], num_workers: int, every_row: bool = False):
        self.columns = [c.reshape(len(c), -1) if c.ndim > 1 else c for c in columns]
        self.num_workers = num_workers
        self.every_row = every_row
        self.rows = len(self.columns[0])
        self._row_bytes = sum(_wire_dtype(c).itemsize * c[:1].size for c in self.columns)

    def shard_rows(self, worker_id: int) -> int:
        """How many rows worker `worker_id` receives."""
        if self.every_row:
            return self.rows
        return len(range(worker_id, self.rows, self.num_workers))

    def __call__(self, worker_id: int, chunk: int, max_bytes: int):
        """(arrays of chunk `chunk` of the worker's shard, whether it is the last).

        Raises:
            ValueError: for an unknown worker, or chunks too small to hold one row.
        """
        if not 0 <= worker_id < self.num_workers:
            raise ValueError(f"no shard for worker {worker_id} of {self.num_workers}")
        per_chunk = (max_bytes - ALIGNMENT * len(self.columns)) // max(self._row_bytes, 1)
        if per_chunk < 1:
            raise ValueError(f"max_bytes={max_bytes} cannot hold one row of {self._row_bytes} B")
        total = self.shard_rows(worker_id)
        start, stop = min(chunk * per_chunk, total), min((chunk + 1) * per_chunk, total)
        step, first = (1, 0) if self.every_row else (self.num_workers, worker_id)
        rows = slice(first + start * step, first + stop * step, step)
        arrays = [np.ascontiguousarray(c[rows], dtype=_wire_dtype(c)) for c in self.columns]
        return arrays, stop >= total
