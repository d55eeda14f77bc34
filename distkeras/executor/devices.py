"""The devices of one Spark task: the GPUs Spark gave it, made the only ones TensorFlow sees.

task_devices: called at the start of every training and inference task, before TensorFlow
lists its devices; reads the task's "gpu" addresses from its TaskContext (a barrier one too),
sets CUDA_VISIBLE_DEVICES, TensorFlow's visible devices and memory growth, and returns a
TaskDevices record (what was given, what was set, what TensorFlow sees). Importing this
module, or Keras, initialises nothing: Spark's daemon may import Keras in advance.

TensorFlow reads CUDA_VISIBLE_DEVICES once per process, when it first lists its devices. A
Python worker that Spark reuses for a task with other addresses keeps its devices: on a
CPU-only process the new setting is recorded; a process holding other GPUs fails by name.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading

from distkeras.errors import DeviceError

logger = logging.getLogger(__name__)

RESOURCE = "gpu"  # Spark's resource name (spark.task.resource.gpu.amount)
CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
REUSE_HINT = (
    "Set spark.python.worker.reuse=false for GPU jobs (with the executor daemon "
    "distkeras.executor.daemon a fresh Python worker costs little; docs/cluster.md, GPUs)."
)


@dataclasses.dataclass(frozen=True)
class TaskDevices:
    """What one task was given and what it made visible.

    Attributes:
        addresses: the GPU addresses Spark gave the task; () for none.
        cuda_visible_devices: CUDA_VISIBLE_DEVICES as the task left it ("" hides every GPU;
            None: unset, outside a task only).
        visible: TensorFlow's visible devices once chosen, e.g. ("/physical_device:GPU:0",
            "/physical_device:CPU:0").
        applied: False when TensorFlow had listed its devices earlier in this Python
            worker, under `initialised_under`: the setting is recorded, not applied.
        initialised_under: CUDA_VISIBLE_DEVICES when TensorFlow listed its devices in this
            process (None: before this task it had not).
        fallback: GPUs were given but TensorFlow sees none, and the user allowed the CPU.
        host: the executor's host name.
        pid: the Python worker's process id.
        in_task: False outside a Spark task (a driver calling a kernel itself), where the
            process's devices are left as they are.
    """

    addresses: tuple
    cuda_visible_devices: str | None
    visible: tuple
    applied: bool
    initialised_under: str | None
    fallback: bool
    host: str
    pid: int
    in_task: bool = True

    @property
    def gpus(self) -> tuple:
        """TensorFlow's visible GPUs."""
        return tuple(name for name in self.visible if ":GPU:" in name)

    def describe(self) -> str:
        """One line for the worker summary and the log."""
        given = ",".join(self.addresses)
        if not self.in_task:
            return f"not a Spark task: this process's devices {list(self.visible)}"
        if not self.addresses:
            return "CPU (Spark gave this task no GPU)"
        if self.fallback:
            text = f"CPU fallback (Spark gave GPU {given}; TensorFlow sees no GPU)"
        else:
            text = f"GPU {given} (CUDA_VISIBLE_DEVICES={self.cuda_visible_devices})"
        if not self.applied:
            text += (
                "; this Python worker kept the devices TensorFlow listed for an earlier task "
                f"(CUDA_VISIBLE_DEVICES={self.initialised_under})"
            )
        return text

    def summary(self) -> dict:
        """The fields a worker summary carries (see the worker's SUMMARY_SCHEMA)."""
        return {
            "host": self.host,
            "devices": self.describe(),
            "gpu_addresses": list(self.addresses),
            "cuda_visible_devices": self.cuda_visible_devices,
            "visible_devices": list(self.visible),
        }


