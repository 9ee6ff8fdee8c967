"""The block cache with a counting fake source: exact bytes, one GET per block, crash safety."""

from __future__ import annotations

import errno
import fcntl
import os
import random
import threading
import time

import pytest
import trio

from conftest import BS, CountingSource, in_blocks, slow_disk
from idcfs.data_cache import BlockCache, DiskBlocks, clear
from idcfs.data_cache.blockfile import blocks_in_pack, pack_size, slot
from idcfs.data_cache.direct import BUFFERS
from idcfs.errors import SourceError
from idcfs.objects import ObjectRef

BLOCKS = "blocks.v4"  # the cache directory of the block format


@pytest.fixture
def source():
    return CountingSource({"big": 10 * BS + 17, "small": 300})


class DrainingCache(BlockCache):
    """The cache, with its write-behind drained after each read so tests can look at the disk."""

    async def read(self, obj, offset, size):
        data = await super().read(obj, offset, size)
        self.writer.drain()
        return data


def make(source, tmp_path, limit=1 << 30, memory=1 << 20) -> BlockCache:
    disk = DiskBlocks(tmp_path, limit, block_size=BS)
    disk.scan()
    return DrainingCache(source, disk, memory, block_size=BS)


def test_any_range_reads_back_exactly(source, tmp_path):
    cache = make(source, tmp_path)
    data = source.data["big"]
    rng = random.Random(2)

    async def main():
        for _ in range(300):
            off, size = rng.randrange(0, len(data) + 5), rng.randrange(0, 4 * BS)
            assert await cache.read(source.ref("big"), off, size) == data[off:off + size]

    trio.run(main)


def test_consecutive_missing_blocks_come_in_one_get(source, tmp_path):
    cache = make(source, tmp_path)
    trio.run(cache.read, source.ref("big"), 0, 5 * BS)
    assert source.gets == [("big", 0, 5 * BS)]


def test_concurrent_readers_of_a_block_cause_one_get(source, tmp_path):
    cache = make(source, tmp_path)

    async def main():
        async with trio.open_nursery() as nursery:
            for _ in range(30):
                nursery.start_soon(cache.read, source.ref("big"), 3 * BS + 5, 100)

    trio.run(main)
    assert source.gets == [("big", 3 * BS, BS)]


def test_blocks_survive_a_new_cache_and_serve_with_the_source_down(source, tmp_path):
    trio.run(make(source, tmp_path).read, source.ref("big"), 0, 20 * BS)
    source.down = True
    again = make(source, tmp_path)
    assert trio.run(again.read, source.ref("big"), 0, 20 * BS) == source.data["big"]
    assert again.stats["disk_hits"] == 11


def test_blocks_fetched_together_share_packs_of_at_most_eight(source, tmp_path):
    cache = make(source, tmp_path)
    trio.run(cache.read, source.ref("big"), 0, 20 * BS)
    packs = list((tmp_path / BLOCKS).glob("*/*.pack"))
    assert sorted(blocks_in_pack(str(p)) for p in packs) == [3, 8]
    assert cache.disk.used == sum(p.stat().st_size for p in packs)


def test_small_objects_queued_together_share_a_pack(tmp_path):
    source = CountingSource({f"slice{i}": 300 + i for i in range(20)})
    cache = make(source, tmp_path)
    cache.writer.linger = 1.0  # the writer waits for more while the reads go on

    async def main():
        for i in range(20):
            await BlockCache.read(cache, source.ref(f"slice{i}"), 0, 400)

    trio.run(main)
    cache.writer.drain()
    packs = list((tmp_path / BLOCKS).glob("*/*.pack"))
    assert len(packs) <= 3 and sum(blocks_in_pack(str(p)) for p in packs) == 20
    again = make(source, tmp_path)
    source.down = True
    for i in range(20):
        assert trio.run(again.read, source.ref(f"slice{i}"), 0, 400) == source.data[f"slice{i}"]
    assert len(source.gets) == 20 and again.stats["disk_hits"] == 20


