"""The Spark side of the driver: facts about a session, building one, background jobs.

facts: what a session is (Connect or classic, master, slots, cpus per task). session:
`get_spark_session` and the Java check. job: a Spark action in a background thread.
warmup: the executors' early Keras import. placement: where a run's parameter server lives.
"""

from distkeras.spark.session import get_spark_session

__all__ = ["get_spark_session"]
