"""Spark's Python daemon, with Keras (and its backend) imported before it forks any worker.

Spark starts one daemon per executor (`python -m <spark.python.daemon.module>`) and forks a
Python worker from it for each task that needs a new one. Importing here, once, means every
worker starts with Keras already loaded (copy-on-write pages) instead of importing it itself:
seconds per worker on a small machine. Devices are left for each worker to initialise. The
backend is the one the daemon's environment selects: Spark starts a daemon per environment,
and distkeras gives the executors the driver's `KERAS_BACKEND` (spark.session).
`distkeras.spark.get_spark_session` sets this module for the sessions it builds.
"""

from __future__ import annotations

import logging

from pyspark import daemon

logger = logging.getLogger(__name__)


def preload() -> None:
    """Imports Keras quietly; a failure only means each worker imports it itself."""
    try:
        from distkeras.quiet import import_keras

        import_keras(devices=False)
    except Exception as error:  # the daemon must start anyway: Spark needs it for every task
        logger.warning("the Python daemon could not preload Keras: %s", error)


if __name__ == "__main__":
    preload()
    daemon.manager()
