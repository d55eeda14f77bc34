"""Test-only fault injection through the worker's `on_exchange` hook.

exchange_fault builds a hook that fails or hangs one worker once, exchange_wait one that
holds every worker at an exchange until the driver gets somewhere; plan_with makes the
trainers build their WorkerPlan with it (tests patch `distkeras.trainers.run.WorkerPlan`).
A fault may wait for a file the driver leaves (e.g. at an epoch's end), so that it happens at
a known point of the run whatever the workers' relative pace.
"""

import functools
import os
import time

from distkeras.executor.worker import WorkerPlan


def exchange_fault(
    worker: int,
    after_commits: int,
    action: str,
    marker: str,
    seconds: float = 3600.0,
    wait_for: str | None = None,
    wait_timeout: float = 300.0,
):
    """A hook making `worker` fail ("fail") or stop responding ("hang") after its
    `after_commits`-th exchange, once: the first attempt creates `marker`, so that a retried
    stage finds it and trains normally. With `wait_for`, the worker first waits (at most
    `wait_timeout` seconds) until that file exists. A closure, so that Spark ships it by value.
    """

    def on_exchange(worker_id: int, commits: int) -> None:
        if worker_id != worker or commits != after_commits:
            return
        if wait_for is not None:
            wait_for_file(wait_for, wait_timeout)
        try:
            with open(marker, "x"):  # only the first attempt gets here
                pass
        except FileExistsError:
            return
        if action == "hang":
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                time.sleep(0.1)
        raise RuntimeError(f"test fault injected after {commits} commits (pid {os.getpid()})")

    return on_exchange


def wait_for_file(path: str, timeout: float) -> None:
    """Waits until `path` exists; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear in {timeout} s")
        time.sleep(0.01)


def exchange_wait(at_commits: int, wait_for: str, wait_timeout: float = 300.0):
    """A hook making every worker wait, at its `at_commits`-th exchange, until `wait_for`
    exists: no worker gets past that point of its run before the driver does."""

    def on_exchange(worker_id: int, commits: int) -> None:
        if commits == at_commits:
            wait_for_file(wait_for, wait_timeout)

    return on_exchange


def plan_with(hook):
    """A WorkerPlan factory that sets `on_exchange=hook`."""
    return functools.partial(WorkerPlan, on_exchange=hook)
