"""Running aiobotocore (asyncio) work from pyfuse3's handlers (trio).

pyfuse3 drives its handlers on trio; aiobotocore only runs on asyncio. The two loops cannot share
a thread, so asyncio gets one thread of its own for the life of the mount, where the S3 client and
its connection pool live. A trio handler submits a coroutine to that loop and sleeps on a trio
Event that the asyncio side sets when the coroutine finishes: the trio loop never blocks, any
number of requests are in flight at once on the one asyncio thread, and no thread is spent per
request (trio.to_thread would spend one per waiting request and cap concurrency at its limiter).
If trio cancels the handler (the kernel interrupted the request), the asyncio task is cancelled too.
trio-asyncio could host both loops in one thread, but it patches asyncio's internals and would tie
idcfs to the exact versions of trio and asyncio it supports.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import trio

T = TypeVar("T")


class AsyncioBridge:
    """One asyncio loop in one thread, callable from trio tasks and from plain threads."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="idcfs-asyncio", daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run coro on the asyncio loop and wait for it, from a thread that is not a trio loop."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start coro on the asyncio loop; its future, to wait for later."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run coro on the asyncio loop and wait for it without blocking the calling trio loop."""
        return await self.wait(self.submit(coro))

    @staticmethod
    async def wait(future: concurrent.futures.Future[T]) -> T:
        """Wait for a submitted coroutine from a trio task; cancelling the task cancels it."""
        done = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def wake(_: concurrent.futures.Future) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            raise
        return future.result()
