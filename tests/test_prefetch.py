"""Readahead and series prefetch, counted at a fake source."""

from __future__ import annotations

import threading
from dataclasses import replace

import trio

from conftest import BS, CountingSource, slow_disk
from idcfs.data_cache import BlockCache, DiskBlocks, Pacing
from idcfs.objects import ObjectRef
from idcfs.prefetch import Policy, Reader

# The policy scaled to 1 KiB blocks, so that tests use small objects.
SMALL = Policy(whole_object_limit=4 * BS, readahead_start=BS, readahead_cap=16 * BS,
               readahead_chunk_blocks=4, sequential_slack=2 * BS, stream_min=2 * BS,
               series_ahead_bytes=50 * BS)


def run_with_reader(source, body, memory=1 << 22, policy=SMALL):
    async def main():
        cache = BlockCache(source, None, memory, block_size=BS)
        reader = Reader(cache, concurrency=8, policy=policy)
        async with trio.open_nursery() as nursery:
            reader.start(nursery)
            result = await body(reader)
            await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
        return result

    return trio.run(main)


def test_a_small_object_comes_in_one_get_however_it_is_read():
    source = CountingSource({"slice": 3 * BS + 10})

    async def body(reader):
        stream = reader.stream(source.ref("slice"))
        parts = [await reader.read(stream, off, 128) for off in range(0, 3 * BS + 10, 128)]
        return b"".join(parts)

    assert run_with_reader(source, body) == source.data["slice"]
    assert source.gets == [("slice", 0, 3 * BS + 10)]


