"""RateLimitedLog: one log line per interval at most, with a count of the lines held back.

For every line a peer can cause (an unauthenticated connection, a refused message, a bad
report), so that no peer can flood the driver's log. Used by the server and the monitor.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

LOG_INTERVAL = 5.0  # seconds between two lines of one limiter


class RateLimitedLog:
    """Logs one line at most per `interval` seconds to `logger`, counting the ones held back.

    Args:
        logger: Where the lines go.
        interval: Seconds between two lines.
    """

    def __init__(self, logger: logging.Logger, interval: float = LOG_INTERVAL) -> None:
        self._logger = logger
        self._interval = interval
        self._lock = threading.Lock()  # server threads log concurrently
        self._last = -float("inf")
        self._held = 0

    def warning(self, msg: str, *args: Any) -> None:
        self.log(logging.WARNING, msg, *args)

    def info(self, msg: str, *args: Any) -> None:
        self.log(logging.INFO, msg, *args)

    def log(self, level: int, msg: str, *args: Any) -> None:
        """Logs `msg` unless a line went out less than `interval` seconds ago (then counts it)."""
        with self._lock:
            now = time.monotonic()
            if now - self._last < self._interval:
                self._held += 1
                return
            held, self._last, self._held = self._held, now, 0
        if held:
            msg += f" ({held} similar messages held back)"
        self._logger.log(level, msg, *args)
