"""Logging failed requests: each once, with its cause, but a storm (an endpoint gone while
thousands of reads fail) as a count every few seconds, not line by line."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("idcfs")


class FailureLog:
    def __init__(self, burst: int = 10, period: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.period, self._clock = burst, period, clock
        self._window_start = 0.0
        self._in_window = 0
        self._suppressed = 0

    def log(self, exc: BaseException, unexpected: str | None = None) -> None:
        """Log a failed request with its cause; unexpected names what failed for a reason
        nobody foresaw, logged with its traceback."""
        now = self._clock()
        if now - self._window_start >= self.period:
            if self._suppressed:
                log.error("%d more failed requests in the last %.0f s were not logged one by one",
                          self._suppressed, self.period)
            self._window_start, self._in_window, self._suppressed = now, 0, 0
        if self._in_window >= self.burst:
            self._suppressed += 1
        elif unexpected:
            self._in_window += 1
            log.error("%s: %s: %s", unexpected, type(exc).__name__, exc, exc_info=exc)
        else:
            self._in_window += 1
            log.error("%s", exc)
