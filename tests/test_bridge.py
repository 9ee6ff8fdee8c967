"""The trio -> asyncio bridge: many requests in flight on one asyncio thread, none blocking trio."""

from __future__ import annotations

import asyncio
import threading

import pytest
import trio

from idcfs.bridge import AsyncioBridge


@pytest.fixture
def bridge():
    b = AsyncioBridge()
    b.start()
    yield b
    b.stop()


def test_many_requests_overlap_without_a_thread_each(bridge):
    state = {"now": 0, "peak": 0}
    gate = asyncio.Event()

    async def request(i: int) -> int:
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        if state["now"] == 50:
            gate.set()
        await gate.wait()
        state["now"] -= 1
        return i

    threads = []

    async def main():
        results = []
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(lambda i=i: _collect(bridge, request(i), results))
            await trio.sleep(0.2)
            threads.append(threading.active_count())
        return sorted(results)

    before = threading.active_count()
    assert trio.run(main) == list(range(50))
    assert state["peak"] == 50
    assert threads[0] == before


async def _collect(bridge, coro, results):
    results.append(await bridge.run(coro))


def test_trio_keeps_running_while_asyncio_work_waits(bridge):
    ticks = []

    async def slow():
        await asyncio.sleep(0.3)
        return "done"

    async def ticker():
        for _ in range(5):
            ticks.append(1)
            await trio.sleep(0.01)

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            result = await bridge.run(slow())
            assert len(ticks) == 5
            return result

    assert trio.run(main) == "done"


def test_errors_cross_the_bridge_as_themselves(bridge):
    async def fail():
        raise KeyError("missing")

    with pytest.raises(KeyError):
        trio.run(bridge.run, fail())


def test_cancelling_the_trio_side_cancels_the_asyncio_task(bridge):
    cancelled = threading.Event()

    async def forever():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def main():
        with trio.move_on_after(0.1):
            await bridge.run(forever())

    trio.run(main)
    assert cancelled.wait(5)
