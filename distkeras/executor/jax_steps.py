"""Local training steps on a worker on JAX, a whole window per compiled call.

JaxWindowRunner runs Keras' own stateless `train_step` (the model's, or a custom one written
for JAX) over a window's full batches inside one `jax.lax.scan` under `jax.jit`, and the
window's smaller last batch in a second compiled step; the model's variables (weights,
optimizer slots, learning rate, metric totals) are its state in and out of each window.
"""

from __future__ import annotations

from distkeras.executor.local_steps import WindowRunner


class JaxWindowRunner(WindowRunner):
    """Runs windows of training steps on a compiled Keras model (JAX backend).

    It keeps WindowRunner's running logs (`logs`, `finite_loss`, `reset`: read from the
    model's metrics) and replaces its TensorFlow loop with a compiled JAX one.

    The state of a window is read from the model's variables at its start and written back at
    its end, so what the worker does between windows (new weights from the server, the
    learning rate the driver published, metrics reset at an epoch's start) is what the next
    window starts from, and the optimizer's slots carry over from window to window. One
    compiled scan per number of full batches in a window (in practice: the usual window and
    an epoch's last), kept for the runner's lifetime (the model cache keeps the runner).

    Args:
        model: a compiled keras.Model.
        batch_size: rows per step; the window's last batch may be smaller.
    """

    def __init__(self, model, batch_size: int):  # not WindowRunner's: no TensorFlow here
        self.model = model
        self.batch_size = batch_size
        self._compiled = not model.run_eagerly and bool(model.jit_compile)
        self._scan = self._compile(self._scan_steps)
        self._step = self._compile(self._one_step)
        self._built = False
        self._steps_done = 0

    def _compile(self, function):
        import jax

        return jax.jit(function) if self._compiled else function

    def _scan_steps(self, state, batches):
        import jax

        def body(carry, batch):
            _, carry = self.model.train_step(carry, batch)
            return carry, None

        return jax.lax.scan(body, state, batches)[0]

    def _one_step(self, state, batch):
        return self.model.train_step(state, batch)[1]

    def run(self, x, y, sample_weight=None) -> int:
        """Trains on all rows of (x, y), batch by batch, each row's loss weighted by
        `sample_weight` if given; returns the number of steps."""
        from keras import tree

        data = (x, y) if sample_weight is None else (x, y, sample_weight)
        rows = len(tree.flatten(data)[0])
        size = self.batch_size
        if not self._built:  # creates the compiled metrics' variables, as fit does
            self.model._symbolic_build(data_batch=tree.map_structure(lambda t: t[:size], data))
            self._built = True
        full, rest = divmod(rows, size)
        state = self._state()
        if full and self._compiled:
            stacked = tree.map_structure(
                lambda t: t[: full * size].reshape(full, size, *t.shape[1:]), data
            )
            state = self._scan(state, stacked)
        elif full:  # run_eagerly or jit_compile=False: step by step, as fit would
            for start in range(0, full * size, size):
                batch = tree.map_structure(lambda t, s=start: t[s : s + size], data)
                state = self._step(state, batch)
        if rest:
            state = self._step(state, tree.map_structure(lambda t: t[full * size :], data))
        self._write(state)
        steps = full + (1 if rest else 0)
        self._steps_done += steps
        return steps

    def _variables(self) -> tuple:
        model = self.model
        return (
            model.trainable_variables,
            model.non_trainable_variables,
            model.optimizer.variables,
            model.metrics_variables,
        )

    def _state(self) -> tuple:
        return tuple([v.value for v in group] for group in self._variables())

    def _write(self, state: tuple) -> None:
        for group, values in zip(self._variables(), state):
            for variable, value in zip(group, values):
                variable.assign(value)
