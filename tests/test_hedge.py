"""Hedged requests: a stalled attempt is raced by a second one; a slow but steady one is not."""

from __future__ import annotations

import asyncio

import pytest

from idcfs.s3.hedge import Hedging, Progress


def race(hedging: Hedging, attempts: list):
    """Run a race whose n-th attempt is attempts[n](progress); the result and the attempts made."""
    made = []

    async def attempt(progress: Progress):
        made.append(progress)
        return await attempts[len(made) - 1](progress)

    return asyncio.run(hedging.race(attempt)), len(made)


async def stalls(progress: Progress):
    await asyncio.sleep(3600)


async def answers(progress: Progress):
    await asyncio.sleep(0.01)
    progress.mark()
    return "bytes"


def test_an_attempt_that_delivers_nothing_is_raced_and_the_second_answer_wins():
    hedging = Hedging(floor=0.2)
    result, made = race(hedging, [stalls, answers])
    assert (result, made, hedging.hedged) == ("bytes", 2, 1)


def test_a_slow_attempt_that_keeps_delivering_is_not_raced():
    async def steady(progress: Progress):
        for _ in range(10):  # 1 s in all, never 0.2 s without progress
            await asyncio.sleep(0.1)
            progress.mark()
        return "all of it"

    hedging = Hedging(floor=0.2)
    assert race(hedging, [steady]) == ("all of it", 1)
    assert hedging.hedged == 0


def test_the_loser_is_cancelled():
    cancelled = []

    async def stalls_then_notes(progress: Progress):
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    assert race(Hedging(floor=0.1), [stalls_then_notes, answers]) == ("bytes", 2)
    assert cancelled == [True]


def test_an_attempt_that_fails_is_not_raced_its_error_is_raised():
    async def fails(progress: Progress):
        raise ConnectionResetError("reset")

    hedging = Hedging(floor=0.2)
    with pytest.raises(ConnectionResetError):
        race(hedging, [fails])
    assert hedging.hedged == 0


def test_the_threshold_follows_the_link_but_never_drops_under_the_floor():
    hedging = Hedging(floor=1.0, factor=4.0)
    for _ in range(100):
        hedging.first_byte(0.02)
    assert hedging.stall_after == 1.0
    for _ in range(100):
        hedging.first_byte(0.9)  # a queue on a shared, slow link
    assert hedging.stall_after == pytest.approx(3.6)
