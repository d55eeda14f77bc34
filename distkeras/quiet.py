"""Keras (and TensorFlow) started without its startup chatter, on the driver and executors.

QUIET_ENV: the environment Spark's executors get (distkeras.spark). import_keras: imports Keras
with whatever backend it selects (TensorFlow, JAX, PyTorch) and, on TensorFlow, initialises its
devices with file descriptor 2 captured, then writes back every captured line that is not known
start-up chatter; TensorFlow itself is imported only when it is the backend (import_tensorflow
imports it regardless). Nothing here runs at import time.

What silences which line (TensorFlow 2.21, measured):

- "oneDNN custom operations are on", "Could not find cuda drivers", "All log messages before
  absl::InitializeLog()": written before TensorFlow's logging starts, so TF_CPP_MIN_LOG_LEVEL
  cannot hide them; the capture does (TF_ENABLE_ONEDNN_OPTS=0 would too, at the price of
  oneDNN's speed, and is left alone).
- "cpu_feature_guard ... rebuild TensorFlow": an INFO line; TF_CPP_MIN_LOG_LEVEL=1 or the capture.
- "failed call to cuInit": an ERROR line at device initialisation, hidden only by
  TF_CPP_MIN_LOG_LEVEL=3, which would also hide real errors; the capture, which includes device
  initialisation, hides it instead. CUDA_VISIBLE_DEVICES="" (a task given no GPU, see
  executor.devices) does not: CUDA still initialises, and finds no device.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile

# C++ INFO lines off; TensorFlow's warnings and errors still show. A value set by the user wins.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "1"}
# The variable that selects Keras' backend before its import; executors get the driver's.
BACKEND_ENV = "KERAS_BACKEND"

CHATTER = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|oneDNN custom operations are on"
    r"|Could not find cuda drivers"
    r"|cpu_feature_guard"
    r"|rebuild TensorFlow with the appropriate compiler flags"
    r"|failed call to cuInit"
)


def quiet_environment() -> None:
    """Sets QUIET_ENV's variables in this process where the user has not set them."""
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)


def keras_backend() -> str:
    """This process's Keras backend: Keras' own answer once it is imported; before, the one
    its import will select, read as Keras reads it (`KERAS_BACKEND`, else the `backend` of
    keras.json in $KERAS_HOME or ~/.keras, else TensorFlow), without importing it."""
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend"):
        return keras.backend.backend()
    if os.environ.get(BACKEND_ENV):
        return os.environ[BACKEND_ENV]
    home = os.path.expanduser("~")
    folder = os.environ.get("KERAS_HOME") or os.path.join(
        home if os.access(home, os.W_OK) else "/tmp", ".keras"
    )
    try:
        with open(os.path.join(folder, "keras.json")) as config:
            return str(json.load(config).get("backend", "tensorflow"))
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def import_keras(devices: bool = True):
    """Imports Keras quietly with the backend it selects (`KERAS_BACKEND`, else its config
    file) and returns `keras`; on TensorFlow, as `import_tensorflow` does.

    Args:
        devices: on TensorFlow, also initialise its devices (see `import_tensorflow`).
    """
    if "keras" not in sys.modules:
        quiet_environment()
        with _chatter_filtered():
            import keras  # noqa: F401
    import keras

    if keras.backend.backend() == "tensorflow":
        import_tensorflow(devices)
    return keras


def import_tensorflow(devices: bool = True):
    """Imports TensorFlow and Keras quietly (see the module docstring) and returns `tensorflow`.

    Args:
        devices: also initialise TensorFlow's devices (the cuInit line). Spark's Python daemon
            (distkeras.executor.daemon) imports without: its forked workers initialise their own.

    Each step happens once per process. Lines that are not start-up chatter (real warnings and
    errors) are written back to stderr once the step is done.
    """
    global _DEVICES_READY
    if "tensorflow" not in sys.modules:
        quiet_environment()
        with _chatter_filtered():
            import keras  # noqa: F401  (Keras loads TensorFlow's second set of libraries)
            import tensorflow  # noqa: F401
    import tensorflow as tf

    if devices and not _DEVICES_READY:
        with _chatter_filtered():
            tf.config.list_physical_devices()  # device initialisation: the cuInit line
        _DEVICES_READY = True
    return tf


_DEVICES_READY = False


@contextlib.contextmanager
def _chatter_filtered():
    """Captures file descriptor 2 for the block, then writes back what is not chatter."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            _replay(captured.read().decode(errors="replace"))


def _replay(text: str) -> None:
    lines = [line for line in text.splitlines(keepends=True) if not CHATTER.search(line)]
    if lines:
        sys.stderr.write("".join(lines))
        sys.stderr.flush()
