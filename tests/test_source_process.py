"""The object source in its own process: the same answers as in the daemon, bytes through shared
memory, and a process that may be cancelled, killed and restarted without harm to the mount."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time

import pytest
import trio

from conftest import in_blocks, set_fault
from idcfs.errors import SourceError
from idcfs.s3.endpoint import Health
from idcfs import source_process
from idcfs.source_process import Places, SourceProcess

BLOCK = 64 << 10


def with_source(endpoint, body, *, memory_size: int = 96 * BLOCK, restart_after: float = 5.0,
                health: Health | None = None):
    """body(source) with a started SourceProcess at endpoint; its process is gone afterwards."""
    async def go():
        async with trio.open_nursery() as nursery:
            source = SourceProcess(
                {"endpoint_url": endpoint, "max_connections": 8,
                 "ca_bundle": str(getattr(endpoint, "ca_bundle", None) or "") or None,
                 "log_level": "INFO"},
                health or Health(), BLOCK, memory_size, restart_after)
            await source.start(nursery)
            try:
                return await body(source)
            finally:
                processes.append(source._child.process)
                nursery.cancel_scope.cancel()

    processes: list[subprocess.Popen] = []
    try:
        return trio.run(go)
    finally:
        assert all(p.poll() is not None for p in processes), "the S3 process outlived its mount"


async def signal_after(seconds: float, process: subprocess.Popen, signum: int) -> None:
    await trio.sleep(seconds)
    os.kill(process.pid, signum)


async def give_up_reading_from_a_stopped_process(source: SourceProcess, held: tuple,
                                                 seconds: float) -> subprocess.Popen:
    """Read the held object, stop the S3 process (SIGSTOP) 0.3 s into the read, and give the
    read up after seconds; the process, stopped."""
    _, bucket, key, data = held
    process = source._child.process
    async with trio.open_nursery() as nursery:
        nursery.start_soon(signal_after, 0.3, process, signal.SIGSTOP)
        with trio.move_on_after(seconds):
            await source.get_blocks(bucket, key, 0, len(data), BLOCK)
    return process


def largest_object(sample) -> tuple[str, str, bytes]:
    (bucket, key), data = max(sample.objects.items(), key=lambda item: len(item[1]))
    return bucket, key, data


@pytest.fixture
def held(sample, proxy):
    """The largest object, whose GETs through the fault proxy get their headers and then
    nothing (until the fault is cleared), and the proxy."""
    bucket, key, data = largest_object(sample)
    set_fault(proxy, mode="silent", count=-1, match=key.split("/")[1])
    yield proxy, bucket, key, data
    set_fault(proxy)


def test_reads_come_back_exact_in_blocks_with_the_md5_of_a_whole_object(sample, fast_s3):
    bucket, key, data = largest_object(sample)
    assert len(data) > 3 * BLOCK

    async def reads(source):
        whole = await source.get_blocks(bucket, key, 0, len(data), BLOCK)
        part = await source.get_blocks(bucket, key, 1000, 2 * BLOCK + 5, BLOCK)
        return whole, part

    whole, part = with_source(fast_s3, reads)
    assert whole == in_blocks(data, BLOCK)
    assert whole.md5 == hashlib.md5(data).hexdigest()
    assert part == in_blocks(data[1000:1000 + 2 * BLOCK + 5], BLOCK)
    assert part.md5 is None  # S3 gives no checksum of a range: nothing to check it against


def test_a_listing_is_the_series_objects_with_sizes_and_etags(sample, fast_s3):
    row = max(sample.rows, key=lambda r: len(sample.series_objects(r)))
    prefix = f"{row['crdc_series_uuid']}/"
    listed = with_source(fast_s3, lambda source: source.list_series(
        row["aws_bucket"], prefix, int(row["instanceCount"])))
    assert {name: (size, etag) for name, size, etag in listed} == {
        name: (len(data), hashlib.md5(data).hexdigest())
        for name, data in sample.series_objects(row).items()}


def test_a_failure_in_the_s3_process_is_a_source_error_naming_the_object(sample, fast_s3):
    async def missing(source):
        with pytest.raises(SourceError, match=r"s3://idc-open-data/nope/x\.dcm .* HTTP 404"):
            await source.get_blocks("idc-open-data", "nope/x.dcm", 0, 10, BLOCK)
        return source.places.in_use

    assert with_source(fast_s3, missing) == 0  # its places were given back


def test_a_range_longer_than_half_the_shared_memory_is_read_in_parts(sample, fast_s3):
    bucket, key, data = largest_object(sample)
    memory = 16 * BLOCK
    assert len(data) > memory // 2

    async def read(source):
        return await source.get_blocks(bucket, key, 0, len(data), BLOCK)

    blocks = with_source(fast_s3, read, memory_size=memory)
    assert blocks == in_blocks(data, BLOCK)
    assert blocks.md5 is None  # the caller hashes it (data_cache/fetch.py)


def test_the_endpoints_health_as_the_s3_process_saw_it_reaches_the_mount(sample, fast_s3):
    health = Health()
    bucket, key, data = largest_object(sample)
    with_source(fast_s3, lambda source: source.get_blocks(bucket, key, 0, 10, BLOCK),
                health=health)
    assert health.state == "ok"


def test_a_cancelled_read_is_stopped_in_the_s3_process_and_gives_its_places_back(held):
    """The places stay set aside until the S3 process says it stopped (it is held still with
    SIGSTOP to see that), so that nothing it writes lands in a place given to another read."""
    proxy, bucket, key, data = held

    async def cancel(source):
        process = await give_up_reading_from_a_stopped_process(source, held, 0.5)
        await trio.sleep(0.3)
        in_use = source.places.in_use
        os.kill(process.pid, signal.SIGCONT)
        with trio.fail_after(4):  # within the time a cancel has to be answered
            while source.places.in_use:
                await trio.sleep(0.01)
        return in_use, process.poll()

    in_use, ended = with_source(proxy, cancel)
    assert in_use == -(-len(data) // BLOCK) and ended is None


def test_when_the_s3_process_dies_reads_in_flight_fail_and_a_later_read_starts_a_new_one(held):
    proxy, bucket, key, data = held

    async def kill_then_read(source):
        first = source._child.process
        async with trio.open_nursery() as nursery:
            nursery.start_soon(signal_after, 0.3, first, signal.SIGKILL)
            with pytest.raises(SourceError, match="the S3 process ended .killed by signal 9"):
                await source.get_blocks(bucket, key, 0, len(data), BLOCK)
        set_fault(proxy)
        with pytest.raises(SourceError, match="the S3 process ended"):  # not at once again
            await source.get_blocks(bucket, key, 0, len(data), BLOCK)
        await trio.sleep(source.restart_after)
        blocks = await source.get_blocks(bucket, key, 0, len(data), BLOCK)
        processes.append(first)
        return blocks, source._child.process.pid != first.pid, source.places.in_use

    processes: list[subprocess.Popen] = []
    blocks, new, in_use = with_source(proxy, kill_then_read, restart_after=2.0)
    assert blocks == in_blocks(data, BLOCK) and new
    assert in_use == 0  # the dead process's places came back
    assert processes[0].poll() == -signal.SIGKILL


def test_an_s3_process_that_cannot_start_says_why(tmp_path):
    async def start():
        async with trio.open_nursery() as nursery:
            source = SourceProcess({"endpoint_url": "https://127.0.0.1:9", "max_connections": 8,
                                    "ca_bundle": str(tmp_path / "no-such.pem"),
                                    "log_level": "INFO"}, Health(), BLOCK)
            with pytest.raises(SourceError, match="the S3 client could not be made"):
                await source.start(nursery)
            with pytest.raises(SourceError, match="the S3 client could not be made"):
                await source.list_series("b", "p/")  # not started again at once
            nursery.cancel_scope.cancel()

    trio.run(start)


def test_places_are_given_first_come_first_served_and_a_waiter_that_gives_up_takes_none():
    async def go():
        places = Places(4, 10)
        first = await places.take(3)
        order = []

        async def wants(n, name):
            taken = await places.take(n)
            order.append((name, len(taken)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wants, 3, "three")
            await trio.sleep(0.01)
            nursery.start_soon(wants, 1, "one")  # there is one free, but "three" came first
            await trio.sleep(0.01)
            assert order == []
            places.give_back(first)
        assert sorted(order) == [("one", 1), ("three", 3)]
        with trio.move_on_after(0.01):
            await places.take(4)  # gives up waiting
        assert places.in_use == places.count and not places._waiting

    trio.run(go)


def test_reads_in_flight_at_once_share_the_places_and_all_come_back_exact(sample, fast_s3):
    objects = sorted(sample.objects.items(), key=lambda item: -len(item[1]))[:40]

    async def many(source):
        found = {}

        async def read(bucket, key, size):
            found[key] = b"".join(await source.get_blocks(bucket, key, 0, size, BLOCK))

        async with trio.open_nursery() as nursery:
            for (bucket, key), data in objects:
                nursery.start_soon(read, bucket, key, len(data))
        return found

    started = time.monotonic()
    found = with_source(fast_s3, many, memory_size=16 * BLOCK)
    assert found == {key: data for (_, key), data in objects}
    assert time.monotonic() - started < 60


def test_the_shared_memory_goes_back_to_the_system_once_idle_and_reads_go_on(
        sample, fast_s3, monkeypatch):
    bucket, key, data = largest_object(sample)
    monkeypatch.setattr(source_process, "IDLE_SECONDS", 0.2)

    async def read_idle_read(source):
        assert not source.return_idle_memory()  # nothing written there yet
        def held() -> int:
            return os.fstat(source._memory_fd).st_blocks

        await source.get_blocks(bucket, key, 0, len(data), BLOCK)
        busy = held(), source.return_idle_memory()  # just used
        await trio.sleep(0.3)
        idle = source.return_idle_memory(), held()
        assert not source.return_idle_memory()  # once per idle spell
        again = await source.get_blocks(bucket, key, 0, len(data), BLOCK)
        return busy, idle, again

    (busy_blocks, returned_busy), (returned, idle_blocks), again = with_source(
        fast_s3, read_idle_read)
    assert busy_blocks * 512 >= len(data) and not returned_busy
    assert returned and idle_blocks == 0
    assert again == in_blocks(data, BLOCK)


def test_an_s3_process_that_does_not_stop_a_cancelled_read_is_ended_and_replaced(
        held, monkeypatch):
    """A stuck S3 process (here: stopped with SIGSTOP) would keep the places of the reads it
    no longer answers, and the reads after them would wait for places forever."""
    proxy, bucket, key, data = held
    monkeypatch.setattr(source_process, "STOP_SECONDS", 0.5)

    async def stuck(source):
        first = await give_up_reading_from_a_stopped_process(source, held, 0.6)
        with trio.fail_after(10):
            while source.places.in_use:
                await trio.sleep(0.05)
        set_fault(proxy)
        await trio.sleep(source.restart_after)
        blocks = await source.get_blocks(bucket, key, 0, len(data), BLOCK)
        return first, blocks

    first, blocks = with_source(proxy, stuck, restart_after=0.2)
    assert first.poll() == -signal.SIGKILL
    assert blocks == in_blocks(data, BLOCK)


def test_an_s3_process_that_does_not_take_a_cancel_is_ended_and_the_reader_let_go(
        held, monkeypatch):
    """The cancel is sent shielded from the reader's own cancellation: if it cannot be sent
    (here another send holds the socket), the reader still gets its answer in seconds."""
    proxy, bucket, key, data = held
    monkeypatch.setattr(source_process, "STOP_SECONDS", 0.5)

    async def blocked(source):
        first = source._child.process

        async def read():
            with trio.move_on_after(0.3):
                await source.get_blocks(bucket, key, 0, len(data), BLOCK)

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await trio.sleep(0.1)  # the request is sent, its answer held by the proxy
                await source._child.sending.acquire()  # a send that never ends
        source._child.sending.release()
        with trio.fail_after(5):
            while first.poll() is None:
                await trio.sleep(0.05)
        return first.poll()

    assert with_source(proxy, blocked) == -signal.SIGKILL