class _Process:
    """This Python worker's device state (it outlives a task when Spark reuses it)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.initialised_under: str | None = None  # CUDA_VISIBLE_DEVICES at the first listing
        self.task: int | None = None  # the task attempt of `choice`
        self.choice: TaskDevices | None = None
        self.said_cpu = False


_PROCESS = _Process()


def given_addresses(context) -> tuple:
    """The GPU addresses Spark gave the task of `context` (a TaskContext); () for none."""
    resource = context.resources().get(RESOURCE)
    return tuple(resource.addresses) if resource is not None else ()


def task_devices(allow_cpu_fallback: bool = False, context=None) -> TaskDevices:
    """Makes the running task's GPUs the only ones TensorFlow sees; returns what was done.

    Called once per task (again in the same task, it returns the first answer). Outside a
    Spark task (`TaskContext.get()` is None) it changes nothing and describes the process.

    Args:
        allow_cpu_fallback: when Spark gave GPUs but TensorFlow sees none (a CPU-only
            build, a driver mismatch, or a test's fake discovery script), run on the CPU
            instead of failing.
        context: the task's TaskContext; None: `TaskContext.get()`.

    Returns:
        The TaskDevices of this task.

    Raises:
        DeviceError: GPUs were given but TensorFlow sees none (without the fallback), or
            sees fewer than given, or this reused Python worker holds other GPUs.
    """
    if context is None:
        from pyspark import TaskContext

        context = TaskContext.get()
    if context is None:
        return _outside_a_task()
    task = context.taskAttemptId()
    with _PROCESS.lock:
        if _PROCESS.task == task:
            return _PROCESS.choice
        choice = _choose(given_addresses(context), allow_cpu_fallback)
        _PROCESS.task, _PROCESS.choice = task, choice
        if choice.addresses or not _PROCESS.said_cpu:  # the CPU is said once per process
            logger.info("pid %d on %s: %s", choice.pid, choice.host, choice.describe())
        _PROCESS.said_cpu = _PROCESS.said_cpu or not choice.addresses
    return choice


def _choose(addresses: tuple, allow_cpu_fallback: bool) -> TaskDevices:
    from distkeras.quiet import import_tensorflow

    wanted = ",".join(addresses)  # "": no GPU for this task
    os.environ[CUDA_VISIBLE_DEVICES] = wanted
    tf = import_tensorflow(devices=False)
    before = _PROCESS.initialised_under
    if before is None and _listed(tf):  # listed by someone else (user code) before us
        before = _PROCESS.initialised_under = "(unknown)"
    tf = import_tensorflow()  # lists the devices, under `wanted` the first time
    gpus = tf.config.list_physical_devices("GPU")
    applied = before is None
    if applied:
        _PROCESS.initialised_under = wanted
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)  # tasks may share a GPU
        tf.config.set_visible_devices(gpus, "GPU")
    elif gpus and before != wanted:
        raise DeviceError(
            f"This Python worker (pid {os.getpid()}) holds GPUs {_names(gpus)} "
            f"(TensorFlow listed them under CUDA_VISIBLE_DEVICES={before!r}), but Spark gave "
            f"this task GPU addresses {list(addresses)}; TensorFlow cannot switch devices in "
            f"a running process. {REUSE_HINT}"
        )
    fallback = False
    if addresses and not gpus:
        if not allow_cpu_fallback:
            raise DeviceError(
                f"Spark gave this task GPU addresses {list(addresses)}, but TensorFlow sees no "
                f"GPU (CUDA_VISIBLE_DEVICES={wanted!r}; built with CUDA: "
                f"{tf.test.is_built_with_cuda()}; devices: "
                f"{_names(tf.config.list_physical_devices())}). Install a GPU build of "
                "TensorFlow matching the driver, or pass allow_cpu_fallback=True to run "
                "on the CPU."
            )
        fallback = True
    elif applied and len(gpus) != len(addresses):
        raise DeviceError(
            f"Spark gave this task GPU addresses {list(addresses)}, but TensorFlow sees "
            f"{_names(gpus)} under CUDA_VISIBLE_DEVICES={wanted!r}: check the discovery "
            "script's addresses against the CUDA device indices."
        )
    return TaskDevices(
        addresses=addresses,
        cuda_visible_devices=os.environ.get(CUDA_VISIBLE_DEVICES),  # as read back
        visible=tuple(_names(tf.config.get_visible_devices())),
        applied=applied,
        initialised_under=before,
        fallback=fallback,
        host=socket.gethostname(),
        pid=os.getpid(),
    )


def _outside_a_task() -> TaskDevices:
    from distkeras.quiet import import_tensorflow

    tf = import_tensorflow()
    return TaskDevices(
        addresses=(),
        cuda_visible_devices=os.environ.get(CUDA_VISIBLE_DEVICES),
        visible=tuple(_names(tf.config.get_visible_devices())),
        applied=False,
        initialised_under=_PROCESS.initialised_under,
        fallback=False,
        host=socket.gethostname(),
        pid=os.getpid(),
        in_task=False,
    )


def _listed(tf) -> bool:
    """Whether TensorFlow has listed its physical devices in this process (it reads
    CUDA_VISIBLE_DEVICES then, once); its eager context keeps the list once made."""
    from tensorflow.python.eager import context

    return getattr(context.context(), "_physical_devices", None) is not None


def _names(devices) -> list:
    return [device.name for device in devices]
