"""The block cache: object bytes in fixed blocks, in memory and on disk, fetched once.

IDC objects never change (a revised series gets a new crdc UUID), so a cached block never goes
stale: blocks are keyed by bucket, object key and block number, never by path or version, and two
mounts of any versions share them.

On disk a block, or a run of up to eight blocks fetched together, is a file written to a temporary
name and renamed into place, each block followed by a trailer holding its length and CRC-32
(computed by zlib-ng: ~58 GB/s here against the system zlib's 6 GB/s, which was a tenth of the
daemon's CPU in a cold 1 GiB read). So a block is complete and correct or absent, after `kill -9`
too, and one damaged by the disk or a power cut (renames are not fsynced) is detected on read,
deleted and fetched again, never served. Blocks are written and read past the page cache
(O_DIRECT) where the filesystem allows: copying into the page cache costs more CPU than the fetch.
The disk layer's size is bounded; least recently used files go first.
Its accounting is built by a scan in the background, so start-up never waits for a large cache.

Above it, a bounded LRU of hot blocks in memory, and single-flight fetching: concurrent readers of
one block cause one request.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import errno
import fcntl
import hashlib
import itertools
import logging
import mmap
import os
import re
import secrets
import shutil
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cachetools
import trio
from zlib_ng import zlib_ng

from .source import SourceError

log = logging.getLogger(__name__)

BLOCK_SIZE = 1 << 20
# An ETag that is an MD5 of the content (single-part uploads, as IDC's objects are).
_MD5 = re.compile(r"[0-9a-f]{32}")
_TRAILER = struct.Struct("<QI4s")
_MAGIC = b"IDCB"
_WARN_EVERY = 60.0
_SPACE_CHECK_EVERY = 32
_RESERVE = 1 << 30
_DIRECT_ALIGN = 4096
# Background fetches wait at most this long for the disk cache's writes to catch up; after a
# stall, they do not wait at all for a while.
PACING_LIMIT = 2.0
PACING_PAUSE = 30.0
# A block read is recorded on disk (its mtime) at most this often, not on every read.
_TOUCH_EVERY = 3600.0
# The most blocks one file holds: what readahead fetches in one GET (prefetch.py).
RUN_BLOCKS = 8
# Page-aligned buffers of a run's size kept for reuse between disk reads and writes.
_KEEP_BUFFERS = 8


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """An immutable object and its size (from the series listing)."""

    bucket: str
    key: str
    size: int
    etag: str | None = None

    def blocks(self, block_size: int = BLOCK_SIZE) -> int:
        return -(-self.size // block_size)


# (object, start, length, block size) -> the bytes [start, start+length) in blocks of block size
Fetch = Callable[[ObjectRef, int, int, int], Awaitable[list[bytes]]]


class DiskBlocks:
    """Blocks in files under <cache>/blocks, bounded by limit bytes. Thread-safe, blocking I/O.

    A block fetched alone is a file of its own, `<digest>.<block>`: its bytes, then its trailer.
    Consecutive blocks fetched together (readahead asks for RUN_BLOCKS per GET) share a file,
    `<digest>.<first>+<count>`, each block and its trailer in a slot of its own padded to the
    page, so that one block is still read alone, straight from disk. A cold 1 GiB read makes 128
    files instead of 1,024: a file costs three metadata updates (create, rename, and in the end
    unlink), and on this VM's ext4 creating one costs ~1 ms of system time whenever files were
    deleted in the last minutes (the allocator steps over recently freed inodes one by one);
    with a file per block, the cache writes cost a cold 1 GiB read 0.7 s of CPU.
    """

    def __init__(self, root: Path, limit: int, block_size: int = BLOCK_SIZE) -> None:
        self.root = root / "blocks"
        self.limit = limit
        self.block_size = block_size
        self._stride = _slot(block_size)
        self._lru: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._files: dict[str, dict[int, int]] = {}  # digest -> {first block: blocks} on disk
        self._bytes = 0
        self._lock = threading.Lock()
        self._scanned = threading.Event()
        self._last_warning = 0.0
        self._puts = 0
        self._direct = True
        self._buffers: list[mmap.mmap] = []  # page-aligned buffers not in use
        # Temporary names unique to this daemon, even beside one in another PID namespace.
        self._tmp_prefix = f"{os.getpid()}-{secrets.token_hex(4)}-"
        self._tmp_numbers = itertools.count()
        self._started = time.time() - 1
        self.corrupt = 0
        self.write_errors = 0

    @staticmethod
    def _digest(obj: ObjectRef) -> str:
        return hashlib.sha1(f"{obj.bucket}/{obj.key}".encode()).hexdigest()

    def _file(self, digest: str, first: int, count: int) -> Path:
        """One level of 256 directories, made by the scan: writing a block never makes one.

        Two levels of 256 (the layout before) made up to 65,536 directories, one for nearly
        every object of a young cache: ~2 mkdir calls per block written (0.2-0.4 ms each here),
        a 4 KiB directory block per object, and as many directories for the scan to list.
        """
        name = f"{digest}.{first}" if count == 1 else f"{digest}.{first}+{count}"
        return self.root / digest[:2] / name

    def path(self, obj: ObjectRef, index: int) -> Path:
        """Where the block is kept when it is a file of its own."""
        return self._file(self._digest(obj), index, 1)

    def locate(self, obj: ObjectRef, index: int) -> tuple[Path, int | None, int] | None:
        """The file holding the block, the block's offset in it if the file is shared, and the
        file's last block.

        Before the start-up scan is done, blocks that earlier mounts wrote are not indexed yet:
        the block's directory is listed instead (and the block's place in the layout before, which
        the scan has not moved it from yet), so a warm cache serves from the first read."""
        digest = self._digest(obj)
        with self._lock:
            found = _holding(self._files.get(digest), index)
        if found is None and not self._scanned.is_set():
            found = _holding(self._listed(digest), index)
            older = self.root / digest[:2] / digest[2:4] / f"{digest}.{index}"
            if found is None and older.is_file():
                return older, None, index
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
                for d, first, count in [_parse(name) or ("", 0, 0)] if d == digest}

    def _track(self, path: str, size: int) -> None:
        """Index a block file (the lock held)."""
        self._lru[path] = size
        digest, first, count = _parse(os.path.basename(path))
        self._files.setdefault(digest, {})[first] = count

    def _untrack(self, path: str) -> int:
        """Forget a block file (the lock held); its size, to take off the total."""
        size = self._lru.pop(path, 0)
        digest, first, _ = _parse(os.path.basename(path))
        files = self._files.get(digest, {})
        files.pop(first, None)
        if not files:
            self._files.pop(digest, None)
        return size

    def scan(self) -> None:
        """Learn what is on disk (oldest first) without holding up reads; then evict if over.

        Makes the block directories first, and moves blocks of the older two-level layout into
        place, so an existing cache stays warm."""
        with contextlib.suppress(OSError):  # an unwritable cache says so at its first write
            for i in range(256):
                (self.root / f"{i:02x}").mkdir(parents=True, exist_ok=True, mode=0o700)
        found, old_dirs = [], []
        for dirpath, _, names in os.walk(self.root):
            old_layout = os.path.dirname(os.path.dirname(dirpath)) == str(self.root)
            if old_layout:
                old_dirs.append(dirpath)
            for name in names:
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                    if old_layout and not name.startswith(".tmp-"):
                        os.replace(path, moved := os.path.join(os.path.dirname(dirpath), name))
                        path = moved
                except FileNotFoundError:
                    continue
                if name.startswith(".tmp-"):
                    if st.st_mtime < self._started:  # left by a daemon that was killed
                        _unlink(path)
                    continue
                if _parse(name) is not None:
                    found.append((st.st_mtime, path, st.st_size))
        for dirpath in old_dirs:
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
        found.sort()
        with self._lock:
            # Files written since the mount started are known already, and room reserved for
            # writes in progress is in _bytes: add only what was on disk before, oldest first.
            known, self._lru = self._lru, collections.OrderedDict()
            for _, path, size in found:
                if path not in known:
                    self._track(path, size)
                    self._bytes += size
            self._lru.update(known)
        self._scanned.set()
        self._evict()
        log.info("disk cache: %d blocks, %.1f MB of %.1f MB", self.count, self._bytes / 1e6,
                 self.limit / 1e6)

    def known_absent(self, obj: ObjectRef, index: int) -> bool:
        """True when the block is not on disk as far as this mount knows (the scan is done and
        never saw it, and this mount did not write it). Lets a cold read skip a disk probe; a
        block another mount wrote since is fetched again, which costs a request, not a byte."""
        if not self._scanned.is_set():
            return False
        with self._lock:
            return _holding(self._files.get(self._digest(obj)), index) is None

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
            fd = self._open(path, os.O_RDONLY)
        except FileNotFoundError:  # evicted by another mount, or `idcfs cache clear`
            self._forget(str(path))
            return {}
        except OSError as exc:
            self._warn("cannot read cached block %s: %s", path, exc)
            return {}
        try:
            datas = self._read_verified(fd, list(lengths.values()), offset)
            if any(datas) and time.time() - os.fstat(fd).st_mtime > _TOUCH_EVERY:
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
                if str(path) in self._lru:
                    self._lru.move_to_end(str(path))
        return found

    def _open(self, path: Path, flags: int) -> int:
        """Open with O_DIRECT where the filesystem has it (the flag is refused with EINVAL where
        not, some network filesystems and tmpfs before Linux 6.6), without it from then on."""
        if self._direct:
            try:
                return os.open(path, flags | os.O_DIRECT, 0o600)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._direct = False
        return os.open(path, flags, 0o600)

    def _read_verified(self, fd: int, lengths: list[int],
                       offset: int | None) -> list[bytes | None]:
        """Each block's bytes if the file holds exactly them and a matching trailer, else None.

        Read with O_DIRECT where the filesystem allows it, like the writes: straight from the
        disk into an aligned buffer, instead of through the page cache (whose fill and copy cost
        this VM ~1 s of system time per GiB, for pages the kernel already keeps for the mount)."""
        slots = [_slot(length) for length in lengths]
        if offset is None:
            # A file of its own: one byte more than a good one has, to see a longer file.
            want = lengths[0] + _TRAILER.size
            room, expect, offset = _aligned_size(want + 1), want, 0
        else:
            room = expect = sum(slots)  # slots, each padded to the page
        with self._aligned() as buf:
            view = memoryview(buf)[:room]
            try:
                got = os.preadv(fd, [view], offset)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._direct = False
                _set_direct(fd, False)
                got = os.preadv(fd, [view], offset)
            if got != expect:
                return [None] * len(lengths)
            datas: list[bytes | None] = []
            at = 0
            for length, slot in zip(lengths, slots):
                size, crc, magic = _TRAILER.unpack_from(view, at + length)
                block = view[at:at + length]
                intact = magic == _MAGIC and size == length and zlib_ng.crc32(block) == crc
                datas.append(block.tobytes() if intact else None)
                at += slot
        return datas

    @contextlib.contextmanager
    def _aligned(self) -> Iterator[mmap.mmap]:
        """A page-aligned buffer (O_DIRECT needs one) for a whole file of blocks, lent for the
        time of one read or write. Shared, not one per thread: readers run in whichever of up to
        40 worker threads is free, and a buffer of 8 MiB in each of them raised the daemon's
        peak RSS in a disk-cache re-read from 459 MB to 491 MB. At most _KEEP_BUFFERS are kept
        when not in use."""
        with self._lock:
            buf = self._buffers.pop() if self._buffers else None
        if buf is None:
            buf = mmap.mmap(-1, RUN_BLOCKS * self._stride + _DIRECT_ALIGN)
        try:
            yield buf
        finally:
            with self._lock:
                if len(self._buffers) < _KEEP_BUFFERS:
                    self._buffers.append(buf)

    def put(self, obj: ObjectRef, index: int, data: bytes) -> None:
        """Store one block in a file of its own."""
        self._put(obj, index, [data])

    def put_blocks(self, obj: ObjectRef, blocks: dict[int, bytes]) -> None:
        """Store blocks, consecutive ones up to RUN_BLOCKS to a file."""
        for run in _runs(sorted(blocks)):
            for at in range(0, len(run), RUN_BLOCKS):
                part = run[at:at + RUN_BLOCKS]
                datas = [blocks[i] for i in part]
                if any(len(d) != self.block_size for d in datas[:-1]):
                    raise ValueError("only the last block of a run may be short")
                self._put(obj, part[0], datas)

    def _put(self, obj: ObjectRef, first: int, datas: list[bytes]) -> None:
        """Store a file of blocks; a full or unwritable disk only costs the caching, with a
        warning.

        Room is made before the file is written (its size reserved, older files evicted), so
        the files on disk, finished or being written, never add up to more than the bound.
        """
        digest = self._digest(obj)
        path = self._file(digest, first, len(datas))
        size = _file_size(datas)
        if size > self.limit:
            return
        with self._lock:
            if first in self._files.get(digest, ()):
                return
            self._bytes += size
            self._puts += 1
            check_space = self._puts % _SPACE_CHECK_EVERY == 0
        if check_space:
            self._keep_disk_free()
        self._evict()
        try:
            self._write(path, datas, size)
        except OSError as exc:
            with self._lock:
                self._bytes -= size
            self.write_errors += 1
            self._warn("cannot write to the disk cache (%s); reading on without caching", exc)
            return
        with self._lock:
            if str(path) in self._lru:  # the start-up scan found it already and counted it
                self._bytes -= size
            self._track(str(path), size)

    @staticmethod
    def _image(buf: mmap.mmap, datas: list[bytes]) -> memoryview:
        """The file's bytes in buf, padded to the page: a block and its trailer, or each block
        and its trailer in a slot of its own."""
        slots = [_slot(len(d)) for d in datas]
        at = 0
        for data, slot in zip(datas, slots):
            end = at + len(data)
            buf[at:end] = data
            buf[end:end + _TRAILER.size] = _TRAILER.pack(len(data), zlib_ng.crc32(data), _MAGIC)
            buf[end + _TRAILER.size:at + slot] = bytes(at + slot - end - _TRAILER.size)
            at += slot
        return memoryview(buf)[:at]

    def _write(self, path: Path, datas: list[bytes], size: int) -> None:
        # Opened with O_DIRECT at once: each system call releases and retakes the GIL, which
        # the FUSE loop and the S3 client are waiting for (mkstemp and two fcntl calls before).
        tmp = path.parent / f".tmp-{self._tmp_prefix}{next(self._tmp_numbers)}"
        try:
            fd = self._create(tmp)
        except FileNotFoundError:  # not made yet by the scan, or `idcfs cache clear` removed it
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = self._create(tmp)
        open_fd: int | None = fd
        try:
            with self._aligned() as buf:
                image = self._image(buf, datas)
                if not (self._direct and self._write_direct(fd, image, size)):
                    with os.fdopen(fd, "wb", closefd=False) as out:
                        out.write(image[:size])
            open_fd = None
            os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            if open_fd is not None:
                os.close(open_fd)
            _unlink(tmp)
            raise

    def _create(self, tmp: Path) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        direct = self._direct
        try:
            return self._open(tmp, flags)
        except FileExistsError:
            if not direct or self._direct:
                raise
            # O_DIRECT was refused just now, after the kernel had made the file: ours, and empty.
            return os.open(tmp, flags & ~(os.O_CREAT | os.O_EXCL))

    def _write_direct(self, fd: int, image: memoryview, size: int) -> bool:
        """Write the file with O_DIRECT, past the page cache: on these machines copying a block
        into the page cache costs more CPU than fetching it (1 GiB: 1.5-2.9 s of system time
        buffered, 0.35 s direct), and a block just fetched is in the memory cache anyway. False
        where the filesystem opens with O_DIRECT but refuses the write: the caller writes it
        buffered."""
        try:
            written = os.write(fd, image)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self._direct = False
            _set_direct(fd, False)
            os.lseek(fd, 0, os.SEEK_SET)
            return False
        if written != len(image):
            raise OSError(errno.EIO, f"short write to the disk cache ({written} of {len(image)})")
        if size != len(image):
            os.ftruncate(fd, size)
        return True

    def _keep_disk_free(self) -> None:
        """Shrink the bound if the disk itself runs low, whatever else is filling it."""
        try:
            st = os.statvfs(self.root)
        except OSError:
            return
        free = st.f_bavail * st.f_frsize
        reserve = min(_RESERVE, st.f_blocks * st.f_frsize // 20)
        if free < reserve:
            with self._lock:
                self.limit = max(0, self._bytes - (reserve - free))
            self._warn("the disk of the cache is nearly full; cache bound lowered to %.0f MB",
                       self.limit / 1e6)

    def _evict(self) -> None:
        # Before the start-up scan is done only this mount's own blocks are known; they are
        # evicted like any others, and older blocks join the queue (at its old end) once found.
        # Unlinked under the lock: room counted as free is free on disk before anyone uses it.
        with self._lock:
            while self._bytes > self.limit and self._lru:
                path = next(iter(self._lru))
                _unlink(path)
                self._bytes -= self._untrack(path)

    def _forget(self, path: str) -> None:
        with self._lock:
            if path in self._lru:
                self._bytes -= self._untrack(path)

    def _warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY:
            self._last_warning = now
            log.warning(message, *args)

    @property
    def used(self) -> int:
        with self._lock:
            return self._bytes

    @property
    def count(self) -> int:
        """Blocks on disk (a file holds one or a run)."""
        with self._lock:
            return sum(sum(files.values()) for files in self._files.values())


def _set_direct(fd: int, on: bool) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)


def _aligned_size(size: int) -> int:
    return -(-size // _DIRECT_ALIGN) * _DIRECT_ALIGN


def _unlink(path: str | Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def clear(cache_dir: Path) -> None:
    """Remove cached blocks and listings (the index trees are local and stay)."""
    for part in ("blocks", "listings"):
        shutil.rmtree(cache_dir / part, ignore_errors=True)


class WriteBehind:
    """Writes fetched blocks to disk off the read path, in a bounded queue.

    A reader never waits for the disk: fetched blocks are served from memory at once and written
    by a background thread. Background fetches wait while what they may have in flight would not
    fit in the bound (BlockCache.pace_to_disk). If a reader's own fetches still push them past the
    bound, blocks are not written (counted as skipped): they are immutable, so the cost is a
    fetch later, not a wrong byte, and memory stays bounded.
    """

    def __init__(self, disk: DiskBlocks, limit: int = 128 << 20) -> None:
        self.disk = disk
        self.limit = limit
        self._queued = 0
        self._lock = threading.Condition()
        self._pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="idcfs-disk")
        self.skipped = 0

    def submit(self, obj: ObjectRef, blocks: dict[int, bytes]) -> None:
        size = sum(map(len, blocks.values()))
        with self._lock:
            if self._queued + size > self.limit:
                self.skipped += len(blocks)
                return
            self._queued += size
        self._pool.submit(self._write, obj, blocks, size)

    def _write(self, obj: ObjectRef, blocks: dict[int, bytes], size: int) -> None:
        try:
            self.disk.put_blocks(obj, blocks)
        finally:
            with self._lock:
                self._queued -= size
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
            self._lock.wait_for(lambda: self._queued == 0)


class BlockCache:
    """Exact byte ranges of immutable objects, served from memory, disk or one fetch per block."""

    def __init__(self, fetch: Fetch, disk: DiskBlocks | None, memory_bytes: int,
                 block_size: int = BLOCK_SIZE) -> None:
        self._fetch = fetch
        if disk is not None and disk.block_size != block_size:
            raise ValueError(f"block size {block_size} differs from the disk's {disk.block_size}")
        self.disk = disk
        self.writer = WriteBehind(disk) if disk is not None else None
        self.block_size = block_size
        self._memory: cachetools.LRUCache = cachetools.LRUCache(maxsize=memory_bytes, getsizeof=len)
        self._pending: dict[tuple[str, str, int], trio.Event] = {}
        self._pacing = trio.CapacityLimiter(1)
        self._pacing_paused_until = float("-inf")
        self.stats = collections.Counter()

    def _length(self, obj: ObjectRef, index: int) -> int:
        return min(self.block_size, obj.size - index * self.block_size)

    def cached_in_memory(self, obj: ObjectRef, index: int) -> bool:
        return (obj.bucket, obj.key, index) in self._memory

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
                elif key in self._pending and waiting is None:
                    waiting = self._pending[key]
            claimed = self.claim(obj, first, last)
            if claimed:
                found.update(await self.fill(obj, claimed))
            elif waiting is not None:
                await waiting.wait()
        return [found[i] for i in range(first, last + 1)]

    async def pace_to_disk(self, in_flight: int) -> None:
        """Wait until the disk cache's write queue has room for in_flight more bytes (all that
        background fetches may have in flight; at most half the queue's bound is asked for).

        Without this, readahead outran the writes whenever the cores were busy: a cold read of
        a 1 GiB object left 424 of its 1024 blocks unwritten, fetched again on the next read.
        Only background fetches wait, and for PACING_LIMIT at most: a disk that stalls (a hung
        network filesystem) must not hold up the readers waiting for those fetches. After a
        stall, nothing waits for PACING_PAUSE, and blocks the disk cannot take go unwritten.
        One task waits in a thread; the others wait for it."""
        if self.writer is None or trio.current_time() < self._pacing_paused_until:
            return
        incoming = min(in_flight, self.writer.limit // 2)
        if self.writer.has_room(incoming):
            return
        with trio.move_on_after(PACING_LIMIT) as waited:
            async with self._pacing:
                while not self.writer.has_room(incoming):
                    await trio.to_thread.run_sync(self.writer.wait_for_room, incoming, 0.5,
                                                  abandon_on_cancel=True)
        if waited.cancelled_caught:
            self.stats["disk_cache_stalls"] += 1
            self._pacing_paused_until = trio.current_time() + PACING_PAUSE
            log.warning("the disk cache has not taken any writes for %.0f s; reading on without "
                        "waiting for it for %.0f s", PACING_LIMIT, PACING_PAUSE)

    def claim(self, obj: ObjectRef, first: int, last: int) -> list[int]:
        """Mark the blocks of first..last that nobody has or is getting as being got, now.

        Claiming synchronously, before any await, is what makes a scheduled prefetch visible to
        a reader that arrives before the prefetch task runs: the reader waits for it instead of
        fetching the same block on its own. Whoever claims must call fill.
        """
        claimed = []
        for i in range(first, last + 1):
            key = (obj.bucket, obj.key, i)
            if key not in self._memory and key not in self._pending:
                self._pending[key] = trio.Event()
                claimed.append(i)
        return claimed

    async def fill(self, obj: ObjectRef, claimed: list[int]) -> dict[int, bytes]:
        """Get claimed blocks from disk or the source, and release them to waiting readers."""
        try:
            loaded: dict[int, bytes] = {}
            on_disk = [i for i in claimed
                       if self.disk is not None and not self.disk.known_absent(obj, i)]
            if on_disk:
                loaded = await trio.to_thread.run_sync(self._disk_get, obj, on_disk)
                self.stats["disk_hits"] += len(loaded)
            for run in _runs([i for i in claimed if i not in loaded]):
                loaded.update(await self._fetch_run(obj, run[0], run[-1]))
            for i, data in loaded.items():
                if len(data) <= self._memory.maxsize:
                    self._memory[(obj.bucket, obj.key, i)] = data
            return loaded
        finally:
            for i in claimed:
                self._pending.pop((obj.bucket, obj.key, i)).set()

    async def _fetch_run(self, obj: ObjectRef, first: int, last: int) -> dict[int, bytes]:
        start = first * self.block_size
        end = min(obj.size, (last + 1) * self.block_size)
        blocks = await self._fetch(obj, start, end - start, self.block_size)
        if [len(b) for b in blocks] != [self._length(obj, i) for i in range(first, last + 1)]:
            raise SourceError(f"s3://{obj.bucket}/{obj.key}: blocks {first}-{last} came back as "
                              f"{len(blocks)} blocks of the wrong sizes; not used")
        if start == 0 and end == obj.size and obj.etag and _MD5.fullmatch(obj.etag):
            # hashlib lets go of the GIL on large buffers: off the FUSE loop, digests run in parallel.
            digest = (await trio.to_thread.run_sync(_md5, blocks) if obj.size > 65536
                      else _md5(blocks))
            if digest != obj.etag:
                self.stats["content_mismatches"] += 1
                raise SourceError(f"s3://{obj.bucket}/{obj.key}: the bytes received do not match "
                                  f"its ETag (MD5 {obj.etag}); not used, not cached")
        self.stats["fetches"] += 1
        self.stats["bytes_fetched"] += end - start
        out = dict(zip(range(first, last + 1), blocks))
        if self.writer is not None:
            self.writer.submit(obj, out)
        return out

    def _disk_get(self, obj: ObjectRef, indexes: list[int]) -> dict[int, bytes]:
        return self.disk.get_many(obj, {i: self._length(obj, i) for i in indexes})



def _md5(blocks: list[bytes]) -> str:
    digest = hashlib.md5()
    for block in blocks:
        digest.update(block)
    return digest.hexdigest()


def _runs(indexes: list[int]) -> list[list[int]]:
    """Consecutive runs of sorted block numbers."""
    runs: list[list[int]] = []
    for i in indexes:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def _file_size(datas: list[bytes]) -> int:
    """A block of its own ends at its trailer; the slots of a shared file keep their padding."""
    if len(datas) == 1:
        return len(datas[0]) + _TRAILER.size
    return sum(_slot(len(d)) for d in datas)


def _slot(length: int) -> int:
    """The room a block of length bytes and its trailer take in a shared file: padded to the
    page, so that each block can be read alone with O_DIRECT."""
    return _aligned_size(length + _TRAILER.size)


def _parse(name: str) -> tuple[str, int, int] | None:
    """(digest, first block, blocks) from a block file's name; None for any other file."""
    digest, dot, rest = name.partition(".")
    first, plus, count = rest.partition("+")
    if not dot or not first.isdigit() or plus and not count.isdigit():
        return None
    return digest, int(first), int(count) if plus else 1


def blocks_in_file(name: str) -> int:
    """How many blocks a file of the disk cache holds, from its name (0: not a block file)."""
    parsed = _parse(name)
    return parsed[2] if parsed else 0


def _holding(files: dict[int, int] | None, index: int) -> tuple[int, int] | None:
    """The (first block, blocks) of the file among files that holds block index."""
    if files:
        for first in range(index, index - RUN_BLOCKS, -1):
            if index < first + files.get(first, 0):
                return first, files[first]
    return None
