"""Checkpoints: atomic pairs through a manifest written last, and resume validated first."""

import json

import keras
import numpy as np
import pytest

from distkeras.trainers import checkpoint
from distkeras.trainers.checkpoint import MANIFEST_FILE, Checkpointer, load_checkpoint


def model(hidden=3):
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(hidden), keras.layers.Dense(2)])


def filled(net, value):
    return [np.full(w.shape, value, w.dtype) for w in net.get_weights()]


@pytest.fixture
def saved(tmp_path):
    """A folder holding a checkpoint of epoch 3 whose weights are all 7."""
    net = model()
    Checkpointer(tmp_path).write(net, filled(net, 7.0), clock=42, epoch=3)
    return tmp_path


def manifest(folder):
    return json.loads((folder / MANIFEST_FILE).read_text())


def weights_file(folder):
    return folder / manifest(folder)["weights"]


def test_round_trip(saved):
    net = model()
    state = load_checkpoint(saved, net)
    assert (state["epoch"], state["clock"]) == (3, 42)
    assert all((w == 7).all() for w in net.get_weights())


def test_a_new_checkpoint_replaces_the_old_pair(saved):
    net = model()
    Checkpointer(saved).write(net, filled(net, 9.0), clock=50, epoch=4)
    assert len(list(saved.glob("center-*.weights.h5"))) == 1
    assert load_checkpoint(saved, model())["epoch"] == 4


def test_crash_before_the_manifest_keeps_the_previous_pair(saved, monkeypatch):
    net = model()

    def crash(temporary, final):
        if final.name == MANIFEST_FILE:
            raise OSError("power cut")
        return original(temporary, final)

    original = checkpoint._replace
    monkeypatch.setattr(checkpoint, "_replace", crash)
    with pytest.raises(OSError, match="power cut"):
        Checkpointer(saved).write(net, filled(net, 9.0), clock=50, epoch=4)
    monkeypatch.undo()
    fresh = model()
    assert load_checkpoint(saved, fresh)["epoch"] == 3  # old epoch with the old weights
    assert all((w == 7).all() for w in fresh.get_weights())


def unchanged_after_failure(folder, error, keyword):
    """Resuming fails naming the folder and `keyword`; the model's weights stay as they were."""
    net = model()
    before = net.get_weights()
    with pytest.raises(error, match=keyword) as info:
        load_checkpoint(folder, net)
    assert str(folder) in str(info.value)
    for got, want in zip(net.get_weights(), before):
        np.testing.assert_array_equal(got, want)


def test_truncated_weights_file(saved):
    path = weights_file(saved)
    path.write_bytes(path.read_bytes()[:-100])
    unchanged_after_failure(saved, ValueError, "truncated")


def test_altered_weights_file(saved):
    path = weights_file(saved)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    unchanged_after_failure(saved, ValueError, "corrupt")


def test_truncated_manifest(saved):
    path = saved / MANIFEST_FILE
    path.write_text(path.read_text()[:40])
    unchanged_after_failure(saved, ValueError, "truncated or not JSON")


def test_missing_weights_file(saved):
    weights_file(saved).unlink()
    unchanged_after_failure(saved, FileNotFoundError, "missing file")


def test_missing_manifest_is_no_checkpoint(saved):
    (saved / MANIFEST_FILE).unlink()
    unchanged_after_failure(saved, FileNotFoundError, "No checkpoint in")


@pytest.mark.parametrize("epoch", [-5, "3", 2.5])
def test_bad_epoch(saved, epoch):
    state = manifest(saved)
    state["epoch"] = epoch
    (saved / MANIFEST_FILE).write_text(json.dumps(state))
    unchanged_after_failure(saved, ValueError, "bad epoch")


def test_wrong_architecture(saved):
    net = model(hidden=5)
    before = net.get_weights()
    with pytest.raises(ValueError, match="wrong architecture") as info:
        load_checkpoint(saved, net)
    assert str(saved) in str(info.value)
    for got, want in zip(net.get_weights(), before):
        np.testing.assert_array_equal(got, want)
