"""In-memory inputs of `fit` as named numpy columns, modelled on Keras' data adapters.

`adapt` turns every in-memory form `keras.Model.fit` takes (numpy arrays, tensors, lists,
dicts keyed by input/output names, pandas, a finite tf.data.Dataset, a PyDataset, a
generator) into an `ArrayData`: one numpy array per model input and output, in the
model's order, and optional per-row weights. Datasets and generators are read once.
`train_validation_split` holds out the last rows, as Keras does. No Spark here.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
import sys

import numpy as np

from distkeras.executor.model_data import pack

_KINDS = "biufO"  # booleans, integers, floats, strings (object arrays of str, as Keras takes)


@dataclasses.dataclass
class ArrayData:
    """Training (or validation) rows as numpy arrays, in the model's order.

    Attributes:
        features: one array per model input, rows first.
        labels: one array per model output, rows first.
        sample_weight: one weight per row, or None.
        batch_size: the batch size a dataset came batched with, or None.
    """

    features: list[np.ndarray]
    labels: list[np.ndarray]
    sample_weight: np.ndarray | None = None
    batch_size: int | None = None

    @property
    def rows(self) -> int:
        return len(self.features[0])

    def slice(self, start: int, stop: int) -> ArrayData:
        """The rows [start, stop)."""
        return ArrayData(
            [a[start:stop] for a in self.features],
            [a[start:stop] for a in self.labels],
            None if self.sample_weight is None else self.sample_weight[start:stop],
            self.batch_size,
        )

    def model_inputs(self, model):
        """(x, y, sample_weight) structured as `model` takes them (see `pack`)."""
        return (
            pack(model, "inputs", self.features),
            pack(model, "outputs", self.labels),
            self.sample_weight,
        )


def input_names(model) -> list[str] | None:
    """The names of the model's inputs in its order, None if the model is not built."""
    try:
        return [tensor.name for tensor in model.inputs]
    except (AttributeError, ValueError, TypeError):
        return None


def output_names(model) -> list[str] | None:
    """The names of the model's outputs in its order (the keys `fit` takes in a `y` dict)."""
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return None
    if outputs is None:
        return None
    names = getattr(model, "output_names", None)
    if names and len(names) == len(outputs):
        return list(names)
    if len(outputs) == 1 and model.layers:
        return [model.layers[-1].name]
    return [tensor.name for tensor in outputs]


def adapt(
    model,
    x,
    y=None,
    sample_weight=None,
    steps: int | None = None,
    argument: str = "x",
) -> ArrayData:
    """Reads any in-memory form `fit` takes into an `ArrayData`.

    Args:
        model: the Keras model (for the names and the order of its inputs and outputs).
        x: features: an array, tensor, list, dict, pandas DataFrame; or a dataset, a
            PyDataset or a generator yielding `(x, y)` or `(x, y, sample_weight)`.
        y: labels when `x` holds only features.
        sample_weight: one weight per row when `x` holds only features.
        steps: read at most this many batches from a dataset or generator.
        argument: the argument's name in error messages (`x` or `validation_data`).

    Raises:
        ValueError, TypeError: naming the argument and the value received.
    """
    batches = _batches(x, steps, argument)
    if batches is None:
        if y is None:
            raise ValueError(
                f"`y` is required when `{argument}` holds only features (an array, tensor, "
                f"list or dict). Received: y=None, {argument} of type {type(x).__name__}"
            )
        return _arrays(model, x, y, sample_weight, argument)
    for name, value in (("y", y), ("sample_weight", sample_weight)):
        if value is not None:
            raise ValueError(
                f"`{name}` must be None when `{argument}` is a {type(x).__name__}: it yields "
                f"(x, y) or (x, y, sample_weight) itself. Received: {name} of type "
                f"{type(value).__name__}"
            )
    parts = [_arrays(model, *_unpack(batch, argument), argument) for batch in batches]
    if not parts:
        raise ValueError(f"`{argument}` yielded no batches: there is nothing to train on.")
    return _concatenate(parts, argument)


