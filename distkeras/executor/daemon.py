"""Spark's Python daemon, with TensorFlow and Keras imported before it forks any worker.

Spark starts one daemon per executor (`python -m <spark.python.daemon.module>`) and forks a
Python worker from it for each task that needs a new one. Importing here, once, means every
worker starts with Keras already loaded (copy-on-write pages) instead of importing it itself:
seconds per worker on a small machine. Devices are left for each worker to initialise.
`distkeras.spark.get_spark_session` sets this module for the sessions it builds.
"""

from __future__ import annotations

import logging

from pyspark import daemon

logger = logging.getLogger(__name__)


def preload() -> None:
    """Imports Keras quietly; a failure only means each worker imports it itself."""
    try:
        from distkeras.quiet import import_tensorflow

        import_tensorflow(devices=False)
    except Exception as error:  # the daemon must start anyway: Spark needs it for every task
        logger.warning("the Python daemon could not preload Keras: %s", error)


if __name__ == "__main__":
    preload()
    daemon.manager()
