"""Hedged requests: a request that stops delivering is raced by a second one, on another
connection, instead of being waited out.

A connection can stall without failing: the answer stops after its headers, or in the middle of
its body, and nothing tells the client until a read timeout (tens of seconds) runs out. Every
reader of that block waits as long. So each attempt reports its progress (headers, then every
chunk of the body); when an attempt has delivered nothing for a few times the recent p99 of the
time to first byte (never under a second), a second attempt starts, the first answer wins and
the other is cancelled. A healthy link almost never hedges: the threshold follows the link, so
a slow one (a long queue on a shared, bandwidth-limited link) does not look stalled, and an
attempt that is backing off to retry (after a 503, `backing_off`) holds its clock for that
back-off, so an endpoint that is failing is not sent a second train of retries.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# The progress of the attempt that runs in this task, when it runs in a race.
_CURRENT: contextvars.ContextVar[Progress | None] = contextvars.ContextVar("attempt", default=None)


def backing_off(seconds: float) -> None:
    """The attempt running in this task is about to wait seconds on purpose (a retry's
    back-off): the race must not take that wait for a stall and send a second train of retries
    to an endpoint that is failing. Nothing happens outside a race."""
    progress = _CURRENT.get()
    if progress is not None:
        progress.hold(seconds)


class Progress:
    """When an attempt started and when it last delivered anything."""

    __slots__ = ("started", "last", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.started = self.last = loop.time()

    def mark(self) -> None:
        self.last = self._loop.time()

    def hold(self, seconds: float) -> None:
        """The attempt waits on purpose for up to seconds from now (a retry's back-off): it is
        not stalled before that."""
        self.last = max(self.last, self._loop.time() + seconds)

    def since_start(self) -> float:
        return self._loop.time() - self.started


class Hedging:
    """The stall threshold, learnt from recent times to first byte, and the race itself."""

    def __init__(self, floor: float = 1.0, factor: float = 4.0, ceiling: float = 30.0,
                 window: int = 256) -> None:
        self.floor, self.factor, self.ceiling = floor, factor, ceiling
        self._first_bytes: collections.deque[float] = collections.deque(maxlen=window)
        self._threshold = floor
        self._since_update = 0
        self.races = 0
        self.hedged = 0

    def first_byte(self, seconds: float) -> None:
        """Record an attempt's time to its headers."""
        self._first_bytes.append(seconds)
        self._since_update += 1
        if self._since_update >= 16 or len(self._first_bytes) < 16:
            self._since_update = 0
            ordered = sorted(self._first_bytes)
            p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
            self._threshold = min(self.ceiling, max(self.floor, self.factor * p99))

    @property
    def stall_after(self) -> float:
        """Seconds without progress after which an attempt counts as stalled."""
        return self._threshold

    async def race(self, attempt: Callable[[Progress], Awaitable[T]], what: str = "") -> T:
        """attempt(progress)'s result; a second attempt races it if the first stalls. The
        error of the last attempt to fail is raised when none succeeds."""
        loop = asyncio.get_running_loop()
        running: dict[asyncio.Future, Progress] = {}

        def start() -> None:
            progress = Progress(loop)
            context = contextvars.copy_context()
            context.run(_CURRENT.set, progress)
            running[loop.create_task(attempt(progress), context=context)] = progress

        self.races += 1
        start()
        hedged = False
        error: BaseException | None = None
        try:
            while running:
                stall = self.stall_after
                wait = max(0.01, min(p.last for p in running.values()) + stall - loop.time())
                done, _ = await asyncio.wait(running, timeout=None if hedged else wait,
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    running.pop(task)
                    if task.exception() is None:
                        return task.result()
                    error = task.exception()
                if not hedged and running and all(loop.time() - p.last >= stall
                                                  for p in running.values()):
                    hedged = True
                    self.hedged += 1
                    log.info("%s delivered nothing for %.1f s; racing a second request",
                             what or "a request", stall)
                    start()
            assert error is not None
            raise error
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
