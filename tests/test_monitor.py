"""TrainingMonitor without Spark: workers' reports in, Keras callback events out.

A real ParameterServer on loopback stands for the run's server; a thread feeds the reports
two workers would send, as the Spark job would while it runs.
"""

import threading

import keras
import numpy as np
import pytest

from distkeras.errors import WorkerError
from distkeras.ps import Client, ParameterServer
from distkeras.trainers.monitor import TrainingMonitor

from .conftest import mlp

SECRET = b"monitor-test-secret"


class Recorder(keras.callbacks.Callback):
    """Records the events it gets, in order; stops training at `stop_after` epochs."""

    def __init__(self, stop_after=None):
        super().__init__()
        self.events = []
        self.stop_after = stop_after

    def on_epoch_begin(self, epoch, logs=None):
        self.events.append(("epoch_begin", epoch))

    def on_train_batch_end(self, batch, logs=None):
        self.events.append(("batch_end", batch))

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(("epoch_end", epoch, dict(logs)))
        if self.stop_after is not None and epoch + 1 >= self.stop_after:
            self.model.stop_training = True


def reports(epochs, losses):
    """Two workers' reports: 3 and 1 steps per epoch; worker w's loss in epoch e is
    losses[w][e]."""
    out = [
        {"worker_id": 0, "rows": 96, "steps_per_epoch": 3},
        {"worker_id": 1, "rows": 32, "steps_per_epoch": 1},
    ]
    for epoch in range(epochs):
        for worker, steps in ((0, 3), (1, 1)):
            logs = {"loss": losses[worker][epoch]}
            out.append(
                {"worker_id": worker, "epoch": epoch, "steps": steps, "logs": logs,
                 "epoch_done": True}
            )  # fmt: skip
    out += [{"worker_id": 0, "finished": True}, {"worker_id": 1, "finished": True}]
    return out


def follow(monitor, server, feed, hold=None, heartbeat=None):
    """Runs `monitor.follow` while a thread hands `feed` to `on_report`; with `hold` (an
    Event), the thread then stays alive, as a Spark job does while its workers are silent,
    sending `heartbeat` every 0.1 s if given, until `hold` is set (at most 30 s)."""

    def job():
        for report in feed:
            monitor.on_report(report)
        if hold is not None:
            for _ in range(300):
                if hold.wait(0.1):
                    break
                if heartbeat is not None:
                    monitor.on_report(heartbeat)

    thread = threading.Thread(target=job, daemon=True)
    monitor.attach(server)
    monitor.begin()
    thread.start()
    try:
        monitor.follow(thread)
    finally:
        if hold is not None:
            hold.set()
        thread.join(30)
    assert not thread.is_alive()


@pytest.fixture
def served():
    model = mlp(input_dim=4, hidden=(3,), classes=2)
    server = ParameterServer(model.get_weights(), host="127.0.0.1", secret=SECRET).start()
    try:
        yield model, server
    finally:
        server.stop()


def monitor_for(model, recorder, epochs, *others, **kwargs):
    callbacks = keras.callbacks.CallbackList(
        [recorder, *others], add_history=True, model=model, epochs=epochs, steps=None
    )
    return TrainingMonitor(model, callbacks, 2, epochs, **kwargs), callbacks


def test_epochs_end_when_every_worker_finished_them_with_step_weighted_logs(served):
    model, server = served
    recorder = Recorder()
    monitor, callbacks = monitor_for(model, recorder, epochs=2)
    callbacks.on_train_begin()
    center = [np.full_like(w, 0.5) for w in model.get_weights()]
    server.set_weights(center)
    follow(monitor, server, reports(2, losses=[[1.0, 0.5], [3.0, 1.5]]))
    ends = [e for e in recorder.events if e[0] == "epoch_end"]
    assert [e[1] for e in ends] == [0, 1]
    # worker 0 ran 3 steps at 1.0, worker 1 one step at 3.0: (3*1 + 1*3) / 4
    assert ends[0][2]["loss"] == pytest.approx(1.5)
    assert ends[1][2]["loss"] == pytest.approx(0.75)
    assert model.history.history["loss"] == pytest.approx([1.5, 0.75])
    batch_ends = [e[1] for e in recorder.events if e[0] == "batch_end"]
    assert batch_ends and max(batch_ends) == 3  # steps - 1 over both workers
    assert callbacks.params["steps"] == 4
    for got, want in zip(model.get_weights(), center):
        np.testing.assert_array_equal(got, want)  # the center reached the model
    assert monitor.epoch == 2 and monitor.done == {0, 1}


def test_a_callback_stop_reaches_the_server_and_ends_the_epochs(served):
    model, server = served
    recorder = Recorder(stop_after=1)
    monitor, callbacks = monitor_for(model, recorder, epochs=3)
    callbacks.on_train_begin()
    follow(monitor, server, reports(3, losses=[[1.0] * 3, [1.0] * 3]))
    assert [e[1] for e in recorder.events if e[0] == "epoch_end"] == [0]
    with Client(server.advertised_address, SECRET, worker_id=0) as client:
        client.pull()
        assert client.stop_requested
        assert client.published["epoch"] == 1


def test_a_learning_rate_set_by_a_callback_is_published(served):
    model, server = served
    model.optimizer.learning_rate = 0.01

    class Halve(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.optimizer.learning_rate = 0.005

    monitor, callbacks = monitor_for(model, Recorder(), 2, Halve())
    callbacks.on_train_begin()
    follow(monitor, server, reports(2, losses=[[1.0] * 2, [1.0] * 2]))
    with Client(server.advertised_address, SECRET, worker_id=0) as client:
        client.pull()
        assert client.published["learning_rate"] == pytest.approx(0.005)


def test_a_silent_worker_fails_the_run_naming_it(served):
    model, server = served
    monitor, callbacks = monitor_for(model, Recorder(), epochs=1, worker_timeout=0.5)
    callbacks.on_train_begin()
    started = reports(1, losses=[[1.0], [1.0]])[:2]  # both started, then worker 1 is silent
    alive = {"worker_id": 0, "epoch": 0, "steps": 1, "logs": {"loss": 1.0}}
    with pytest.raises(WorkerError, match=r"worker 1 sent no progress .*worker_timeout=0.5"):
        follow(monitor, server, started, hold=threading.Event(), heartbeat=alive)


def test_a_worker_waiting_in_a_round_is_not_the_one_named_hung():
    """Worker 0 commits and waits in the round; worker 1 hangs. The monitor's silence check
    (here before the round's timeout) leaves worker 0 alone and names worker 1."""
    model = mlp(input_dim=4, hidden=(3,), classes=2)
    server = ParameterServer(
        model.get_weights(),
        host="127.0.0.1",
        secret=SECRET,
        round_rule=lambda center, commits: None,
        num_workers=2,
        round_timeout=5.0,
    ).start()
    errors = []

    def commit_and_wait():
        with Client(server.advertised_address, SECRET, worker_id=0) as client:
            try:
                client.commit(model.get_weights())
            except Exception as error:  # the round's failure, told to the waiting worker
                errors.append(error)

    committer = threading.Thread(target=commit_and_wait, daemon=True)
    try:
        monitor, callbacks = monitor_for(model, Recorder(), epochs=1, worker_timeout=1.0)
        callbacks.on_train_begin()
        committer.start()
        started = reports(1, losses=[[1.0], [1.0]])[:2]
        with pytest.raises(WorkerError, match=r"worker 1 sent no progress"):
            follow(monitor, server, started, hold=threading.Event())
    finally:
        server.stop()
        committer.join(30)
    assert not committer.is_alive() and errors
