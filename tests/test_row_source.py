"""Row sources: the spill file's round trip, its lifetime, and the epochs' shuffle."""

import glob
import os

import numpy as np
import pyarrow as pa
import pytest

from distkeras.executor.row_source import ArraySource, SpillSource


def open_spill_files(pids=("self",)) -> list[str]:
    """The spill files that processes `pids` hold open (unlinked ones end in '(deleted)')."""
    links = []
    for pid in pids:
        for fd in glob.glob(f"/proc/{pid}/fd/*"):
            try:
                target = os.readlink(fd)
            except OSError:  # closed meanwhile, or not ours to read
                continue
            if "distkeras-spill-" in target:
                links.append(target)
    return links


def batches(features: np.ndarray, labels: np.ndarray, rows_per_batch: int = 1000):
    """Arrow batches as Spark hands them to a worker: list<float> features, int labels."""
    for start in range(0, len(features), rows_per_batch):
        stop = start + rows_per_batch
        values = pa.array(features[start:stop].ravel())
        width = features.shape[1]
        offsets = pa.array(np.arange(0, (len(values) // width + 1) * width, width, dtype="i4"))
        yield pa.RecordBatch.from_arrays(
            [pa.ListArray.from_arrays(offsets, values), pa.array(labels[start:stop])],
            names=["features", "label"],
        )


@pytest.fixture
def rows():
    rng = np.random.default_rng(0)
    features = rng.random((5000, 20), dtype=np.float32)
    labels = np.arange(5000, dtype=np.int32)  # each row's label is its position
    return features, labels


def read_epoch(source, rng, n=333):
    reader = source.epoch(rng)
    parts = []
    while (columns := reader.take(n)) is not None:
        parts.append(columns)
    assert reader.remaining == 0
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def test_spill_round_trip_in_order_and_shuffled(rows, tmp_path):
    features, labels = rows
    with SpillSource(batches(features, labels), ["features", "label"], str(tmp_path)) as source:
        assert source.rows == 5000 and source.widths == {"features": 20}
        assert source.nbytes <= 1.1 * features.nbytes + labels.nbytes
        in_order = read_epoch(source, None)
        np.testing.assert_array_equal(in_order["features"], features)
        np.testing.assert_array_equal(in_order["label"], labels)
        shuffled = read_epoch(source, np.random.default_rng(1))
        assert not np.array_equal(shuffled["label"], labels)
        np.testing.assert_array_equal(np.sort(shuffled["label"]), labels)  # each row once
        np.testing.assert_array_equal(shuffled["features"], features[shuffled["label"]])


def test_spill_file_is_unlinked_at_once_and_closed_at_the_end(rows, tmp_path):
    features, labels = rows
    source = SpillSource(batches(features, labels), ["features", "label"], str(tmp_path))
    assert os.listdir(tmp_path) == []  # no name to leave behind, even after SIGKILL
    assert [link.endswith("(deleted)") for link in open_spill_files()] == [True]
    source.close()
    assert open_spill_files() == []


def test_a_width_change_between_batches_names_the_column_and_closes_the_spill(tmp_path):
    def uneven():
        yield from batches(np.zeros((10, 3), np.float32), np.zeros(10, np.int32))
        yield from batches(np.zeros((10, 4), np.float32), np.zeros(10, np.int32))

    with pytest.raises(ValueError, match=r"`features` has rows of unequal width \(from 3 to 4"):
        SpillSource(uneven(), ["features", "label"], str(tmp_path))
    assert open_spill_files() == [] and os.listdir(tmp_path) == []


def test_an_empty_partition_gives_empty_epochs(tmp_path):
    with SpillSource(iter([]), ["features", "label"], str(tmp_path)) as source:
        assert source.rows == 0
        assert source.epoch(np.random.default_rng(0)).take(10) is None


def test_block_shuffle_mixes_blocks_and_changes_their_grouping_each_epoch(rows, tmp_path):
    features, labels = rows
    # 80 B rows: blocks of 50 rows, a buffer of 500 rows (10 blocks): 10 buffers per epoch.
    spill = SpillSource(
        batches(features, labels),
        ["features", "label"],
        str(tmp_path),
        block_bytes=50 * 84,
        buffer_bytes=500 * 84,
    )
    with spill as source:
        assert source.buffer_rows == 500 and len(source.block_rows) == 100
        rng = np.random.default_rng(2)
        first, second = (read_epoch(source, rng)["label"] for _ in range(2))
    for epoch in (first, second):
        np.testing.assert_array_equal(np.sort(epoch), labels)
        batch = epoch[:32] // 50  # blocks of the first batch's rows
        assert len(set(batch)) >= 5  # a batch draws from many blocks, not one
        assert max(np.bincount(batch)) <= 16
    # The first buffer holds other blocks in the next epoch.
    assert set(first[:500] // 50) != set(second[:500] // 50)


def test_take_crosses_buffers_with_exact_sizes(rows, tmp_path):
    features, labels = rows
    with SpillSource(
        batches(features, labels), ["features", "label"], str(tmp_path), 4200, 42000
    ) as source:
        reader = source.epoch(np.random.default_rng(3))
        sizes = []
        while (columns := reader.take(384)) is not None:
            sizes.append(len(columns["label"]))
    assert sizes == [384] * 13 + [5000 - 13 * 384]


def test_array_source_shuffles_all_rows_exactly(rows):
    features, labels = rows
    source = ArraySource({"features": features, "label": labels})
    assert source.buffer_rows == 5000
    shuffled = read_epoch(source, np.random.default_rng(4), n=1000)
    np.testing.assert_array_equal(shuffled["features"], features[shuffled["label"]])
    assert not np.array_equal(shuffled["label"], labels)
    with pytest.raises(ValueError, match="same number of rows"):
        ArraySource({"a": np.zeros(3), "b": np.zeros(4)})
