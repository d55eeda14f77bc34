"""Local training steps on a worker, a whole window per compiled TensorFlow call.

WindowRunner slices a window of rows into batches and runs Keras' own `train_step` on each
inside one `tf.function` loop, so a window of λ steps costs one Python call, not λ. The
loop is traced once, for windows of any row count.
"""

from __future__ import annotations

import math

import numpy as np


class WindowRunner:
    """Runs windows of training steps on a compiled Keras model (TensorFlow backend).

    The first window builds what Keras builds lazily on a first step (the compiled metrics
    and loss, the optimizer) from its first batch, as `model.fit` does, then traces the
    window function once with the row count left open: `train_step` is traced once, and no
    later window (an epoch's smaller last one) traces again. (A `train_step` that creates
    a Keras variable on its first call is traced twice, as TensorFlow traces any function
    that creates variables.) Each runner traces its own function, and TensorFlow keeps
    tracing statistics per runner, so many short fits in one executor process (a new model
    each) do not trip its "excessive retracing" warning.

    Args:
        model: a compiled keras.Model.
        batch_size: rows per step; the window's last batch may be smaller.
    """

    def __init__(self, model, batch_size: int):
        self.model = model
        self.batch_size = batch_size
        self._run = None  # the traced window function, made by the first window
        self._steps_done = 0

    def run(self, x, y, sample_weight=None) -> int:
        """Trains on all rows of (x, y), batch by batch, each row's loss weighted by
        `sample_weight` if given; returns the number of steps."""
        data = (x, y) if sample_weight is None else (x, y, sample_weight)
        if self._run is None:
            self._run = self._trace(data)
        steps = int(self._run(data))
        self._steps_done += steps
        return steps

    def _trace(self, data):
        """The window function, traced for windows shaped like `data` of any row count."""
        import tensorflow as tf

        # As tensors: numpy strings (object arrays) become tf.string, as fit's tf.data makes them.
        first = tf.nest.map_structure(lambda t: tf.convert_to_tensor(t[: self.batch_size]), data)
        self.model._symbolic_build(data_batch=first)  # what fit builds before its first step
        signature = tf.nest.map_structure(
            lambda t: tf.TensorSpec([None, *t.shape[1:]], t.dtype), first
        )
        # A callable object, not a method: TensorFlow keys its retracing statistics on a
        # function's code, which every runner would share, but on the object itself here.
        function = tf.function(
            _WindowSteps(self.model, self.batch_size), reduce_retracing=True, autograph=False
        )
        function.get_concrete_function(signature)
        return function

    def logs(self) -> dict[str, float]:
        """The running means of loss and metrics since the last `reset` ({} before a step)."""
        if not self._steps_done:
            return {}
        from keras import ops  # a backend's tensors (PyTorch's do not take numpy's mean)

        return {
            name: float(np.mean(ops.convert_to_numpy(value)))
            for name, value in _flat(self.model.get_metrics_result())
        }

    def finite_loss(self) -> bool:
        """False once the running loss is NaN or infinite (True before any step)."""
        return math.isfinite(self.logs().get("loss", 0.0))

    def reset(self) -> None:
        """Starts new running means (at the start of an epoch)."""
        self.model.reset_metrics()
        self._steps_done = 0


class _WindowSteps:
    """The traced body: `train_step` on each batch of a window, in one TensorFlow loop."""

    def __init__(self, model, batch_size: int):
        self.model = model
        self.batch_size = batch_size

    def __call__(self, data):
        import tensorflow as tf

        size = self.batch_size
        rows = tf.shape(tf.nest.flatten(data)[0])[0]
        steps = (rows + size - 1) // size

        def step(index):
            start = index * size
            self.model.train_step(tf.nest.map_structure(lambda t: t[start : start + size], data))
            return (index + 1,)

        tf.while_loop(lambda index: index < steps, step, (tf.constant(0),))
        return steps


def _flat(results: dict):
    for name, value in results.items():
        if isinstance(value, dict):
            yield from _flat(value)
        else:
            yield name, value