@pytest.mark.parametrize("scanned", [True, False], ids=["after_the_scan", "while_it_runs"])
def test_each_block_of_a_pack_reads_back_alone(source, tmp_path, scanned, monkeypatch):
    trio.run(make(source, tmp_path).read, source.ref("big"), 0, 20 * BS)
    disk = DiskBlocks(tmp_path, 1 << 30, block_size=BS)
    if scanned:
        disk.scan()
    else:  # reads of blocks this mount did not write wait for the scan that finds them
        monkeypatch.setattr(os, "walk", lambda *args, walk=os.walk: time.sleep(0.3) or walk(*args))
        disk.scan_in_background()
    obj, data = source.ref("big"), source.data["big"]
    for i in reversed(range(obj.blocks(BS))):
        assert disk.get(obj, i, len(data[i * BS:(i + 1) * BS])) == data[i * BS:(i + 1) * BS]
    assert disk.get(obj, 11, BS) is None and disk.corrupt == 0


def test_reads_stop_waiting_for_a_long_scan_after_a_while(source, tmp_path, monkeypatch):
    """A huge cache takes long to scan: its blocks are fetched again meanwhile, not waited for."""
    trio.run(make(source, tmp_path).read, source.ref("big"), 0, BS)
    monkeypatch.setattr("idcfs.data_cache.disk.SCAN_WAIT", 0.2)
    monkeypatch.setattr(os, "walk", lambda *args, walk=os.walk: time.sleep(1.5) or walk(*args))
    disk = DiskBlocks(tmp_path, 1 << 30, block_size=BS)
    disk.scan_in_background()
    started = time.monotonic()
    assert disk.get(source.ref("big"), 0, BS) is None
    assert disk.get(source.ref("big"), 0, BS) is None
    assert time.monotonic() - started < 1.0
    disk._scanned.wait(5)
    assert disk.get(source.ref("big"), 0, BS) == source.data["big"][:BS]


def test_a_damaged_block_in_a_pack_is_fetched_again_not_served(source, tmp_path):
    trio.run(make(source, tmp_path).read, source.ref("big"), 0, 8 * BS)
    (shared,) = (tmp_path / BLOCKS).glob("*/*.pack")
    raw = bytearray(shared.read_bytes())
    raw[3 * 4096 + 7] ^= 0xFF  # in the fourth block's slot
    shared.write_bytes(bytes(raw))
    fresh = make(source, tmp_path)
    assert trio.run(fresh.read, source.ref("big"), 3 * BS, BS) == source.data["big"][3 * BS:4 * BS]
    assert fresh.disk.corrupt == 1 and len(source.gets) == 2


def test_a_corrupted_block_on_disk_is_fetched_again_not_served(source, tmp_path):
    cache = make(source, tmp_path)
    obj = source.ref("big")
    trio.run(cache.read, obj, 0, BS)
    path = cache.disk.path(obj, 0)
    raw = bytearray(path.read_bytes())
    raw[10] ^= 0xFF
    path.write_bytes(bytes(raw))
    fresh = make(source, tmp_path)
    assert trio.run(fresh.read, obj, 0, BS) == source.data["big"][:BS]
    assert fresh.disk.corrupt == 1 and len(source.gets) == 2


def test_a_truncated_block_on_disk_is_fetched_again(source, tmp_path):
    cache = make(source, tmp_path)
    obj = source.ref("big")
    trio.run(cache.read, obj, 0, BS)
    path = cache.disk.path(obj, 0)
    path.write_bytes(path.read_bytes()[:100])
    fresh = make(source, tmp_path)
    assert trio.run(fresh.read, obj, 0, BS) == source.data["big"][:BS]
    assert fresh.disk.corrupt == 1


@pytest.mark.parametrize("older", ["blocks", "blocks.v1", "blocks.v2", "blocks.v3"])
def test_a_cache_of_an_older_format_is_removed_at_start_and_its_blocks_fetched_again(
        source, tmp_path, older):
    trio.run(make(source, tmp_path).read, source.ref("big"), 0, 20 * BS)
    (tmp_path / BLOCKS).rename(tmp_path / older)
    (tmp_path / "listings").mkdir()
    again = make(source, tmp_path)
    assert trio.run(again.read, source.ref("big"), 0, 20 * BS) == source.data["big"]
    assert not (tmp_path / older).exists() and (tmp_path / "listings").is_dir()
    assert len(source.gets) == 2 and again.stats["disk_hits"] == 0