def _batches(x, steps, argument):
    """An iterable of batches for a dataset, PyDataset or generator; None for arrays."""
    import keras

    tf = sys.modules.get("tensorflow")  # a tf.data.Dataset implies it is imported
    if tf is not None and isinstance(x, tf.data.Dataset):
        if int(x.cardinality()) == tf.data.INFINITE_CARDINALITY and steps is None:
            raise ValueError(
                f"`{argument}` is an infinite dataset (it repeats forever): give "
                "`steps_per_epoch` (`validation_steps` for validation_data) to say how many "
                "batches to read. Received: steps_per_epoch=None"
            )
        return (x if steps is None else x.take(steps)).as_numpy_iterator()
    if isinstance(x, keras.utils.PyDataset):
        count = x.num_batches
        if count is None and steps is None:
            raise ValueError(
                f"`{argument}` is a PyDataset without a length (infinite): give "
                "`steps_per_epoch` to say how many batches to read. Received: "
                "steps_per_epoch=None"
            )
        count = count if steps is None else min(steps, count or steps)
        return (x[index] for index in range(count))
    if inspect.isgenerator(x) or (hasattr(x, "__next__") and not hasattr(x, "shape")):
        return itertools.islice(x, steps)
    return None


def _unpack(batch, argument):
    if not isinstance(batch, tuple) or len(batch) not in (2, 3):
        raise ValueError(
            f"Expected `{argument}` to yield (x, y) or (x, y, sample_weight) tuples: the "
            f"workers need labels. Received: an element of type {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, tuple) else "")
        )
    return batch if len(batch) == 3 else (*batch, None)


def _concatenate(parts: list[ArrayData], argument: str) -> ArrayData:
    def join(arrays, what):
        try:
            return np.concatenate(arrays)
        except ValueError:
            shapes = sorted({a.shape[1:] for a in arrays})
            raise ValueError(
                f"`{argument}` yielded batches whose {what} rows differ in shape (ragged): "
                f"pad them to one length (e.g. keras.utils.pad_sequences). Received: row "
                f"shapes {shapes}"
            ) from None

    weights = [p.sample_weight for p in parts]
    if any(w is None for w in weights) and not all(w is None for w in weights):
        raise ValueError(f"`{argument}` yielded sample weights in some batches only.")
    return ArrayData(
        [join(a, "feature") for a in zip(*(p.features for p in parts))],
        [join(a, "label") for a in zip(*(p.labels for p in parts))],
        None if weights[0] is None else join(weights, "weight"),
        batch_size=parts[0].rows,
    )


def _arrays(model, x, y, sample_weight, argument) -> ArrayData:
    features = _flat(x, input_names(model), argument, "input", argument)
    labels = _flat(y, output_names(model), argument, "output", "y")
    weights = None
    if sample_weight is not None:
        if isinstance(sample_weight, dict):
            raise TypeError(
                "Expected `sample_weight` to be one weight per row (an array); per-output "
                f"weights are not supported. Received: sample_weight of keys "
                f"{sorted(sample_weight)}"
            )
        weights = _numpy(sample_weight, "sample_weight").astype(np.float32)
        if weights.ndim == 2 and weights.shape[1] == 1:
            weights = weights[:, 0]
        if weights.ndim != 1:
            raise ValueError(
                "Expected `sample_weight` to hold one weight per row. Received: "
                f"sample_weight of shape {weights.shape}"
            )
    counts = {f"{argument}": {len(a) for a in features}, "y": {len(a) for a in labels}}
    if weights is not None:
        counts["sample_weight"] = {len(weights)}
    if len(set().union(*counts.values())) != 1:
        found = ", ".join(f"{name}: {sorted(rows)}" for name, rows in counts.items())
        raise ValueError(
            f"`{argument}`, `y` and `sample_weight` must have the same number of rows. "
            f"Received: {found}"
        )
    return ArrayData(features, labels, weights)


def _flat(value, names, argument, part, name) -> list[np.ndarray]:
    """One numpy array per model input (or output), in the model's order."""
    count = None if names is None else len(names)
    if isinstance(value, dict):
        if names is None:
            raise ValueError(
                f"`{name}` is a dict, but the model is not built, so its {part} names are "
                f"unknown: build it (keras.Input) first. Received: {name} keys {sorted(value)}"
            )
        unknown = sorted(set(value) - set(names))
        missing = [n for n in names if n not in value]
        if unknown or missing:
            raise ValueError(
                f"`{name}` has keys that do not match the model's {part} names {names}: "
                f"unknown {unknown}, missing {missing}. Received: {name} keys {sorted(value)}"
            )
        return [_numpy(value[n], f"{name}[{n!r}]") for n in names]
    if _is_sequence_of_arrays(value, count):
        arrays = [_numpy(v, f"{name}[{i}]") for i, v in enumerate(value)]
    else:
        arrays = [_numpy(value, name)]
    if count is not None and len(arrays) != count:
        raise ValueError(
            f"The model has {count} {part}s {names}, but `{name}` holds {len(arrays)} "
            f"arrays. Received: {name} of type {type(value).__name__}"
        )
    return arrays


