"""Local training steps on a worker on PyTorch, a window per Python loop of Keras' steps.

TorchWindowRunner runs Keras' own `train_step` (the model's, or a custom one written for
PyTorch) on each batch of a window through the model's train function, as `model.fit` does
on PyTorch: eager autograd per step, or `torch.compile`d when the model is compiled with
`jit_compile=True`. The model's variables are torch tensors in place, so what the worker does
between windows (new weights from the server, the learning rate, metrics reset) is what the
next window starts from.
"""

from __future__ import annotations

from distkeras.executor.local_steps import WindowRunner


class TorchWindowRunner(WindowRunner):
    """Runs windows of training steps on a compiled Keras model (PyTorch backend).

    It keeps WindowRunner's running logs (`logs`, `finite_loss`, `reset`) and replaces its
    TensorFlow loop with Keras' PyTorch train function, one call per batch (PyTorch has no
    compiled loop over steps; Keras requires `steps_per_execution=1` there).

    Takes WindowRunner's arguments: a compiled keras.Model and the rows per step.
    """

    def __init__(self, model, batch_size: int):
        super().__init__(model, batch_size)
        self._built = False

    def run(self, x, y, sample_weight=None) -> int:
        """Trains on all rows of (x, y), batch by batch, each row's loss weighted by
        `sample_weight` if given; returns the number of steps."""
        from keras import tree

        data = (x, y) if sample_weight is None else (x, y, sample_weight)
        data = tree.map_structure(_as_tensor, data)
        rows = len(tree.flatten(data)[0])
        size = self.batch_size
        model = self.model
        if not self._built:  # the compiled metrics' variables and the train function, as fit
            model._symbolic_build(data_batch=tree.map_structure(lambda t: t[:size], data))
            model.make_train_function()
            self._built = True
        model.train()  # torch's training mode, as fit sets it for each epoch
        try:
            for start in range(0, rows, size):
                model.train_function([tree.map_structure(lambda t, s=start: t[s : s + size], data)])
        finally:
            model.eval()
        steps = -(-rows // size)
        self._steps_done += steps
        return steps


def _as_tensor(array):
    """A numeric numpy array as a torch tensor on Keras' device (strings stay numpy)."""
    from keras import ops

    if getattr(array, "dtype", None) is not None and array.dtype.kind in "biuf":
        return ops.convert_to_tensor(array)
    return array