def test_writing_blocks_makes_no_directories(source, tmp_path, monkeypatch):
    cache = make(source, tmp_path)
    made = []
    monkeypatch.setattr(os, "mkdir", lambda *args, **kwargs: made.append(args))
    trio.run(cache.read, source.ref("big"), 0, 20 * BS)
    trio.run(cache.read, source.ref("small"), 0, 300)
    assert made == [] and cache.disk.count == 12


def test_leftover_temporary_files_of_a_killed_daemon_are_removed(source, tmp_path):
    cache = make(source, tmp_path)
    trio.run(cache.read, source.ref("big"), 0, BS)
    leftover = cache.disk.path(source.ref("big"), 0).parent / ".tmp-abc"
    leftover.write_bytes(b"partial")
    an_hour_ago = time.time() - 3600
    os.utime(leftover, (an_hour_ago, an_hour_ago))
    make(source, tmp_path)
    assert not leftover.exists()


def test_a_temporary_file_being_written_now_is_left_alone_by_the_scan(source, tmp_path):
    cache = make(source, tmp_path)
    trio.run(cache.read, source.ref("big"), 0, BS)
    in_progress = cache.disk.path(source.ref("big"), 0).parent / ".tmp-now"
    in_progress.write_bytes(b"being written")
    make(source, tmp_path)
    assert in_progress.exists()


def test_the_disk_cache_never_exceeds_its_bound_and_drops_the_oldest(source, tmp_path):
    limit = 4 * slot(BS)
    cache = make(source, tmp_path, limit=limit, memory=0)
    obj = source.ref("big")
    for i in range(8):
        trio.run(cache.read, obj, i * BS, 1)
        on_disk = sum(p.stat().st_size for p in (tmp_path / BLOCKS).rglob("*") if p.is_file())
        assert on_disk <= limit
    assert cache.disk.path(obj, 0) is None and cache.disk.path(obj, 7).exists()


def test_packs_of_runs_never_exceed_the_bound_and_the_oldest_go_first(tmp_path):
    source = CountingSource({f"wsi{i}": 8 * BS for i in range(5)})
    limit = 2 * pack_size([BS] * 8)  # two packs of eight blocks
    cache = make(source, tmp_path, limit=limit, memory=0)
    for i in range(5):
        trio.run(cache.read, source.ref(f"wsi{i}"), 0, 8 * BS)
        files = [p for p in (tmp_path / BLOCKS).glob("*/*") if p.is_file()]
        assert sum(p.stat().st_size for p in files) <= limit
    assert cache.disk.locate(source.ref("wsi4"), 0) and cache.disk.locate(source.ref("wsi3"), 7)
    assert not cache.disk.locate(source.ref("wsi2"), 0)


def test_memory_holds_at_most_its_bound(source, tmp_path):
    cache = BlockCache(source, None, 3 * BS, block_size=BS)
    trio.run(cache.read, source.ref("big"), 0, 10 * BS)
    assert cache._memory.currsize <= 3 * BS


def test_an_unwritable_disk_still_serves_reads(source, tmp_path):
    (tmp_path / BLOCKS).write_text("not a directory")
    cache = make(source, tmp_path)
    assert trio.run(cache.read, source.ref("big"), 0, 3 * BS) == source.data["big"][:3 * BS]
    assert cache.disk.write_errors > 0


def test_blocks_are_keyed_by_object_so_two_caches_share_them(source, tmp_path):
    trio.run(make(source, tmp_path).read, source.ref("small"), 0, 300)
    second = make(source, tmp_path)
    trio.run(second.read, source.ref("small"), 0, 300)
    assert len(source.gets) == 1


