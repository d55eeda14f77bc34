"""Workers' reports: one typed schema checks them on the server and before the monitor.

Fuzzed reports (missing fields, wrong types, huge numbers, NaN, nested structures) never
raise anywhere but in the schema's refusal; the server refuses them by name and the stream
goes on; the monitor counts them, and ends the run naming a worker that keeps sending them.
"""

import math
import threading

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distkeras.errors import DistKerasError, ProtocolError, WorkerError
from distkeras.parameter_server import Client, ParameterServer
from distkeras.ps.wire.schema import REPORT_FIELDS, Report
from distkeras.trainers.monitor import MAX_INVALID_REPORTS, TrainingMonitor

from .conftest import mlp

VALUES = (
    st.none()
    | st.booleans()
    | st.integers(-(10**400), 10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5)
    | st.lists(st.integers(), max_size=3)
    | st.dictionaries(st.text(max_size=4), st.integers() | st.floats() | st.text(), max_size=3)
)
FIELDS = st.dictionaries(
    st.sampled_from([*REPORT_FIELDS, "center", "x"]) | st.text(max_size=6), VALUES, max_size=6
)
REPORTS = st.builds(  # mostly from a real worker id, so that the fields are what is tried
    lambda worker, fields: {**fields, "worker_id": worker},
    st.sampled_from([0, 1]) | VALUES,
    FIELDS | st.fixed_dictionaries({"rows": st.just(8), "steps_per_epoch": VALUES}),
)


@settings(max_examples=300, deadline=None)
@given(REPORTS)
def test_parse_refuses_or_returns_a_typed_report(report):
    try:
        parsed = Report.parse(report, num_workers=2)
    except ProtocolError:
        return
    assert parsed.worker_id in (0, 1)
    assert (parsed.rows is None) == (parsed.steps_per_epoch is None)
    assert all(type(v) is float for v in parsed.logs.values())
    assert parsed.learning_rate is None or math.isfinite(parsed.learning_rate)


@pytest.mark.parametrize(
    "fields, keyword",
    [
        ({"rows": 10}, "come together"),
        ({"logs": {"loss": 10**400}}, "must be a number"),
        ({"logs": {"loss": [1.0]}}, "must be a number"),
        ({"epoch": -1}, "integer in"),
        ({"learning_rate": math.nan}, "number in"),
        ({"samples": 2**60}, "integer in"),
        ({"nested": {"a": 1}}, "unknown report field"),
    ],
)
def test_server_refuses_bad_reports_by_name_and_goes_on(fields, keyword):
    reports = []
    with ParameterServer([np.zeros(3, np.float32)], on_report=reports.append) as ps:
        with Client(ps.address, ps.secret, 0, timeout=5) as client:
            with pytest.raises(DistKerasError, match=keyword):
                client.report(**fields)
            client.report(epoch=0, steps=1)  # the same connection goes on
        assert ps.stats()["rejected"] == 1
    assert reports == [{"epoch": 0, "steps": 1, "worker_id": 0}]


@pytest.fixture(scope="module")
def model():
    return mlp(input_dim=4, hidden=(), classes=2)


def monitor_for(model, server):
    callbacks = keras.callbacks.CallbackList([], model=model)
    callbacks.set_params({"epochs": 1, "verbose": 0, "steps": None})
    monitor = TrainingMonitor(model, callbacks, num_workers=2, epochs=1, worker_timeout=30)
    monitor.attach(server)
    return monitor


@settings(max_examples=100, deadline=None)
@given(st.lists(REPORTS | VALUES, max_size=5))
def test_the_monitor_never_raises_on_a_report(model, reports):
    monitor = monitor_for(model, ParameterServer(model.get_weights()))
    for report in reports:
        monitor.on_report(report)
    monitor._drain(timeout=0)  # the driver's side handles whatever got through


def test_a_worker_that_keeps_sending_bad_reports_ends_the_run_naming_it(model):
    server = ParameterServer(model.get_weights())
    monitor = monitor_for(model, server)
    monitor.on_report({"worker_id": 0, "epoch": 0, "rows": 8, "steps_per_epoch": 1})
    job_done = threading.Event()
    job = threading.Thread(target=job_done.wait, args=(30,), daemon=True)
    job.start()
    try:
        for _ in range(MAX_INVALID_REPORTS):
            monitor.on_report({"worker_id": 1, "rows": 10})  # no steps_per_epoch
        with pytest.raises(WorkerError, match="worker 1 sent 3 invalid reports.*come together"):
            monitor.follow(job)
    finally:
        job_done.set()
        job.join(5)
    assert monitor.rows == {0: 8}  # the valid report went through
