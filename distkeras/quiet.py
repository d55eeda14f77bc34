"""TensorFlow started without its startup chatter, on the driver's entry points and executors.

QUIET_ENV: the environment Spark's executors get (distkeras.spark). import_tensorflow: imports
TensorFlow and initialises its devices with file descriptor 2 captured, then writes back every
captured line that is not known start-up chatter. Nothing here runs at import time.

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
import os
import re
import sys
import tempfile

# C++ INFO lines off; TensorFlow's warnings and errors still show. A value set by the user wins.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "1"}

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