def test_clear_empties_blocks(source, tmp_path):
    trio.run(make(source, tmp_path).read, source.ref("small"), 0, 300)
    clear(tmp_path)
    assert not (tmp_path / BLOCKS).exists()


def test_blocks_the_disk_cannot_keep_up_with_are_skipped_not_queued_without_bound(source, tmp_path):
    disk = DiskBlocks(tmp_path, 1 << 30, block_size=BS)
    disk.scan()
    cache = BlockCache(source, disk, 1 << 20, block_size=BS)
    cache.writer.limit = BS // 2
    assert trio.run(cache.read, source.ref("big"), 0, 3 * BS) == source.data["big"][:3 * BS]
    cache.writer.drain()
    assert cache.writer.skipped == 3
    assert not any(p.is_file() for p in (tmp_path / BLOCKS).rglob("*"))


def test_concurrent_writers_keep_the_accounting_equal_to_the_disk(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    limit = 20 * slot(BS)
    disk = DiskBlocks(tmp_path, limit)
    objs = [ObjectRef("idc-open-data", f"k{i}", 3 * BS) for i in range(40)]

    def write(obj):
        for i in range(3):
            disk.put(obj, i, os.urandom(BS - i))

    with ThreadPoolExecutor(4) as pool:
        scan = pool.submit(disk.scan)
        list(pool.map(write, objs))
        scan.result()
    on_disk = sum(p.stat().st_size for p in (tmp_path / BLOCKS).rglob("*") if p.is_file())
    assert on_disk <= limit
    assert disk.used == on_disk


def test_a_whole_object_whose_bytes_do_not_match_its_etag_is_refused_and_not_cached(tmp_path):
    import hashlib

    source = CountingSource({"slice": 300})
    good = source.data["slice"]
    obj = ObjectRef("idc-open-data", "slice", 300, hashlib.md5(good).hexdigest())
    source.data["slice"] = good[:10] + bytes([good[10] ^ 1]) + good[11:]
    cache = make(source, tmp_path)
    with pytest.raises(SourceError, match="do not match its ETag"):
        trio.run(cache.read, obj, 0, 300)
    assert cache.disk.path(obj, 0) is None
    source.data["slice"] = good
    assert trio.run(cache.read, obj, 0, 300) == good


def _refusing_o_direct(call):
    """call (os.preadv, os.write) as on a filesystem that opens files with O_DIRECT but refuses
    their I/O with EINVAL."""
    def refusing(fd, *args):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return call(fd, *args)
    return refusing


def test_disk_reads_from_many_threads_share_a_few_buffers_and_read_back_exactly(tmp_path):
    """Each disk read or write holds a pack-sized buffer; however many threads read, only
    BUFFERS are in use at once, and every buffer ever made stays resident."""
    disk = DiskBlocks(tmp_path, 1 << 30, block_size=BS)
    disk.scan()
    blocks = {ObjectRef("idc-open-data", f"k{i}", BS): os.urandom(BS) for i in range(12)}
    for obj, data in blocks.items():
        disk.put(obj, 0, data)
    reading, most, lock, buffers = 0, 0, threading.Lock(), []
    pread = disk.io.pread

    def counting(fd, view, offset):
        nonlocal reading, most
        with lock:
            reading += 1
            most = max(most, reading)
            buffers.append(view.obj)
        time.sleep(0.005)
        try:
            return pread(fd, view, offset)
        finally:
            with lock:
                reading -= 1

    disk.io.pread = counting
    found = {}

    def read(obj):
        found[obj] = [disk.get(obj, 0, BS) for _ in range(3)]

    threads = [threading.Thread(target=read, args=(obj,)) for obj in blocks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert found == {obj: [data] * 3 for obj, data in blocks.items()}
    assert most == BUFFERS
    assert len({id(buf) for buf in buffers}) == BUFFERS


def test_a_filesystem_that_opens_with_o_direct_but_refuses_its_reads_falls_back(tmp_path,
                                                                              monkeypatch):
    disk = DiskBlocks(tmp_path, 1 << 30)
    obj = ObjectRef("idc-open-data", "k", 70000)
    data = os.urandom(70000)
    disk.put(obj, 0, data)
    monkeypatch.setattr(os, "preadv", _refusing_o_direct(os.preadv))
    assert disk.get(obj, 0, 70000) == data
    assert disk.get(obj, 0, 70000) == data  # and from then on without O_DIRECT
    assert disk.corrupt == 0 and not disk.io.direct


def test_a_filesystem_that_opens_with_o_direct_but_refuses_its_writes_falls_back(tmp_path,
                                                                               monkeypatch):
    monkeypatch.setattr(os, "write", _refusing_o_direct(os.write))
    disk = DiskBlocks(tmp_path, 1 << 30)
    blocks = {ObjectRef("idc-open-data", f"k{i}", 70000 + i): os.urandom(70000 + i)
              for i in range(2)}
    for obj, data in blocks.items():  # the first refused, the second written buffered at once
        disk.put(obj, 0, data)
    assert all(disk.get(obj, 0, obj.size) == data for obj, data in blocks.items())
    assert disk.write_errors == 0 and not disk.io.direct
    assert not list((tmp_path / BLOCKS).glob("*/.tmp-*"))


def test_a_pack_of_the_wrong_size_is_removed_by_the_scan_not_read(tmp_path):
    disk = DiskBlocks(tmp_path, 1 << 30)
    obj = ObjectRef("idc-open-data", "k", 5000)
    disk.put(obj, 0, os.urandom(5000))
    pack = disk.path(obj, 0)
    with open(pack, "ab") as f:
        f.write(b"x")
    again = DiskBlocks(tmp_path, 1 << 30)
    again.scan()
    assert again.get(obj, 0, 5000) is None
    assert again.corrupt == 1 and not pack.exists()


def test_a_pack_whose_directory_is_damaged_is_removed_by_the_scan(tmp_path):
    disk = DiskBlocks(tmp_path, 1 << 30)
    objs = [ObjectRef("idc-open-data", f"k{i}", 5000) for i in range(3)]
    disk.put_objects([(obj, {0: os.urandom(5000)}) for obj in objs])
    pack = disk.path(objs[0], 0)
    raw = bytearray(pack.read_bytes())
    raw[-4096 + 30] ^= 0x01  # in the directory's first entry
    pack.write_bytes(bytes(raw))
    again = DiskBlocks(tmp_path, 1 << 30)
    again.scan()
    assert again.count == 0 and again.corrupt == 1 and not pack.exists()


def test_a_block_indexed_at_another_blocks_slot_is_refused(tmp_path):
    """The trailer names its block: a directory that points at the wrong slot serves nothing."""
    disk = DiskBlocks(tmp_path, 1 << 30)
    a, b = (ObjectRef("idc-open-data", k, 5000) for k in "ab")
    disk.put_objects([(a, {0: os.urandom(5000)}), (b, {0: os.urandom(5000)})])
    where_a, where_b = disk.locate(a, 0), disk.locate(b, 0)
    assert where_a[0] == where_b[0]
    disk._index.where[where_b[1].digest][0] = where_a  # b's block looked for at a's slot
    assert disk.get(b, 0, 5000) is None and disk.corrupt == 1


def test_pacing_waits_until_the_disk_writes_catch_up(source, tmp_path, monkeypatch):
    slow_disk(monkeypatch, 0.05)
    disk = DiskBlocks(tmp_path, 1 << 30, block_size=BS)
    cache = BlockCache(source, disk, 1 << 20, block_size=BS)
    cache.writer.limit = 6 * BS

    async def main():
        await cache.read(source.ref("big"), 0, 4 * BS)  # four blocks now wait for the disk
        assert not cache.writer.has_room(3 * BS)
        await cache.pace_to_disk(3 * BS)
        assert cache.writer.has_room(3 * BS)

    trio.run(main)


def test_blocks_of_the_wrong_sizes_from_a_source_are_refused(source, tmp_path):
    async def one_block_short(obj, start, length, block_size):
        return (await source(obj, start, length, block_size))[:-1]

    cache = make(one_block_short, tmp_path)
    with pytest.raises(SourceError, match="wrong sizes"):
        trio.run(cache.read, source.ref("big"), 0, 3 * BS)
    assert cache.disk.path(source.ref("big"), 0) is None


def _open_without_o_direct(path, flags, *args, **kwargs):
    """os.open as on a filesystem without O_DIRECT: the flag is refused with EINVAL, after the
    kernel has made the file if asked to."""
    if flags & os.O_DIRECT:
        if flags & os.O_CREAT:
            os.close(_real_open(path, flags & ~os.O_DIRECT, *args, **kwargs))
        raise OSError(errno.EINVAL, "Invalid argument")
    return _real_open(path, flags, *args, **kwargs)


_real_open = os.open


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "no_o_direct"])
def test_blocks_of_any_size_are_written_and_read_exactly_with_or_without_o_direct(
        tmp_path, monkeypatch, direct):
    if not direct:
        monkeypatch.setattr(os, "open", _open_without_o_direct)
    disk = DiskBlocks(tmp_path, 1 << 30)
    rng = random.Random(9)
    for i, size in enumerate([1, 4079, 4080, 4096, 4097, 65536 + 3, 1 << 20]):
        data = rng.randbytes(size)
        obj = ObjectRef("idc-open-data", f"k{i}", size)
        disk.put(obj, 0, data)
        # the block and its trailer in whole pages, and the directory's page
        assert disk.path(obj, 0).stat().st_size == slot(size) + 4096
        assert disk.get(obj, 0, size) == data
    assert disk.write_errors == 0
    assert disk.io.direct is direct  # (the test directory is on a filesystem with O_DIRECT)


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "no_o_direct"])
def test_runs_of_blocks_ending_in_any_size_read_back_exactly_with_or_without_o_direct(
        tmp_path, monkeypatch, direct):
    if not direct:
        monkeypatch.setattr(os, "open", _open_without_o_direct)
    disk = DiskBlocks(tmp_path, 1 << 30, block_size=BS)
    rng = random.Random(10)
    for i, last in enumerate([1, BS - 16, BS - 15, BS]):
        data = rng.randbytes(4 * BS + last)
        obj = ObjectRef("idc-open-data", f"k{i}", len(data))
        disk.put_blocks(obj, dict(enumerate(in_blocks(data, BS))))
        got = disk.get_many(obj, {b: len(c) for b, c in enumerate(in_blocks(data, BS))})
        assert b"".join(got[b] for b in sorted(got)) == data and len(got) == 5
        assert disk.get(obj, 4, last) == data[4 * BS:]
    assert disk.write_errors == 0 and disk.io.direct is direct


