"""The per-mount bound on what background fetches have in flight."""

from __future__ import annotations

import collections
import contextlib

import trio


class InFlight:
    """The per-mount bound on the blocks background fetches have in flight (how many fetches
    run at once is bounded by the number of workers). Waiters are served in order, so a large
    fetch is not overtaken for ever by small ones, and none holds part of what it needs."""

    def __init__(self, blocks: int) -> None:
        self._free = self._total = blocks
        self._waiting: collections.deque[tuple[int, trio.Event]] = collections.deque()

    @contextlib.asynccontextmanager
    async def take(self, blocks: int):
        blocks = min(blocks, self._total)
        if self._waiting or self._free < blocks:
            turn = trio.Event()
            self._waiting.append((blocks, turn))
            try:
                await turn.wait()  # _give took the blocks for this waiter
            except BaseException:  # cancelled: leave the queue, or give back what was taken
                if turn.is_set():
                    self._give(blocks)
                else:
                    self._waiting.remove((blocks, turn))
                raise
        else:
            self._free -= blocks
        try:
            yield
        finally:
            self._give(blocks)

    def _give(self, blocks: int) -> None:
        self._free += blocks
        while self._waiting and self._waiting[0][0] <= self._free:
            wanted, turn = self._waiting.popleft()
            self._free -= wanted
            turn.set()
