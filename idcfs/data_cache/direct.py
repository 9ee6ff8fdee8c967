"""Reading and writing packs of blocks past the page cache (O_DIRECT), and the aligned buffers that
needs.

On these machines copying a block into the page cache costs more CPU than fetching it (1 GiB:
1.5-2.9 s of system time buffered, 0.35 s direct), and reading one back through it costs ~1 s of
system time per GiB, for pages the kernel already keeps for the mount. A block just fetched is
in the memory cache anyway. Where the filesystem refuses O_DIRECT (some network filesystems, and
tmpfs before Linux 6.6, with EINVAL, at open or only at the first write) files are read and
written normally from then on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from .blockfile import PAGE, RUN_BLOCKS

# Disk reads and writes of packs at once, each with a page-aligned buffer of a pack's size.
BUFFERS = 2


class BufferPool:
    """Page-aligned buffers for a whole pack (its blocks and directory page), lent for the time
    of one read or write; a thread that finds none free waits for one.

    A fixed few, not one per thread or per read: readers run in whichever of up to 40 worker
    threads is free, and every buffer ever made stays resident (8 MiB each). Two, with the
    threads waiting for them, re-read 1 GiB from the disk cache as fast as eight did. The
    mount's one disk writer (writeback.py) holds at most one, so reads always have the other.
    """

    def __init__(self, stride: int, count: int = BUFFERS) -> None:
        self._size = RUN_BLOCKS * stride + PAGE
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()
        self._available = threading.Semaphore(count)

    @contextlib.contextmanager
    def lend(self) -> Iterator[mmap.mmap]:
        with self._available:
            with self._lock:
                buf = self._free.pop() if self._free else mmap.mmap(-1, self._size)
            try:
                yield buf
            finally:
                with self._lock:
                    self._free.append(buf)


class DirectIO:
    """Opens, reads and writes with O_DIRECT while the filesystem takes it."""

    def __init__(self) -> None:
        self.direct = True

    def open(self, path: Path, flags: int) -> int:
        if self.direct:
            try:
                return os.open(path, flags | os.O_DIRECT, 0o600)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.direct = False
        return os.open(path, flags, 0o600)

    def create(self, path: Path) -> int:
        """A new file, opened for writing (each system call in a writer thread gives up and
        retakes the GIL the FUSE loop and the S3 client wait for: one open, no fcntl)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        direct = self.direct
        try:
            return self.open(path, flags)
        except FileExistsError:
            if not direct or self.direct:
                raise
            # O_DIRECT was refused just now, after the kernel had made the file: ours, and empty.
            return os.open(path, flags & ~(os.O_CREAT | os.O_EXCL))

    def pread(self, fd: int, view: memoryview, offset: int) -> int:
        try:
            return os.preadv(fd, [view], offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.direct = False
            _set_direct(fd, False)
            return os.preadv(fd, [view], offset)

    def write(self, fd: int, image: memoryview) -> None:
        """Write the file's image (whole pages)."""
        if self.direct and self._write_direct(fd, image):
            return
        with os.fdopen(fd, "wb", closefd=False) as out:
            out.write(image)

    def _write_direct(self, fd: int, image: memoryview) -> bool:
        """False where the filesystem opened with O_DIRECT but refuses the write."""
        try:
            written = os.write(fd, image)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.direct = False
            _set_direct(fd, False)
            os.lseek(fd, 0, os.SEEK_SET)
            return False
        if written != len(image):
            raise OSError(errno.EIO, f"short write to the disk cache ({written} of {len(image)})")
        return True


def _set_direct(fd: int, on: bool) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
