"""The disk cache: block files under `<cache>/blocks.v<format>`, bounded, least recently used
out first, crash-safe, and never a lock held across a system call that the FUSE loop could wait
for.

A file is written to a temporary name and renamed into place, so a block is complete and
correct or absent, after `kill -9` too; one damaged by the disk or a power cut (renames are not
fsynced) fails its trailer check on read and is deleted and fetched again, never served.

Room is made before a file is written (its size reserved, older files evicted), and a file being
evicted counts until it is unlinked, so the files on disk never add up to more than the bound.
The accounting is built by a scan in the background, so start-up never waits for a large cache;
until it is done, a block's directory is listed to find blocks earlier mounts wrote.

Files sit in one level of 256 directories made by the scan, so writing a block never makes one
(two levels made up to 65,536, ~2 mkdir calls per block written). A large object makes one file
per RUN_BLOCKS blocks: on this VM's ext4 creating a file costs ~1 ms of system time whenever files
were deleted in the last minutes (the allocator steps over recently freed inodes one by one).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import secrets
import shutil
import threading
import time
from pathlib import Path

from ..objects import BLOCK_SIZE, ObjectRef, runs
from . import blockfile
from .direct import BufferPool, DirectIO
from .index import DiskIndex, holding

log = logging.getLogger(__name__)

WARN_EVERY = 60.0
SPACE_CHECK_EVERY = 32
RESERVE = 1 << 30
# A block read is recorded on disk (its mtime) at most this often, not on every read.
TOUCH_EVERY = 3600.0


class DiskBlocks:
    """Blocks in files, bounded by limit bytes. Thread-safe, blocking I/O (run it in threads)."""

    def __init__(self, cache_dir: Path, limit: int, block_size: int = BLOCK_SIZE) -> None:
        self.cache_dir = cache_dir
        self.root = blockfile.directory(cache_dir)
        self.limit = limit
        self.block_size = block_size
        self._stride = blockfile.slot(block_size)
        self._index = DiskIndex()
        self._reserved = 0  # room for files being written
        self._unlinking = 0  # files being evicted, on disk until unlinked
        # Held only for dictionary work: the FUSE loop takes it (known_absent).
        self._lock = threading.Lock()
        self._evicting = threading.Lock()  # one evictor at a time, for the whole of its unlinks
        self._scanned = threading.Event()
        self.io = DirectIO()
        self._buffers = BufferPool(self._stride)
        self._last_warning = 0.0
        self._puts = 0
        # Temporary names unique to this daemon, even beside one in another PID namespace.
        self._tmp_prefix = f"{os.getpid()}-{secrets.token_hex(4)}-"
        self._tmp_numbers = itertools.count()
        self._started = time.time() - 1
        self.corrupt = 0
        self.write_errors = 0

    # -- where blocks are -------------------------------------------------------------------

    def _file(self, digest: str, first: int, count: int) -> Path:
        return self.root / digest[:2] / blockfile.file_name(digest, first, count)

    def path(self, obj: ObjectRef, index: int) -> Path:
        """Where the block is kept when it is a file of its own."""
        return self._file(blockfile.digest(obj.bucket, obj.key), index, 1)

    def locate(self, obj: ObjectRef, index: int) -> tuple[Path, int | None, int] | None:
        """The file holding the block, the block's offset in it if the file is shared, and the
        file's last block. Before the start-up scan is done, the block's directory is listed."""
        digest = blockfile.digest(obj.bucket, obj.key)
        with self._lock:
            found = self._index.holding(digest, index)
        if found is None and not self._scanned.is_set():
            found = holding(self._listed(digest), index)
        if found is None:
            return None
        first, count = found
        return (self._file(digest, first, count),
                None if count == 1 else (index - first) * self._stride, first + count - 1)

    def _listed(self, digest: str) -> dict[int, int]:
        try:
            names = os.listdir(self.root / digest[:2])
        except OSError:
            return {}
        return {first: count for name in names if name.startswith(digest)
                for d, first, count in [blockfile.parse(name) or ("", 0, 0)] if d == digest}

    def known_absent(self, obj: ObjectRef, index: int) -> bool:
        """True when the block is not on disk as far as this mount knows (the scan is done and
        never saw it, and this mount did not write it). Lets a cold read skip a disk probe; a
        block another mount wrote since is fetched again, which costs a request, not a byte."""
        if not self._scanned.is_set():
            return False
        with self._lock:
            return self._index.holding(blockfile.digest(obj.bucket, obj.key), index) is None

    # -- start-up -------------------------------------------------------------------------------

    def scan(self) -> None:
        """Learn what is on disk (oldest first) without holding up reads; then evict if over.

        Removes the directories of older formats, and makes the block directories."""
        try:
            self._scan()
        finally:
            self._scanned.set()  # a scan that failed leaves blocks unknown: refetched, not lost
        self._evict()
        log.info("disk cache: %d blocks, %.1f MB of %.1f MB", self.count, self.used / 1e6,
                 self.limit / 1e6)

    def _scan(self) -> None:
        with contextlib.suppress(OSError):
            for old in self.cache_dir.iterdir():
                if old != self.root and old.is_dir() and blockfile.is_block_directory(old):
                    log.info("removing %s, a cache of an older format", old)
                    shutil.rmtree(old, ignore_errors=True)
        with contextlib.suppress(OSError):  # an unwritable cache says so at its first write
            for i in range(256):
                (self.root / f"{i:02x}").mkdir(parents=True, exist_ok=True, mode=0o700)
        found = []
        for dirpath, _, names in os.walk(self.root):
            for name in names:
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                if name.startswith(".tmp-"):
                    if st.st_mtime < self._started:  # left by a daemon that was killed
                        _unlink(path)
                elif blockfile.parse(name) is not None:
                    found.append((st.st_mtime, path, st.st_size))
        found.sort()
        # Built without the lock, and swapped in under it with what this mount wrote meanwhile,
        # so a large cache is never indexed while the FUSE loop waits.
        scanned = DiskIndex()
        for _, path, size in found:
            scanned.add(path, size)
        with self._lock:
            for path, size in self._index.lru.items():
                scanned.add(path, size)
            self._index = scanned

    # -- reading --------------------------------------------------------------------------------

    def get(self, obj: ObjectRef, index: int, length: int) -> bytes | None:
        return self.get_many(obj, {index: length}).get(index)

    def get_many(self, obj: ObjectRef, lengths: dict[int, int]) -> dict[int, bytes]:
        """Those of the blocks asked for (block: its length) found intact on disk. Consecutive
        blocks of a shared file come in one read, which the disk serves as one large request."""
        found: dict[int, bytes] = {}
        todo = sorted(lengths)
        while todo:
            where = self.locate(obj, todo[0])
            if where is None:
                todo.pop(0)
                continue
            path, offset, last = where
            group = [todo.pop(0)]
            while todo and todo[0] == group[-1] + 1 and todo[0] <= last:
                group.append(todo.pop(0))
            found.update(self._read_file(path, offset, {i: lengths[i] for i in group}))
        return found

    def _read_file(self, path: Path, offset: int | None,
                   lengths: dict[int, int]) -> dict[int, bytes]:
        try:
            fd = self.io.open(path, os.O_RDONLY)
        except FileNotFoundError:  # evicted by another mount, or `idcfs cache clear`
            self._forget(str(path))
            return {}
        except OSError as exc:
            self._warn("cannot read cached block %s: %s", path, exc)
            return {}
        try:
            datas = self._read_verified(fd, list(lengths.values()), offset)
            if any(datas) and time.time() - os.fstat(fd).st_mtime > TOUCH_EVERY:
                os.utime(fd)  # the order the start-up scan restores the LRU in
        except OSError as exc:
            self._warn("cannot read cached block %s: %s", path, exc)
            return {}
        finally:
            os.close(fd)
        found = {i: data for i, data in zip(lengths, datas) if data is not None}
        if len(found) < len(lengths):
            self.corrupt += 1
            log.warning("cached block %s is damaged; fetching it again", path)
            self._forget(str(path))
            _unlink(path)
        elif found:
            with self._lock:
                self._index.touch(str(path))
        return found

    def _read_verified(self, fd: int, lengths: list[int],
                       offset: int | None) -> list[bytes | None]:
        """Each block's bytes if the file holds exactly them and a matching trailer, else None."""
        room, expect = blockfile.read_extent(lengths, shared=offset is not None)
        with self._buffers.lend() as buf:
            view = memoryview(buf)[:room]
            if self.io.pread(fd, view, offset or 0) != expect:
                return [None] * len(lengths)
            return blockfile.verified(view, lengths)

    # -- writing --------------------------------------------------------------------------------

    def put(self, obj: ObjectRef, index: int, data: bytes) -> None:
        """Store one block in a file of its own."""
        self._put(obj, index, [data])

    def put_blocks(self, obj: ObjectRef, blocks: dict[int, bytes]) -> None:
        """Store blocks, consecutive ones up to RUN_BLOCKS to a file."""
        for run in runs(sorted(blocks)):
            for at in range(0, len(run), blockfile.RUN_BLOCKS):
                part = run[at:at + blockfile.RUN_BLOCKS]
                datas = [blocks[i] for i in part]
                if any(len(d) != self.block_size for d in datas[:-1]):
                    raise ValueError("only the last block of a run may be short")
                self._put(obj, part[0], datas)

    def _put(self, obj: ObjectRef, first: int, datas: list[bytes]) -> None:
        """Store a file of blocks; a full or unwritable disk only costs the caching, with a
        warning."""
        digest = blockfile.digest(obj.bucket, obj.key)
        path = self._file(digest, first, len(datas))
        size = blockfile.file_size([len(d) for d in datas])
        if size > self.limit:
            return
        with self._lock:
            if self._index.has_file(digest, first):
                return
            self._reserved += size
            self._puts += 1
            check_space = self._puts % SPACE_CHECK_EVERY == 0
        try:
            if check_space:
                self._keep_disk_free()
            self._evict()
            self._write(path, datas)
        except BaseException as exc:
            with self._lock:
                self._reserved -= size
            if not isinstance(exc, OSError):
                raise
            self.write_errors += 1
            self._warn("cannot write to the disk cache (%s); reading on without caching", exc)
            return
        with self._lock:  # from reserved to known in one step: never counted as free between
            self._reserved -= size
            self._index.add(str(path), size)

    def _write(self, path: Path, datas: list[bytes]) -> None:
        tmp = path.parent / f".tmp-{self._tmp_prefix}{next(self._tmp_numbers)}"
        try:
            fd = self.io.create(tmp)
        except FileNotFoundError:  # not made yet by the scan, or `idcfs cache clear` removed it
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = self.io.create(tmp)
        try:
            with self._buffers.lend() as buf:
                length = blockfile.write_image(buf, datas)
                self.io.write(fd, memoryview(buf)[:length])
        except BaseException:
            os.close(fd)
            _unlink(tmp)
            raise
        os.close(fd)
        try:
            os.replace(tmp, path)
        except BaseException:
            _unlink(tmp)
            raise

    # -- room -----------------------------------------------------------------------------------

    def _keep_disk_free(self) -> None:
        """Shrink the bound if the disk itself runs low, whatever else is filling it."""
        try:
            st = os.statvfs(self.root)
        except OSError:
            return
        free = st.f_bavail * st.f_frsize
        reserve = min(RESERVE, st.f_blocks * st.f_frsize // 20)
        if free < reserve:
            with self._lock:
                self.limit = max(0, self.used - (reserve - free))
            self._warn("the disk of the cache is nearly full; cache bound lowered to %.0f MB",
                       self.limit / 1e6)

    def _evict(self) -> None:
        """Unlink the least recently used files until what is on disk fits the bound. Victims
        leave the index at once (no reader finds them) but count until they are gone, and the
        unlinks happen without the lock the FUSE loop takes."""
        with self._evicting:
            with self._lock:
                victims, excess = [], self.used - self.limit
                while excess > 0 and (path := self._index.oldest()) is not None:
                    size = self._index.remove(path)
                    self._unlinking += size
                    excess -= size
                    victims.append((path, size))
            for path, size in victims:
                _unlink(path)
                with self._lock:
                    self._unlinking -= size

    def _forget(self, path: str) -> None:
        with self._lock:
            self._index.remove(path)

    def _warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY:
            self._last_warning = now
            log.warning(message, *args)

    @property
    def used(self) -> int:
        """Bytes on disk or about to be: the files known, being written, being evicted."""
        return self._index.size + self._reserved + self._unlinking

    @property
    def count(self) -> int:
        """Blocks on disk (a file holds one or a run)."""
        return self._index.blocks


def _unlink(path: str | Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def clear(cache_dir: Path) -> None:
    """Remove cached blocks (of every format) and listings (the index trees are local, and stay)."""
    for part in cache_dir.iterdir() if cache_dir.is_dir() else ():
        if part.is_dir() and (blockfile.is_block_directory(part) or part.name == "listings"):
            shutil.rmtree(part, ignore_errors=True)
