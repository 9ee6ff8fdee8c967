"""Single-flight getting: the first caller for a key gets it, concurrent callers wait for that
instead of asking the endpoint again (one GET for a block read by 16 processes at once, one
listing for a series opened by a whole pipeline)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import trio

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K]):
    """Who is getting what, on one trio loop."""

    def __init__(self) -> None:
        self._pending: dict[K, trio.Event] = {}

    def __contains__(self, key: K) -> bool:
        return key in self._pending

    def claim(self, key: K) -> bool:
        """Take the getting of key, unless someone has; whoever claims must release."""
        if key in self._pending:
            return False
        self._pending[key] = trio.Event()
        return True

    def waiting(self, key: K) -> trio.Event | None:
        """What to wait on while someone else gets key (None: nobody is)."""
        return self._pending.get(key)

    def release(self, key: K) -> None:
        """Done getting key, well or not: wake whoever waits (they look again)."""
        self._pending.pop(key).set()

    async def get(self, key: K, have: Callable[[], V | None],
                  make: Callable[[], Awaitable[V]]) -> V:
        """have() if it has the value; else what whoever is getting it got; else make()."""
        while (value := have()) is None and (event := self._pending.get(key)) is not None:
            await event.wait()
        if value is not None:
            return value
        self.claim(key)
        try:
            return await make()
        finally:
            self.release(key)
