"""Reading ahead of the reader: readahead within large files, and across the files of a series.

Three access patterns decide how fast IDC feels:

* A small object (most DICOM instances are under 1 MB) is fetched whole on its first read: one
  GET, however the kernel splits the reads.
* A large object read sequentially (slide microscopy, big segmentations) grows a readahead window
  from 1 MiB, doubling up to a cap, fetched as parallel ranged GETs of a few blocks each. A read
  that is not where the last one ended resets the window, so random reads fetch only their blocks.
* The files of a series read one after another (every viewer, converter, `cp -r` and `tar`):
  once a second file of a series is opened, the following files (in listing order, which is the
  order `ls`, `cp -r` and `glob` see) are fetched whole ahead of the reader, with bounded
  concurrency, keeping a bounded number of bytes ahead. Loading a 300-slice series then costs
  about one round trip per file in parallel instead of 300 in a row.

All background fetches go through the same single-flight block cache as demand reads, so nothing
is fetched twice, and the bytes in flight are bounded per mount (a limiter on concurrent fetches
times their size), not per open file.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cachetools
import trio

from .data_cache import BlockCache
from .errors import SourceError
from .objects import ObjectRef

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Policy:
    """How far ahead of readers to fetch (bytes unless named otherwise)."""

    whole_object_limit: int = 8 << 20  # objects up to this size are fetched whole
    readahead_start: int = 1 << 20  # a sequential reader's first window
    readahead_cap: int = 64 << 20  # the window doubles up to this
    readahead_chunk_blocks: int = 8  # blocks per readahead GET (and per disk file)
    sequential_slack: int = 8 << 20  # a read this near the stream's end counts as sequential
    series_first_ahead: int = 2  # files fetched ahead when the first file of a series opens
    series_ahead_bytes: int = 48 << 20  # then this much ahead of the reader
    in_flight_bytes: int = 64 << 20  # background fetches in flight, per mount


@dataclass(slots=True)
class Stream:
    """One open file: where its last read ended, how far ahead to read, and the range whose
    read failed last (and when)."""

    obj: ObjectRef
    next_offset: int = 0
    window: int = 0
    ahead_until: int = 0
    failed: tuple[int, int, float] | None = None

    def remember_failure(self, offset: int, size: int) -> None:
        self.failed = (offset, offset + size, time.monotonic())

    def failed_recently(self, offset: int, size: int, memory: float) -> bool:
        """Whether a read of [offset, offset+size) overlaps the range that failed on this open
        file less than memory seconds ago."""
        if self.failed is None:
            return False
        start, end, when = self.failed
        return time.monotonic() - when < memory and start < offset + size and offset < end


@dataclass(slots=True)
class _SeriesState:
    opened: set[int] = field(default_factory=set)
    scheduled_until: int = 0


class _InFlight:
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


class Reader:
    """Demand reads through the block cache, with readahead and series prefetch in background."""

    def __init__(self, cache: BlockCache, concurrency: int = 32, policy: Policy = Policy()) -> None:
        self.cache = cache
        self.concurrency = concurrency
        self.policy = policy
        self._in_flight = _InFlight(max(1, policy.in_flight_bytes // cache.block_size))
        self._series: cachetools.LRUCache = cachetools.LRUCache(maxsize=256)
        self._send, self._receive = trio.open_memory_channel(math.inf)
        self._nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery) -> None:
        """Start the fetch workers in nursery; without them, the Reader only reads on demand.

        Background fetches go through one FIFO queue served by a fixed set of workers, so they
        happen in the order they were asked for (the order the reader will want them): trio
        schedules runnable tasks in a deliberately random order, and a task per fetch would
        fetch a series' files in random order.
        """
        self._nursery = nursery
        for _ in range(self.concurrency):
            nursery.start_soon(self._worker)

    def read_now(self, stream: Stream, offset: int, size: int) -> bytes | None:
        """The bytes if memory has them all now (readahead told of the read), else None."""
        data = self.cache.read_cached(stream.obj, offset, size)
        if data is not None and stream.obj.size > self.policy.whole_object_limit:
            self._read_ahead(stream, offset, size)
        return data

    async def read(self, stream: Stream, offset: int, size: int) -> bytes:
        obj = stream.obj
        if obj.size <= self.policy.whole_object_limit:
            bs = self.cache.block_size
            needed = range(offset // bs, (min(obj.size, offset + size) - 1) // bs + 1)
            if not all(self.cache.cached_in_memory(obj, i) for i in needed):
                await self.cache.blocks(obj, 0, obj.blocks(bs) - 1)
        else:
            self._read_ahead(stream, offset, size)
        return await self.cache.read(obj, offset, size)

    def _read_ahead(self, stream: Stream, offset: int, size: int) -> None:
        """Like the kernel's readahead: when the reader gets within half a window of the end of
        what is already coming, ask for the next window (in parallel chunks) and double it."""
        # The kernel's own readahead keeps several requests in flight, and they may arrive out
        # of order: a read near where the stream is counts as sequential, a far one as random.
        sequential = stream.next_offset > 0 and abs(offset - stream.next_offset) <= self.policy.sequential_slack
        stream.next_offset = max(stream.next_offset, offset + size) if sequential else offset + size
        if not sequential or self._nursery is None:
            stream.window = stream.ahead_until = 0
            return
        bs = self.cache.block_size
        reading = (stream.next_offset - 1) // bs
        if not stream.window:
            stream.window, stream.ahead_until = self.policy.readahead_start, reading + 1
        if (stream.ahead_until - reading - 1) * bs > stream.window // 2:
            return
        first = max(stream.ahead_until, reading + 1)
        last = min(stream.obj.blocks(bs), first + max(1, stream.window // bs))
        chunk = self.policy.readahead_chunk_blocks
        for start in range(first, last, chunk):
            self._prefetch(stream.obj, start, min(last, start + chunk) - 1)
        stream.ahead_until = max(stream.ahead_until, last)
        stream.window = min(self.policy.readahead_cap, stream.window * 2)

    def opened(self, series: object, position: int, sizes: Sequence[int],
               object_at: Callable[[int], ObjectRef]) -> None:
        """A file of a series was opened: fetch the files after it, if that looks worthwhile.

        The bytes ahead are summed from the listing's sizes: making an ObjectRef for each of the
        ~100 files in the window, on every open, took 15 % of the FUSE loop's time in a warm
        `cp -r`."""
        if self._nursery is None:
            return
        state = self._series.get(series)
        if state is None:
            state = self._series[series] = _SeriesState()
        state.opened.add(position)
        count = len(sizes)
        limit = position + 1 + self.policy.series_first_ahead
        if len(state.opened) > 1:
            limit, budget = position + 1, self.policy.series_ahead_bytes
            while limit < count and budget > 0:
                budget -= sizes[limit]
                limit += 1
        start = max(state.scheduled_until, position + 1)
        for i in range(start, min(limit, count)):
            obj = object_at(i)
            if obj.size <= self.policy.whole_object_limit:
                self._prefetch(obj, 0, obj.blocks(self.cache.block_size) - 1, claim_now=False)
        state.scheduled_until = max(state.scheduled_until, min(limit, count))

    def _prefetch(self, obj: ObjectRef, first: int, last: int, claim_now: bool = True) -> None:
        """Queue a background fetch. Readahead claims its blocks at once, so that a reader who
        arrives first waits for it instead of fetching a fragment alone; series prefetch claims
        when a worker gets to it, so a file queued far back never holds up its reader."""
        claimed = self.cache.claim(obj, first, last) if claim_now else None
        if claimed != []:
            self._send.send_nowait((obj, first, last, claimed))

    async def _worker(self) -> None:
        async for obj, first, last, claimed in self._receive:
            if claimed is None:
                claimed = self.cache.claim(obj, first, last)
            if not claimed:
                continue
            try:
                async with self._in_flight.take(len(claimed)):
                    # Checked while holding a share of the in-flight bound, so that everything
                    # in flight has room in the write queue when it lands.
                    await self.cache.pace_to_disk(self.policy.in_flight_bytes)
                    await self.cache.fill(obj, claimed)
                self.cache.stats["prefetched_blocks"] += len(claimed)
            except SourceError as exc:
                log.debug("prefetch failed (a reader will retry): %s", exc)
            except Exception:  # noqa: BLE001 - a worker that died would stop all prefetching
                self.cache.stats["prefetch_errors"] += 1
                log.exception("prefetch of s3://%s/%s failed unexpectedly (a reader will retry)",
                              obj.bucket, obj.key)
