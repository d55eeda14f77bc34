"""TensorFlow's thread pools in an executor's Python worker, sized to Spark's cpus per task."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def configure_threads(threads: int) -> None:
    """Imports TensorFlow (quietly) and sizes its thread pools to `threads`, once per process
    (TensorFlow refuses later changes; the first size is kept then)."""
    from distkeras.quiet import import_tensorflow

    tf = import_tensorflow()  # the executor's first TensorFlow import: without its chatter
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        logger.debug("TensorFlow already initialised in this process; keeping its threads")
