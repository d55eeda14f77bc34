"""Test-only fault injection through the worker's `on_exchange` hook.

exchange_fault builds a hook that fails or hangs one worker once; plan_with makes the
trainers build their WorkerPlan with it (tests patch `distkeras.trainers.base.WorkerPlan`).
"""

import functools
import os
import time

from distkeras.worker import WorkerPlan


def exchange_fault(worker: int, after_commits: int, action: str, marker: str, seconds=3600.0):
    """A hook making `worker` fail ("fail") or stop responding ("hang") after its
    `after_commits`-th exchange, once: the first attempt creates `marker`, so that a retried
    stage finds it and trains normally. A closure, so that Spark ships it by value.
    """

    def on_exchange(worker_id: int, commits: int) -> None:
        if worker_id != worker or commits != after_commits:
            return
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


def plan_with(hook):
    """A WorkerPlan factory that sets `on_exchange=hook`."""
    return functools.partial(WorkerPlan, on_exchange=hook)
