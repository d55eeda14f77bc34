"""The Keras backend of an executor's Python worker: the driver's, checked before any step.

use_backend: selects the plan's backend when this process has not imported Keras yet, fails
naming both backends when it imported another one, makes the task's GPUs TensorFlow's
(executor.devices) and sizes its threads.
check_trainable: whether workers can train on a backend (the driver asks before any job).
window_runner: the runner of local steps for that backend (local_steps on TensorFlow,
jax_steps on JAX, torch_steps on PyTorch). No Spark, no sockets.
"""

from __future__ import annotations

import os
import socket
import sys

from distkeras.executor.devices import TaskDevices, task_devices
from distkeras.quiet import BACKEND_ENV, import_keras

TRAINING_BACKENDS = ("tensorflow", "jax", "torch")


def use_backend(backend: str, threads: int = 1, allow_cpu_fallback: bool = False) -> TaskDevices:
    """Makes `backend` this process's Keras backend, before the task builds a model.

    Args:
        backend: the driver's `keras.backend.backend()`.
        threads: the backend's intra-op threads (Spark's cpus per task; TensorFlow and
            PyTorch: XLA sizes its own pool on JAX).
        allow_cpu_fallback: see executor.devices.task_devices (TensorFlow only).

    Returns:
        The task's devices: TensorFlow's choice (executor.devices); another backend keeps
        the devices it finds, and Spark's GPU addresses are not applied to it.

    Raises:
        RuntimeError: this Python worker already imported Keras with another backend.
    """
    if "keras" not in sys.modules:
        os.environ[BACKEND_ENV] = backend
    devices = task_devices(allow_cpu_fallback) if backend == "tensorflow" else None
    loaded = import_keras().backend.backend()
    if loaded != backend:
        raise RuntimeError(
            f"The driver runs Keras on the `{backend}` backend, but this executor's Python "
            f"worker already imported Keras on `{loaded}`. Give the executors "
            f"`spark.executorEnv.{BACKEND_ENV}={backend}` (distkeras does so on the sessions "
            f"it builds and on classic sessions), or run the driver on `{loaded}`. "
            f"Received: backend={backend!r}, executor backend={loaded!r}"
        )
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
    if devices is None:
        return _own_devices(backend)
    from distkeras.executor.threads import configure_threads

    configure_threads(threads)
    return devices


def _own_devices(backend: str) -> TaskDevices:
    """What a backend other than TensorFlow runs on: the devices it finds itself."""
    return TaskDevices(
        addresses=(),
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        visible=(f"{backend}: the devices it finds",),
        applied=False,
        initialised_under=None,
        fallback=False,
        host=socket.gethostname(),
        pid=os.getpid(),
    )


def check_trainable(backend: str) -> str:
    """Returns `backend` if workers can train on it (the driver checks before any job).

    Raises:
        RuntimeError: the backend has no runner (e.g. `numpy`), naming those that do.
    """
    if backend not in TRAINING_BACKENDS:
        raise RuntimeError(
            f"distkeras trains on the Keras backends {', '.join(TRAINING_BACKENDS)}; this "
            f"run's backend has no distributed runner yet. Received: backend={backend!r}"
        )
    return backend


def window_runner(backend: str, model, batch_size: int):
    """The runner of windows of local steps for `model` on `backend` (see local_steps).

    Raises:
        RuntimeError: the backend has no runner (see `check_trainable`).
    """
    check_trainable(backend)
    if backend == "tensorflow":
        from distkeras.executor.local_steps import WindowRunner

        return WindowRunner(model, batch_size)
    if backend == "torch":
        from distkeras.executor.torch_steps import TorchWindowRunner

        return TorchWindowRunner(model, batch_size)
    from distkeras.executor.jax_steps import JaxWindowRunner

    return JaxWindowRunner(model, batch_size)
