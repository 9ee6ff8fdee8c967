"""The disk cache: packs of blocks under `<cache>/blocks.v<format>`, bounded, least recently used
out first, crash-safe, and never a lock held across a system call that the FUSE loop could wait
for.

A pack is written to a temporary name and renamed into place, so its blocks are complete and
correct or absent, after `kill -9` too; one damaged by the disk or a power cut (renames are not
fsynced) fails a trailer check on read (or its directory's at the start-up scan) and is deleted
and its blocks fetched again, never served. Packs are evicted whole.

Room is made before a pack is written (its size reserved, older packs evicted), and a pack being
evicted counts until it is unlinked, so the packs on disk never add up to more than the bound.
The accounting is built by a scan in the background (each pack's directory page), so start-up
never waits for a large cache; a read of a block this mount has not written waits for the scan
(for its first SCAN_WAIT), so that a warm cache serves its blocks even with the endpoint down.

Packs sit in one level of 256 directories made by the scan, so writing never makes one. On this
VM's ext4 creating a file costs ~1 ms of system time whenever files were deleted in the last
minutes (the allocator steps over recently freed inodes one by one): a pack per queue of blocks,
not a file per block, is what keeps that off every DICOM instance.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import mmap
import os
import secrets
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ..objects import BLOCK_SIZE, ObjectRef
from . import blockfile
from .blockfile import Entry
from .direct import BufferPool, DirectIO
from .index import DiskIndex

log = logging.getLogger(__name__)

WARN_EVERY = 60.0
SPACE_CHECK_EVERY = 32
RESERVE = 1 << 30
# A block read is recorded on disk (its mtime) at most this often, not on every read.
TOUCH_EVERY = 3600.0
# How long after the start-up scan began a read of a block this mount has not written waits
# for the scan to say whether an earlier mount left it on disk, before it fetches it instead.
SCAN_WAIT = 2.0


class DiskBlocks:
    """Blocks in packs, bounded by limit bytes. Thread-safe, blocking I/O (run it in threads)."""

    def __init__(self, cache_dir: Path, limit: int, block_size: int = BLOCK_SIZE) -> None:
        self.cache_dir = cache_dir
        self.root = blockfile.directory(cache_dir)
        self.limit = limit
        self.block_size = block_size
        self._stride = blockfile.slot(block_size)
        # What one pack holds at most, besides its directory page: a readahead run of blocks.
        self.capacity = blockfile.RUN_BLOCKS * self._stride
        self._index = DiskIndex()
        self._reserved = 0  # room for packs being written
        self._unlinking = 0  # packs being evicted, on disk until unlinked
        # Held only for dictionary work: the FUSE loop takes it (known_absent).
        self._lock = threading.Lock()
        self._evicting = threading.Lock()  # one evictor at a time, for the whole of its unlinks
        self._scan_deadline = 0.0  # until when reads wait for the start-up scan (0: none began)
        self._scanned = threading.Event()
        self.io = DirectIO()
        self._buffers = BufferPool(self._stride)
        self._last_warning = 0.0
        self._puts = 0
        # Names unique to this daemon, even beside one in another PID namespace.
        self._unique = f"{os.getpid():x}-{secrets.token_hex(4)}-"
        self._numbers = itertools.count()
        self._started = time.time() - 1
        self.corrupt = 0
        self.write_errors = 0

    # -- where blocks are -------------------------------------------------------------------

    def locate(self, obj: ObjectRef, index: int) -> tuple[Path, Entry] | None:
        """The pack holding the block, and the block's entry in it. A block this mount has not
        written waits for a start-up scan under way to find it, until SCAN_WAIT after the scan
        began: a very large cache is still being scanned after that (~0.1 ms a pack here), and
        its blocks are fetched again meanwhile instead of waited for."""
        return self._locate(blockfile.digest(obj.bucket, obj.key), index)

    def _locate(self, digest: str, index: int) -> tuple[Path, Entry] | None:
        with self._lock:
            found = self._index.locate(digest, index)
        if found is None and not self._scanned.is_set() \
                and self._scanned.wait(self._scan_deadline - time.monotonic()):
            with self._lock:
                found = self._index.locate(digest, index)
        return (Path(found[0]), found[1]) if found else None

    def path(self, obj: ObjectRef, index: int) -> Path | None:
        """The pack holding the block, if the disk has it."""
        found = self.locate(obj, index)
        return found[0] if found else None

    def known_absent(self, obj: ObjectRef, index: int) -> bool:
        """True when the block is not on disk as far as this mount knows (the scan is done and
        never saw it, and this mount did not write it). Lets a cold read skip a disk probe; a
        block another mount wrote since is fetched again, which costs a request, not a byte."""
        if not self._scanned.is_set():
            return False
        with self._lock:
            return self._index.locate(blockfile.digest(obj.bucket, obj.key), index) is None

    # -- start-up -------------------------------------------------------------------------------

    def scan_in_background(self) -> None:
        """Scan in a thread of its own; reads of blocks this mount has not written wait for it."""
        self._began_scan()
        threading.Thread(target=self.scan, name="idcfs-cache-scan", daemon=True).start()

    def _began_scan(self) -> None:
        self._scan_deadline = time.monotonic() + SCAN_WAIT

    def scan(self) -> None:
        """Learn what is on disk (oldest first) without holding up reads; then evict if over.

        Removes the directories of older formats, and makes the block directories."""
        if not self._scan_deadline:
            self._began_scan()
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
        page = mmap.mmap(-1, blockfile.PAGE)  # aligned, for O_DIRECT
        for dirpath, _, names in os.walk(self.root):
            for name in names:
                path = os.path.join(dirpath, name)
                if name.startswith(".tmp-"):
                    with contextlib.suppress(OSError):
                        if os.stat(path).st_mtime < self._started:  # left by a killed daemon
                            _unlink(path)
                elif blockfile.is_pack(name) and (pack := self._directory(path, page)):
                    found.append((pack[0], path, pack[1], pack[2]))
        found.sort(key=lambda pack: pack[:2])
        # Built without the lock, and swapped in under it with what this mount wrote meanwhile,
        # so a large cache is never indexed while the FUSE loop waits.
        scanned = DiskIndex()
        for _, path, size, entries in found:
            scanned.add(path, size, entries)
        with self._lock:
            for path, (size, entries) in self._index.lru.items():
                scanned.add(path, size, entries)
            self._index = scanned

    def _directory(self, path: str, page: mmap.mmap) -> tuple[float, int, list[Entry]] | None:
        """(mtime, size, entries) of a pack from its directory page; a damaged pack is removed."""
        try:
            fd = self.io.open(Path(path), os.O_RDONLY)
        except OSError:  # evicted meanwhile by another mount
            return None
        try:
            st = os.fstat(fd)
            entries = None
            # A pack is whole pages: any other size is damage (and an unaligned O_DIRECT read)
            if st.st_size >= 2 * blockfile.PAGE and st.st_size % blockfile.PAGE == 0 and \
                    self.io.pread(fd, memoryview(page), st.st_size - blockfile.PAGE) == \
                    blockfile.PAGE:
                entries = blockfile.read_directory(page, st.st_size)
        except OSError as exc:
            self._warn("cannot read cached pack %s: %s", path, exc)
            return None
        finally:
            os.close(fd)
        if entries is None:
            self.corrupt += 1
            log.warning("cached pack %s is damaged; removing it", path)
            _unlink(path)
            return None
        return st.st_mtime, st.st_size, entries

    # -- reading --------------------------------------------------------------------------------

    def get(self, obj: ObjectRef, index: int, length: int) -> bytes | None:
        return self.get_many(obj, {index: length}).get(index)

    def get_many(self, obj: ObjectRef, lengths: dict[int, int]) -> dict[int, bytes]:
        """Those of the blocks asked for (block: its length) found intact on disk. Consecutive
        blocks in consecutive slots of a pack come in one read, which the disk serves as one
        large request."""
        digest = blockfile.digest(obj.bucket, obj.key)
        groups: list[tuple[Path, list[tuple[int, Entry]]]] = []
        for i in sorted(lengths):
            where = self._locate(digest, i)
            if where is None or where[1].length != lengths[i]:
                continue
            # The slot's trailer must name the block asked for, whatever the index says.
            path, entry = where[0], where[1]._replace(digest=digest, index=i)
            if groups and groups[-1][0] == path:
                last, previous = groups[-1][1][-1]
                if last == i - 1 and previous.offset + blockfile.slot(previous.length) \
                        == entry.offset:
                    groups[-1][1].append((i, entry))
                    continue
            groups.append((path, [(i, entry)]))
        found: dict[int, bytes] = {}
        for path, members in groups:
            found.update(self._read_pack(path, members))
        return found

    def _read_pack(self, path: Path, members: list[tuple[int, Entry]]) -> dict[int, bytes]:
        """The blocks of consecutive slots of a pack that are intact; a pack with a damaged
        one is removed, and its blocks fetched again."""
        try:
            fd = self.io.open(path, os.O_RDONLY)
        except FileNotFoundError:  # evicted by another mount, or `idcfs cache clear`
            self._forget(str(path))
            return {}
        except OSError as exc:
            self._warn("cannot read cached pack %s: %s", path, exc)
            return {}
        entries = [entry for _, entry in members]
        try:
            room = sum(blockfile.slot(e.length) for e in entries)
            with self._buffers.lend() as buf:
                view = memoryview(buf)[:room]
                datas = (blockfile.verified(view, entries)
                         if self.io.pread(fd, view, entries[0].offset) == room
                         else [None] * len(entries))
            if any(datas) and time.time() - os.fstat(fd).st_mtime > TOUCH_EVERY:
                os.utime(fd)  # the order the start-up scan restores the LRU in
        except OSError as exc:
            self._warn("cannot read cached pack %s: %s", path, exc)
            return {}
        finally:
            os.close(fd)
        found = {i: data for (i, _), data in zip(members, datas) if data is not None}
        if len(found) < len(members):
            self.corrupt += 1
            log.warning("cached pack %s is damaged; fetching its blocks again", path)
            self._forget(str(path))
            _unlink(path)
            return {}
        with self._lock:
            self._index.touch(str(path))
        return found

    # -- writing --------------------------------------------------------------------------------

    def fits(self, room: int, blocks: int, more_room: int, more_blocks: int) -> bool:
        """Whether a pack whose slots take room bytes for blocks blocks has space for
        more_blocks more in more_room bytes of slots."""
        return (room + more_room <= self.capacity
                and blocks + more_blocks <= blockfile.MAX_ENTRIES)

    def put(self, obj: ObjectRef, index: int, data: bytes) -> None:
        """Store one block."""
        self.put_objects([(obj, {index: data})])

    def put_blocks(self, obj: ObjectRef, blocks: dict[int, bytes]) -> None:
        """Store blocks of one object."""
        self.put_objects([(obj, blocks)])

    def put_objects(self, items: Sequence[tuple[ObjectRef, dict[int, bytes]]]) -> None:
        """Store the blocks of these objects in as few packs as hold them, each object's blocks
        in order, in consecutive slots."""
        pack: list[tuple[str, int, bytes]] = []
        room = 0
        for obj, blocks in items:
            digest = blockfile.digest(obj.bucket, obj.key)
            for i in sorted(blocks):
                size = blockfile.slot(len(blocks[i]))
                if pack and not self.fits(room, len(pack), size, 1):
                    self._put(pack)
                    pack, room = [], 0
                pack.append((digest, i, blocks[i]))
                room += size
        if pack:
            self._put(pack)

    def _put(self, pack: list[tuple[str, int, bytes]]) -> None:
        """Store a pack of the blocks not on disk yet; a full or unwritable disk only costs the
        caching, with a warning."""
        with self._lock:
            pack = [block for block in pack if self._index.locate(block[0], block[1]) is None]
            size = blockfile.pack_size([len(data) for _, _, data in pack])
            if not pack or size > self.limit:
                return
            self._reserved += size
            self._puts += 1
            check_space = self._puts % SPACE_CHECK_EVERY == 0
        try:
            if check_space:
                self._keep_disk_free()
            self._evict()
            path, entries = self._write(pack)
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
            self._index.add(str(path), size, entries)

    def _write(self, pack: list[tuple[str, int, bytes]]) -> tuple[Path, list[Entry]]:
        number = next(self._numbers)
        folder = self.root / f"{number & 0xFF:02x}"
        path = folder / f"{self._unique}{number:x}{blockfile.SUFFIX}"
        tmp = folder / f".tmp-{self._unique}{number:x}"
        try:
            fd = self.io.create(tmp)
        except FileNotFoundError:  # not made yet by the scan, or `idcfs cache clear` removed it
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = self.io.create(tmp)
        try:
            with self._buffers.lend() as buf:
                length, entries = blockfile.write_pack(buf, pack)
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
        return path, entries

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
        """Unlink the least recently used packs until what is on disk fits the bound. Victims
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
        """Blocks on disk."""
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