def test_lookups_do_not_wait_for_an_eviction_on_a_slow_disk(tmp_path, monkeypatch):
    """known_absent, which the FUSE loop calls on every cold read, must not wait behind
    unlinks: eviction holds no lock across them."""
    disk = DiskBlocks(tmp_path, 1 << 30, block_size=BS)
    disk.scan()
    objs = [ObjectRef("idc-open-data", f"k{i}", BS) for i in range(40)]
    for obj in objs:
        disk.put(obj, 0, os.urandom(BS))
    real_unlink = os.unlink

    def slow_unlink(path, *args, **kwargs):
        time.sleep(0.05)
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", slow_unlink)
    disk.limit = 2 * slot(BS)
    evicting = threading.Thread(target=disk.put, args=(objs[0], 1, os.urandom(BS)))
    evicting.start()  # makes room: ~39 unlinks of 50 ms
    time.sleep(0.1)
    slowest = 0.0
    while evicting.is_alive():
        started = time.perf_counter()
        disk.known_absent(objs[-1], 0)
        assert disk.count >= 0 and disk.used >= 0
        slowest = max(slowest, time.perf_counter() - started)
        time.sleep(0.01)
    evicting.join()
    assert slowest < 0.02
    on_disk = sum(p.stat().st_size for p in (tmp_path / BLOCKS).rglob("*") if p.is_file())
    assert on_disk <= disk.limit and disk.used == on_disk
