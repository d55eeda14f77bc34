"""A worker's rows as Keras takes them: the model's structure and each row's weight.

pack: flat arrays (in the model's order) into the structure of its inputs or outputs.
row_weights: `sample_weight` and `class_weight` combined into one weight per row.
Used by the executor's training loop and by the driver's input checks alike.
"""

from __future__ import annotations

import numpy as np


def pack(model, part: str, arrays: list):
    """`arrays` (flat, in the model's order) in the structure of the model's inputs or
    outputs: a dict for a model built on a dict, one array for one, else a list."""
    from keras import tree

    struct = getattr(model, f"_{part}_struct", None)
    if isinstance(struct, dict):
        return tree.pack_sequence_as(struct, list(arrays))
    return arrays[0] if len(arrays) == 1 else list(arrays)


def row_weights(labels, sample_weight, class_weight) -> np.ndarray | None:
    """Each row's weight: `sample_weight` times its class's weight, as `keras.Model.fit`.

    A class missing from `class_weight` weighs 1; one-hot labels count by their argmax.

    Args:
        labels: the first output's labels (class indices or one-hot rows).
        sample_weight: one weight per row, or None.
        class_weight: {class index: weight}, or None.

    Returns:
        float32 weights, or None when both are None.
    """
    if class_weight is None:
        return None if sample_weight is None else np.asarray(sample_weight, np.float32)
    y = np.asarray(labels)
    if y.ndim > 1:
        y = np.argmax(y, axis=-1) if y.shape[-1] != 1 else y[:, 0]
    y = np.round(y).astype(np.int64)
    weights = np.ones(len(y), dtype=np.float32)
    for index, weight in class_weight.items():
        weights[y == index] = weight
    if sample_weight is not None:
        weights *= np.asarray(sample_weight, np.float32)
    return weights