def _is_sequence_of_arrays(value, count) -> bool:
    if not isinstance(value, (list, tuple)) or not value:
        return False
    if count is not None and count > 1:
        return True
    return all(hasattr(v, "shape") and len(v.shape) >= 1 for v in value) and (
        count is None or len(value) == 1
    )


def _numpy(value, name: str) -> np.ndarray:
    """`value` as a numpy array of numbers or booleans, or an object array of `str` (what
    Keras takes for string inputs); clear errors otherwise."""
    tf = sys.modules.get("tensorflow")  # a ragged tensor implies it is imported
    if tf is not None and isinstance(value, tf.RaggedTensor):
        raise ValueError(
            f"`{name}` is a ragged tensor (rows of different lengths): pad it to one length "
            f"(`.to_tensor()`). Received: {name} of shape {value.shape}"
        )
    if hasattr(value, "to_numpy") and not isinstance(value, np.ndarray):  # pandas
        value = value.to_numpy()
    elif hasattr(value, "numpy") and not isinstance(value, np.ndarray):  # tensors
        value = value.numpy()
    try:
        array = np.asarray(value)
    except ValueError as error:  # numpy refuses inhomogeneous nested lists
        raise _ragged(name, value) from error
    if array.dtype.kind in "US":
        array = array.astype(object)
    if array.dtype.kind == "O":
        array = _objects(array, name, value)
    if array.dtype.kind not in _KINDS:
        raise TypeError(
            f"Expected `{name}` to hold numbers, booleans or strings. Received: {name} of dtype "
            f"{array.dtype}"
        )
    if array.ndim == 0:
        raise ValueError(f"Expected `{name}` to hold rows. Received: {name}={value!r}")
    return array


def _objects(array: np.ndarray, name: str, value) -> np.ndarray:
    flat = array.ravel()
    if any(isinstance(v, (list, tuple, np.ndarray)) for v in flat[:1000]):
        raise _ragged(name, value)
    if all(isinstance(v, (str, bytes)) for v in flat):
        text = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in flat]
        return np.array(text, dtype=object).reshape(array.shape)
    try:
        return array.astype(np.float64)
    except (TypeError, ValueError):
        kinds = sorted({type(v).__name__ for v in flat})
        raise TypeError(
            f"Expected `{name}` to hold numbers, booleans or strings. Received: {name} of "
            f"dtype object holding {kinds}"
        ) from None


def _ragged(name: str, value) -> ValueError:
    lengths = sorted({len(row) for row in value if hasattr(row, "__len__")})
    return ValueError(
        f"`{name}` has rows of different lengths (ragged): pad them to one length (e.g. "
        f"keras.utils.pad_sequences). Received: row lengths from {lengths[0] if lengths else '?'} "
        f"to {lengths[-1] if lengths else '?'}"
    )


def train_validation_split(data: ArrayData, validation_split: float) -> tuple:
    """Holds out the last `validation_split` of the rows, as `keras.Model.fit` does.

    Returns:
        (training ArrayData, validation ArrayData).
    """
    rows = data.rows
    split_at = int(math.floor(rows * (1.0 - validation_split)))
    if split_at in (0, rows):
        raise ValueError(
            f"The training data has {rows} rows, too few to hold out a share for validation. "
            f"Received: validation_split={validation_split}"
        )
    return data.slice(0, split_at), data.slice(split_at, rows)


def check_strings(model, is_string: list[bool], names: list[str]) -> None:
    """Checks that strings go to string inputs (TextVectorization, StringLookup) only.

    Args:
        model: the Keras model.
        is_string: per feature (in the model's input order), whether it holds strings.
        names: the features' names for the message (one name stands for all).

    Raises:
        TypeError: naming the feature, the model input and its dtype.
    """
    try:
        dtypes = [str(tensor.dtype) for tensor in model.inputs]
    except (AttributeError, ValueError, TypeError):
        return
    inputs = input_names(model) or []
    for index, (strings, dtype) in enumerate(zip(is_string, dtypes)):
        if strings != (dtype == "string"):
            name = names[index] if len(names) == len(is_string) else f"{names[0]}[{index}]"
            held = "strings" if strings else "numbers"
            raise TypeError(
                f"Feature `{name}` holds {held}, but the model's input `{inputs[index]}` takes "
                f"{dtype} (numeric inputs take numbers; strings need keras.Input(dtype="
                f"'string')). Received: {name} holding {held}"
            )