def test_sequential_reads_of_a_large_object_read_ahead_in_parallel_chunks():
    source = CountingSource({"wsi": 64 * BS})

    async def body(reader):
        stream = reader.stream(source.ref("wsi"))
        out = []
        for off in range(0, 64 * BS, BS // 2):
            out.append(await reader.read(stream, off, BS // 2))
        return b"".join(out)

    assert run_with_reader(source, body) == source.data["wsi"]
    # Far fewer GETs than blocks, and the readahead chunks are several blocks long.
    assert len(source.gets) < 64 // 2
    assert max(length for _, _, length in source.gets) == 4 * BS
    covered = sorted((start, start + length) for _, start, length in source.gets)
    assert all(a[1] <= b[0] for a, b in zip(covered, covered[1:])), "a block was fetched twice"


def read_sequentially_with_disk(tmp_path, source, drain: bool, pacing: Pacing = Pacing()):
    """Read all of source's "wsi" in 1-block reads through a cache with a small write queue
    (8 blocks; 4 in flight): the cache, the bytes read and the disk."""
    disk = DiskBlocks(tmp_path, 1 << 30, block_size=BS)
    disk.scan()

    async def main():
        cache = BlockCache(source, disk, 1 << 22, block_size=BS, pacing=pacing)
        cache.writer.limit = 8 * BS
        reader = Reader(cache, concurrency=8, policy=replace(SMALL, in_flight_bytes=4 * BS))
        async with trio.open_nursery() as nursery:
            reader.start(nursery)
            stream = reader.stream(source.ref("wsi"))
            with trio.fail_after(10):
                data = b"".join([await reader.read(stream, off, BS)
                                 for off in range(0, 64 * BS, BS)])
            nursery.cancel_scope.cancel()
        if drain:
            await trio.to_thread.run_sync(cache.writer.drain)
        return cache, data

    return (*trio.run(main), disk)


def test_a_small_memory_cache_narrows_readahead_so_no_block_is_fetched_twice():
    """Up to one and a half windows wait ahead of a sequential reader: a memory cache that
    cannot hold them would drop blocks before the reader gets to them, and fetch them again."""
    source = CountingSource({"big": 96 * BS})
    memory = 12 * BS

    async def body(reader):
        stream = reader.stream(source.ref("big"))
        out = []
        for off in range(0, 96 * BS, BS):
            out.append(await reader.read(stream, off, BS))
            await trio.sleep(0.001)  # the reader is slower than the fetches ahead of it
        return b"".join(out)

    policy = SMALL.within_memory(memory)
    assert policy.readahead_cap == 8 * BS
    assert run_with_reader(source, body, memory, policy) == source.data["big"]
    assert sum(length for _, _, length in source.gets) == 96 * BS


def test_readahead_waits_for_a_slow_disk_so_every_block_is_cached(tmp_path, monkeypatch):
    """Readahead that outran the disk cache's writes used to leave blocks unwritten (a cold
    1 GiB read left 424 of its 1024 blocks to be fetched again)."""
    slow_disk(monkeypatch, 0.01)
    source = CountingSource({"wsi": 64 * BS})
    cache, data, disk = read_sequentially_with_disk(tmp_path, source, drain=True)
    assert data == source.data["wsi"]
    assert cache.writer.skipped == 0
    assert all(disk.locate(source.ref("wsi"), i) is not None for i in range(64))


def test_a_stalled_cache_disk_does_not_hold_up_reads(tmp_path, monkeypatch):
    """Pacing gives up after its limit, once, and then stops waiting for a while: the reads
    go on, and the blocks the disk could not take are counted as not written."""
    stalled = threading.Event()
    monkeypatch.setattr(DiskBlocks, "put_objects", lambda self, items: stalled.wait(30))
    source = CountingSource({"wsi": 64 * BS})
    try:
        cache, data, _ = read_sequentially_with_disk(tmp_path, source, drain=False,
                                                     pacing=Pacing(limit=0.2))
    finally:
        stalled.set()
    assert data == source.data["wsi"]
    assert cache.writer.skipped > 0
    assert cache.stats["disk_cache_stalls"] == 1


def test_random_reads_fetch_only_their_blocks():
    source = CountingSource({"wsi": 64 * BS})
    offsets = [40 * BS + 3, 7 * BS, 22 * BS + 100, 60 * BS, 50 * BS]

    async def body(reader):
        stream = reader.stream(source.ref("wsi"))
        return [await reader.read(stream, off, 64) for off in offsets]

    data = run_with_reader(source, body)
    assert data == [source.data["wsi"][o:o + 64] for o in offsets]
    assert sorted(start for _, start, _ in source.gets) == sorted((o // BS) * BS for o in offsets)


def _series(n: int) -> tuple[CountingSource, list[ObjectRef]]:
    source = CountingSource({f"s/{i:03}.dcm": BS + i for i in range(n)})
    return source, [source.ref(f"s/{i:03}.dcm") for i in range(n)]


def test_reading_a_series_file_by_file_fetches_the_rest_ahead():
    source, objs = _series(30)

    async def body(reader):
        for i in range(2):
            reader.opened("series", i, [o.size for o in objs], "CT", objs.__getitem__)
            await reader.read(reader.stream(objs[i]), 0, objs[i].size)
        await trio.sleep(0.3)
        before = len(source.gets)
        for i in range(2, 30):
            reader.opened("series", i, [o.size for o in objs], "CT", objs.__getitem__)
            assert await reader.read(reader.stream(objs[i]), 0, objs[i].size) == source.data[objs[i].key]
        return before

    fetched_before_reading_on = run_with_reader(source, body)
    assert fetched_before_reading_on == 30
    assert sorted(k for k, _, _ in source.gets) == sorted(o.key for o in objs)


def test_opening_one_file_of_a_series_prefetches_only_a_little():
    source, objs = _series(30)

    async def body(reader):
        reader.opened("series", 5, [o.size for o in objs], "CT", objs.__getitem__)
        await reader.read(reader.stream(objs[5]), 0, 10)

    run_with_reader(source, body)
    assert sorted(k for k, _, _ in source.gets) == [o.key for o in objs[5:8]]


def test_series_prefetch_stays_within_its_byte_budget():
    source, objs = _series(200)

    async def body(reader):
        for i in range(2):
            reader.opened("series", i, [o.size for o in objs], "CT", objs.__getitem__)

    run_with_reader(source, body)
    fetched = sum(length for _, _, length in source.gets)
    assert fetched <= SMALL.series_ahead_bytes + objs[-1].size + 3 * BS
    assert len(source.gets) < 200


def test_reads_arriving_slightly_out_of_order_still_count_as_sequential():
    source = CountingSource({"wsi": 64 * BS})
    order = [0, 1, 3, 2, 4, 6, 5, 7, 9, 8] + list(range(10, 64))

    async def body(reader):
        stream = reader.stream(source.ref("wsi"))
        return {i: await reader.read(stream, i * BS, BS) for i in order}

    got = run_with_reader(source, body)
    assert b"".join(got[i] for i in range(64)) == source.data["wsi"]
    assert len(source.gets) < 32


def _slide() -> tuple[CountingSource, list[ObjectRef]]:
    """A slide's files: a base level, two smaller levels, a thumbnail and a label (all larger
    than a block, and under the whole-object limit but the smallest)."""
    sizes = {"level0": 40 * BS, "level1": 12 * BS, "level2": 3 * BS + 5, "thumb": 2 * BS + 1,
             "label": BS + 9}
    source = CountingSource(sizes)
    return source, [source.ref(name) for name in sizes]


def test_a_viewer_opening_every_file_of_a_slide_fetches_only_the_blocks_it_reads():
    """OpenSlide opens every file of a slide and reads its first 8 KiB and its tail (here, with
    1 KiB blocks, 100 bytes): for a slide (Modality SM) that fetches those blocks, not the
    files, and nothing ahead."""
    source, objs = _slide()

    async def body(reader):
        for i, obj in enumerate(objs):
            reader.opened("slide", i, [o.size for o in objs], "SM", objs.__getitem__)
            stream = reader.stream(obj, "SM")
            assert await reader.read(stream, 0, 100) == source.data[obj.key][:100]
            tail = obj.size - 100
            assert await reader.read(stream, tail, 100) == source.data[obj.key][tail:]

    run_with_reader(source, body)
    touched = {(obj.key, b) for obj in objs
               for b in [0, *range((obj.size - 100) // BS, (obj.size - 1) // BS + 1)]}
    fetched = [(key, b) for key, start, length in source.gets
               for b in range(start // BS, (start + length - 1) // BS + 1)]
    assert sorted(fetched) == sorted(touched)  # those blocks, each once


def test_the_same_files_in_a_ct_series_are_fetched_whole_and_ahead():
    """Opening the first two of them as a CT series fetches the small ones after them whole."""
    source, objs = _slide()

    async def body(reader):
        for i, obj in enumerate(objs[:2]):
            reader.opened("series", i, [o.size for o in objs], "CT", objs.__getitem__)
            await reader.read(reader.stream(obj, "CT"), 0, 100)

    run_with_reader(source, body)
    whole = {(o.key, 0, o.size) for o in objs if o.size <= SMALL.whole_object_limit}
    assert whole and whole <= set(source.gets)


def test_reads_that_cover_what_they_pass_are_a_stream_read_ahead_in_large_gets():
    """A reader walking the fragment headers of a level without an offset table reaches FUSE
    as the kernel's readahead of nearly every page, a little out of order and with small gaps:
    read ahead as a stream, in a few large GETs, each block once."""
    source = CountingSource({"level0": 64 * BS})
    reads = [(offset + (BS // 8 if i % 3 == 1 else 0), BS // 2)
             for i, offset in enumerate(range(0, 64 * BS - BS, BS // 2))]

    async def body(reader):
        stream = reader.stream(source.ref("level0"), "SM")
        for offset, size in reads:
            assert await reader.read(stream, offset, size) == source.data["level0"][offset:offset + size]

    run_with_reader(source, body)
    assert len(source.gets) < 64 // 3
    blocks = [b for _, start, length in source.gets for b in range(start // BS, (start + length) // BS)]
    assert sorted(blocks) == sorted(set(blocks))  # each block fetched once


def test_reads_of_a_regions_tile_rows_fetch_only_their_blocks():
    """A viewer reading a region jumps forward a row of tiles at a time and reads a fraction of
    what it passes: no readahead, only the blocks of the rows."""
    source = CountingSource({"level0": 64 * BS})
    rows = [(row * 6 * BS, BS // 2) for row in range(1, 9)]  # half a block every six blocks

    async def body(reader):
        stream = reader.stream(source.ref("level0"), "SM")
        for offset, size in rows:
            assert await reader.read(stream, offset, size) == source.data["level0"][offset:offset + size]

    run_with_reader(source, body)
    assert sorted(start // BS for _, start, _ in source.gets) == [o // BS for o, _ in rows]
