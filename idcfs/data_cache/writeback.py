"""Writing fetched blocks to disk off the read path, in a bounded queue, a pack at a time.

A reader never waits for the disk: fetched blocks are served from memory at once and written by
background threads. Background fetches wait while what they may have in flight would not fit
in the bound (BlockCache.pace_to_disk). If a reader's own fetches still push them past the bound,
blocks are not written (counted as skipped): they are immutable, so the cost is a fetch later,
not a wrong byte, and memory stays bounded.

A writer takes what is queued, and what comes within LINGER after it, up to what a pack holds
(DiskBlocks.fits), and writes it as one pack: a loader reading thousands of small files makes a
file system create and rename per pack, not per file. One writer gathers at a time, while the
other writes.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

from ..objects import ObjectRef
from .blockfile import PAGE, slot
from .disk import DiskBlocks

log = logging.getLogger(__name__)

QUEUE_BYTES = 128 << 20
WRITERS = 2
# How long a writer waits for more blocks to fill its pack (none while someone drains).
LINGER = 0.02


class WriteBehind:
    def __init__(self, disk: DiskBlocks, limit: int = QUEUE_BYTES, linger: float = LINGER) -> None:
        self.disk = disk
        self.limit = limit
        self.linger = linger
        self._queued = 0  # bytes queued or being written
        self._jobs: collections.deque[tuple[ObjectRef, dict[int, bytes], int]] = \
            collections.deque()
        self._lock = threading.Condition()
        self._gathering = False
        self._draining = 0
        self.skipped = 0
        self.failed = 0
        self._writers: list[threading.Thread] = []

    def submit(self, obj: ObjectRef, blocks: dict[int, bytes]) -> None:
        size = sum(map(len, blocks.values()))
        with self._lock:
            if self._queued + size > self.limit:
                self.skipped += len(blocks)
                return
            self._queued += size
            self._jobs.append((obj, blocks, size))
            if not self._writers:  # made at the first write: a cache that never writes has none
                self._writers = [threading.Thread(target=self._serve, name=f"idcfs-disk_{i}",
                                                  daemon=True) for i in range(WRITERS)]
                for writer in self._writers:
                    writer.start()
            self._lock.notify_all()

    def _serve(self) -> None:
        while True:
            batch = self._gather()
            try:
                self.disk.put_objects([(obj, blocks) for obj, blocks, _ in batch])
            except Exception:  # noqa: BLE001 - nobody waits on this write: say it here
                self.failed += 1
                log.exception("writing blocks of %d objects (s3://%s/%s first) to the disk cache "
                              "failed", len(batch), batch[0][0].bucket, batch[0][0].key)
            finally:
                with self._lock:
                    self._queued -= sum(size for _, _, size in batch)
                    self._lock.notify_all()

    def _gather(self) -> list[tuple[ObjectRef, dict[int, bytes], int]]:
        """The next pack's worth of queued objects (at least one, whatever its size)."""
        with self._lock:
            self._lock.wait_for(lambda: self._jobs and not self._gathering)
            self._gathering = True
            try:
                batch: list[tuple[ObjectRef, dict[int, bytes], int]] = []
                room = entries = 0
                deadline = time.monotonic() + self.linger
                while True:
                    while self._jobs:
                        blocks = self._jobs[0][1]
                        need = sum(slot(len(data)) for data in blocks.values())
                        if batch and not self.disk.fits(room, entries, need, len(blocks)):
                            return batch
                        batch.append(self._jobs.popleft())
                        room, entries = room + need, entries + len(blocks)
                    left = deadline - time.monotonic()
                    full = not self.disk.fits(room, entries, PAGE, 1)  # not even a page more
                    if full or self._draining or left <= 0:
                        return batch
                    self._lock.wait(left)
            finally:
                self._gathering = False
                self._lock.notify_all()

    def has_room(self, incoming: int) -> bool:
        return self._queued + incoming <= self.limit

    def wait_for_room(self, incoming: int, timeout: float) -> None:
        """Block this thread until incoming more bytes would fit in the bound, or timeout."""
        with self._lock:
            self._lock.wait_for(lambda: self.has_room(incoming), timeout)

    def drain(self) -> None:
        """Wait until every queued block is on disk (at unmount, so what was fetched is kept)."""
        with self._lock:
            self._draining += 1
            self._lock.notify_all()
            try:
                self._lock.wait_for(lambda: self._queued == 0)
            finally:
                self._draining -= 1
