"""Exact byte ranges of immutable objects, from memory, disk, or one fetch per block.

A bounded LRU of hot blocks in memory over the disk cache, and single-flight fetching:
concurrent readers of a block, from any number of processes, cause one request, and missing
consecutive blocks come in one request. IDC objects never change (a revised series gets a new
crdc UUID), so blocks are keyed by bucket, object key and block number, never by path or version:
nothing goes stale, and two mounts of any releases share them.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass

import cachetools
import trio

from ..objects import BLOCK_SIZE, ObjectRef, runs
from ..singleflight import SingleFlight
from .disk import DiskBlocks
from .fetch import ContentMismatch, Fetch, fetch_run
from .writeback import WriteBehind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pacing:
    """How long background fetches wait for the disk cache to take their blocks: at most
    limit seconds; after a stall that long, not at all for pause seconds."""

    limit: float = 2.0
    pause: float = 30.0


class BlockCache:
    def __init__(self, fetch: Fetch, disk: DiskBlocks | None, memory_bytes: int,
                 block_size: int = BLOCK_SIZE, pacing: Pacing = Pacing()) -> None:
        self._fetch = fetch
        if disk is not None and disk.block_size != block_size:
            raise ValueError(f"block size {block_size} differs from the disk's {disk.block_size}")
        self.disk = disk
        self.writer = WriteBehind(disk) if disk is not None else None
        self.block_size = block_size
        self.pacing = pacing
        self._memory: cachetools.LRUCache = cachetools.LRUCache(maxsize=memory_bytes, getsizeof=len)
        self._flight: SingleFlight[tuple[str, str, int]] = SingleFlight()
        self._pacing_lock = trio.Lock()
        self._pacing_paused_until = float("-inf")
        self.stats: collections.Counter = collections.Counter()

    def cached_in_memory(self, obj: ObjectRef, index: int) -> bool:
        return (obj.bucket, obj.key, index) in self._memory

    def read_cached(self, obj: ObjectRef, offset: int, size: int) -> bytes | None:
        """The bytes [offset, offset+size) clipped to the object's end if every block they need
        is in memory now, else None: the way a read hit is answered without a single await
        (a cancel scope and a task switch per FUSE read were a tenth of the daemon's CPU)."""
        end = min(obj.size, offset + size)
        if offset >= end:
            return b""
        first, last = offset // self.block_size, (end - 1) // self.block_size
        blocks = [self._memory.get((obj.bucket, obj.key, i)) for i in range(first, last + 1)]
        if None in blocks:
            return None
        self.stats["memory_hits"] += len(blocks)
        data = b"".join(blocks) if len(blocks) > 1 else blocks[0]
        start = offset - first * self.block_size
        return data[start:start + end - offset]

    async def read(self, obj: ObjectRef, offset: int, size: int) -> bytes:
        """Exactly the bytes [offset, offset+size) clipped to the object's end."""
        end = min(obj.size, offset + size)
        if offset >= end:
            return b""
        first, last = offset // self.block_size, (end - 1) // self.block_size
        blocks = await self.blocks(obj, first, last)
        data = b"".join(blocks) if len(blocks) > 1 else blocks[0]
        start = offset - first * self.block_size
        return data[start:start + end - offset]

    async def blocks(self, obj: ObjectRef, first: int, last: int) -> list[bytes]:
        """Blocks first..last of obj; missing consecutive blocks are fetched in one request."""
        found: dict[int, bytes] = {}
        while len(found) < last - first + 1:
            waiting = None
            for i in range(first, last + 1):
                key = (obj.bucket, obj.key, i)
                if i in found:
                    continue
                data = self._memory.get(key)
                if data is not None:
                    found[i] = data
                    self.stats["memory_hits"] += 1
                elif waiting is None:
                    waiting = self._flight.waiting(key)
            claimed = self.claim(obj, first, last)
            if claimed:
                found.update(await self.fill(obj, claimed))
            elif waiting is not None:
                await waiting.wait()
        return [found[i] for i in range(first, last + 1)]

    def claim(self, obj: ObjectRef, first: int, last: int) -> list[int]:
        """Mark the blocks of first..last that nobody has or is getting as being got, now.

        Claiming synchronously, before any await, is what makes a scheduled prefetch visible to
        a reader that arrives before the prefetch task runs: the reader waits for it instead of
        fetching the same block on its own. Whoever claims must call fill.
        """
        return [i for i in range(first, last + 1)
                if (obj.bucket, obj.key, i) not in self._memory
                and self._flight.claim((obj.bucket, obj.key, i))]

    async def fill(self, obj: ObjectRef, claimed: list[int]) -> dict[int, bytes]:
        """Get claimed blocks from disk or the source, and release them to waiting readers."""
        try:
            loaded: dict[int, bytes] = {}
            on_disk = [i for i in claimed
                       if self.disk is not None and not self.disk.known_absent(obj, i)]
            if on_disk:
                loaded = await trio.to_thread.run_sync(self._disk_get, obj, on_disk)
                self.stats["disk_hits"] += len(loaded)
            for run in runs([i for i in claimed if i not in loaded]):
                loaded.update(await self._fetch_run(obj, run[0], run[-1]))
            for i, data in loaded.items():
                if len(data) <= self._memory.maxsize:
                    self._memory[(obj.bucket, obj.key, i)] = data
            return loaded
        finally:
            for i in claimed:
                self._flight.release((obj.bucket, obj.key, i))

    async def _fetch_run(self, obj: ObjectRef, first: int, last: int) -> dict[int, bytes]:
        try:
            out = await fetch_run(self._fetch, obj, first, last, self.block_size)
        except ContentMismatch:
            self.stats["content_mismatches"] += 1
            raise
        self.stats["fetches"] += 1
        self.stats["bytes_fetched"] += sum(map(len, out.values()))
        if self.writer is not None:
            self.writer.submit(obj, out)
        return out

    def _disk_get(self, obj: ObjectRef, indexes: list[int]) -> dict[int, bytes]:
        return self.disk.get_many(obj, {i: obj.block_length(i, self.block_size) for i in indexes})

    async def pace_to_disk(self, in_flight: int) -> None:
        """Wait until the disk cache's write queue has room for in_flight more bytes (all that
        background fetches may have in flight; at most half the queue's bound is asked for).

        Without this, readahead outran the writes whenever the cores were busy: a cold read of
        a 1 GiB object left 424 of its 1024 blocks unwritten, fetched again on the next read.
        Only background fetches wait, and for pacing.limit at most: a disk that stalls (a hung
        network filesystem) must not hold up the readers waiting for those fetches. After a
        stall, nothing waits for pacing.pause, and blocks the disk cannot take go unwritten.
        One task waits in a thread; the others wait for it."""
        if self.writer is None or trio.current_time() < self._pacing_paused_until:
            return
        incoming = min(in_flight, self.writer.limit // 2)
        if self.writer.has_room(incoming):
            return
        with trio.move_on_after(self.pacing.limit) as waited:
            async with self._pacing_lock:
                while not self.writer.has_room(incoming):
                    await trio.to_thread.run_sync(self.writer.wait_for_room, incoming, 0.5,
                                                  abandon_on_cancel=True)
        if waited.cancelled_caught:
            self.stats["disk_cache_stalls"] += 1
            self._pacing_paused_until = trio.current_time() + self.pacing.pause
            log.warning("the disk cache has not taken any writes for %.0f s; reading on without "
                        "waiting for it for %.0f s", self.pacing.limit, self.pacing.pause)
