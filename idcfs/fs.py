"""pyfuse3 operations: thin translation between the kernel's requests and the layers below.

This is the only module that speaks FUSE: it turns tree nodes into attributes, missing nodes into
ENOENT, failed object reads into EIO (logged with their cause), and any attempt to change
anything into EROFS. Everything it serves is immutable, and it tells the kernel so (long entry and
attribute timeouts, keep_cache) so that repeated lookups and reads never reach the daemon.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pyfuse3
import trio

from . import about, naming
from .objects import BLOCK_SIZE, ObjectRef
from .listings import Listings
from .naming import NAME_MAX
from .prefetch import Reader, Stream
from .errors import SourceError
from .tree import FILE, ROOT, Listing, Node, SeriesRef, Tree

log = logging.getLogger(__name__)

IMMUTABLE_TIMEOUT = 24 * 3600.0
XATTR_PREFIX = "user.idc."
# After a failed readahead request the kernel at once asks again, on the same open file, for the
# page being read; for this long, a read of that file inside the range that just failed fails at
# once instead of taking a second budget. A new open tries again.
FAILED_READ_MEMORY = 1.0
ABOUT_INODE = 0x7E << 56  # above any layout level's depth (tree.FILE is 0x7F)


class FailureLog:
    """Each failed request is logged once with its cause, but a storm (an endpoint gone while
    thousands of reads fail) is logged as a count every few seconds, not line by line."""

    def __init__(self, burst: int = 10, period: float = 10.0) -> None:
        self.burst, self.period = burst, period
        self._window_start = 0.0
        self._in_window = 0
        self._suppressed = 0

    def log(self, exc: Exception, unexpected: str | None = None) -> None:
        """Log a failed request with its cause; unexpected names what failed for a reason
        nobody foresaw, logged with its traceback."""
        now = time.monotonic()
        if now - self._window_start >= self.period:
            if self._suppressed:
                log.error("%d more failed requests in the last %.0f s were not logged one by one",
                          self._suppressed, self.period)
            self._window_start, self._in_window, self._suppressed = now, 0, 0
        if self._in_window < self.burst:
            self._in_window += 1
            if unexpected:
                log.error("%s: %s: %s", unexpected, type(exc).__name__, exc, exc_info=exc)
            else:
                log.error("%s", exc)
        else:
            self._suppressed += 1


H = TypeVar("H")


def handler(method: Callable[..., Awaitable[H]]) -> Callable[..., Awaitable[H]]:
    """The error boundary of one FUSE handler. pyfuse3 lets a handler raise only FUSEError:
    anything else ends pyfuse3.main() and leaves every user of the mount with "Transport
    endpoint is not connected". So any other exception, a bug or an answer nobody foresaw,
    becomes EIO for this request, is logged with its traceback, and the mount serves on."""

    @functools.wraps(method)
    async def guarded(self: Operations, *args):
        try:
            return await method(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:  # noqa: BLE001 - this is the boundary
            self.errors += 1
            self.unexpected += 1
            self._failures.log(exc, f"{method.__name__} failed unexpectedly")
            raise pyfuse3.FUSEError(errno.EIO) from None

    return guarded


class Operations(pyfuse3.Operations):
    """A read-only view of the tree; file bytes come through the reader (cache and prefetch)."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, tree: Tree, listings: Listings, reader: Reader,
                 info: about.About | None = None, owner: tuple[int, int] | None = None,
                 umask: int = 0, budget: float = 60.0) -> None:
        super().__init__()
        self.tree = tree
        self.listings = listings
        self.reader = reader
        self.about = info
        self.errors = 0
        self.unexpected = 0
        self.uid, self.gid = owner if owner is not None else (os.getuid(), os.getgid())
        self.umask = umask
        self.budget = budget
        self._failures = FailureLog()
        self._open: dict[int, Stream | bytes] = {}
        self._next_fh = 1

    # -- attributes, in one place ------------------------------------------------------------

    def _attributes(self, node: Node, size: int = 0) -> pyfuse3.EntryAttributes:
        if not node.is_dir:
            return self._stat(node.inode, False, size, 0)
        subdirs = self.tree.child_count(node)
        if node.depth == 0 and self.about is not None:
            subdirs += 1
        return self._stat(node.inode, True, 0, subdirs)

    def _stat(self, inode: int, is_dir: bool, size: int, subdirs: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        if is_dir:
            attr.st_mode = stat.S_IFDIR | (0o555 & ~self.umask)
            attr.st_nlink = 2 + subdirs
        else:
            attr.st_mode = stat.S_IFREG | (0o444 & ~self.umask)
            attr.st_nlink = 1
            attr.st_size = size
            attr.st_blocks = (size + 511) // 512
        attr.st_blksize = BLOCK_SIZE
        attr.st_uid, attr.st_gid = self.uid, self.gid
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = self.tree.timestamp_ns
        attr.entry_timeout = attr.attr_timeout = IMMUTABLE_TIMEOUT
        return attr

    def _about_attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        """/.idcfs and its files: a directory and read-only files, sized as they are now."""
        name = self._about_name(inode)
        attr = self._stat(inode, name == "", len(self.about.content(name)) if name else 0, 0)
        attr.entry_timeout = attr.attr_timeout = 0
        return attr

    def _about_name(self, inode: int) -> str | None:
        """'' for /.idcfs, a file's name for its files, None for any other inode."""
        if self.about is None or inode >> 56 != ABOUT_INODE >> 56:
            return None
        i = inode & 0xFF
        return "" if i == 0 else about.FILES[i - 1] if i <= len(about.FILES) else None

    def _node(self, inode: int) -> Node:
        node = self.tree.node(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    async def _listing(self, row: int):
        ref = self.tree.series(row)
        return ref, await self._within_budget(self.listings.get(ref), f"listing {ref.prefix}")

    async def _within_budget(self, work, what: str):
        """Run work, or fail with EIO: on an object store error, or past the request budget (a
        stalled connection must not hang the program that reads)."""
        try:
            with trio.fail_after(self.budget):
                return await work
        except SourceError as exc:
            self.errors += 1
            self._failures.log(exc)
            raise pyfuse3.FUSEError(errno.EIO) from exc
        except trio.TooSlowError as exc:
            self.errors += 1
            self._failures.log(TimeoutError(f"{what}: no answer within {self.budget:g} s"))
            raise pyfuse3.FUSEError(errno.EIO) from exc

    async def _leaf(self, node: Node) -> list[tuple[int, Listing]]:
        """(row, listing) of every series in a leaf directory, listed concurrently."""
        first, end = self.tree.rows_of(node)
        if end - first == 1:
            return [(first, (await self._listing(first))[1])]
        found: dict[int, Listing] = {}

        async def one(row: int) -> None:
            found[row] = (await self._listing(row))[1]

        async with trio.open_nursery() as nursery:
            for row in range(first, end):
                nursery.start_soon(one, row)
        return [(row, found[row]) for row in range(first, end)]

    def _files(self, leaf: list[tuple[int, Listing]], start: int):
        """(name, attributes) of a leaf's files from position start, series after series."""
        position = 0
        for row, listing in leaf:
            count = len(listing.names)
            for i in range(max(0, start - position), count):
                yield (naming.encode(listing.names[i]),
                       self._attributes(Node(FILE, row, i), listing.sizes[i]))
            position += count

    async def _file_listing(self, node: Node) -> tuple[SeriesRef, Listing]:
        """The listing a file's inode points into (ENOENT if the inode points past its end)."""
        ref, listing = await self._listing(node.index)
        if node.file >= len(listing.names):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return ref, listing

    # -- namespace --------------------------------------------------------------------------

    @handler
    async def lookup(self, parent_inode, name, ctx=None):
        if len(name) > NAME_MAX:  # FUSE passes names up to 1024 bytes; none can exist here
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        if self._about_name(parent_inode) == "":
            if name.decode(errors="replace") not in about.FILES:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._about_attributes(ABOUT_INODE + 1 + about.FILES.index(name.decode()))
        if parent_inode == ROOT.inode and self.about is not None and name == about.DIRECTORY.encode():
            return self._about_attributes(ABOUT_INODE)
        parent = self._node(parent_inode)
        if not parent.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if self.tree.is_leaf(parent):
            value = naming.decode(name)
            for row, listing in await self._leaf(parent):
                i = None if value is None else listing.find(value)
                if i is not None:
                    return self._attributes(Node(FILE, row, i), listing.sizes[i])
            raise pyfuse3.FUSEError(errno.ENOENT)
        child = self.tree.lookup(parent, name)
        if child is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attributes(child)

    @handler
    async def getattr(self, inode, ctx=None):
        if self._about_name(inode) is not None:
            return self._about_attributes(inode)
        node = self._node(inode)
        if not node.is_dir:
            _, listing = await self._file_listing(node)
            return self._attributes(node, listing.sizes[node.file])
        return self._attributes(node)

    @handler
    async def forget(self, inode_list):
        """Inodes are derived from positions, so there is nothing to free."""

    @handler
    async def opendir(self, inode, ctx):
        if self._about_name(inode) == "":
            return inode
        if not self._node(inode).is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @handler
    async def readdir(self, fh, start_id, token):
        if self._about_name(fh) == "":
            for i in range(start_id, len(about.FILES)):
                attr = self._about_attributes(ABOUT_INODE + 1 + i)
                if not pyfuse3.readdir_reply(token, about.FILES[i].encode(), attr, i + 1):
                    return
            return
        node = self._node(fh)
        shift = 0
        if node.depth == 0 and self.about is not None:
            # /.idcfs comes first; the root's own entries follow, one position further on.
            if start_id == 0:
                attr = self._about_attributes(ABOUT_INODE)
                if not pyfuse3.readdir_reply(token, about.DIRECTORY.encode(), attr, 1):
                    return
                start_id = 1
            shift = 1
        if self.tree.is_leaf(node):
            entries = self._files(await self._leaf(node), start_id - shift)
        else:
            entries = ((name, self._attributes(child))
                       for name, child in self.tree.children(node, start_id - shift))
        for i, (name, attr) in enumerate(entries, start_id):
            if not pyfuse3.readdir_reply(token, name.encode(), attr, i + 1):
                return

    async def _metadata(self, inode: int) -> dict[str, str]:
        if self._about_name(inode) is not None:
            return {}
        node = self._node(inode)
        if node.is_dir:
            return self.tree.metadata(node)
        _, listing = await self._file_listing(node)
        return self.tree.metadata(node, listing.names[node.file])

    @handler
    async def listxattr(self, inode, ctx):
        return [f"{XATTR_PREFIX}{key}".encode() for key in await self._metadata(inode)]

    @handler
    async def getxattr(self, inode, name, ctx):
        key = name.decode(errors="replace").removeprefix(XATTR_PREFIX)
        value = (await self._metadata(inode)).get(key) if name.startswith(XATTR_PREFIX.encode()) else None
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value.encode()

    @handler
    async def releasedir(self, fh):
        """Directory handles are inode numbers; nothing to release."""

    @handler
    async def statfs(self, ctx):
        meta = self.tree.files.meta
        st = pyfuse3.StatvfsData()
        st.f_bsize = st.f_frsize = BLOCK_SIZE
        st.f_blocks = -(-int(meta.get("bytes", 0)) // BLOCK_SIZE)
        st.f_bfree = st.f_bavail = 0
        st.f_files = int(meta.get("files", 0)) + int(meta.get("rows", 0))
        st.f_ffree = st.f_favail = 0
        st.f_namemax = NAME_MAX
        return st

    # -- reading ----------------------------------------------------------------------------

    @handler
    async def open(self, inode, flags, ctx):
        name = self._about_name(inode)
        node = None if name else self._node(inode)
        if node is not None and node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        if name:
            return pyfuse3.FileInfo(fh=self._handle(self.about.content(name)), direct_io=True)
        ref, listing = await self._file_listing(node)

        def object_at(i: int) -> ObjectRef:
            return ObjectRef(ref.bucket, ref.prefix + listing.names[i], listing.sizes[i],
                             listing.etag(i))

        fh = self._handle(Stream(object_at(node.file)))
        self.reader.opened(ref, node.file, listing.sizes, object_at)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    def _handle(self, opened: Stream | bytes) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._open[fh] = opened
        return fh

    @handler
    async def read(self, fh, off, size):
        stream = self._open.get(fh)
        if stream is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if isinstance(stream, bytes):
            return stream[off:off + size]
        if stream.failed_recently(off, size, FAILED_READ_MEMORY):
            self.errors += 1
            raise pyfuse3.FUSEError(errno.EIO)
        try:
            return await self._within_budget(self.reader.read(stream, off, size),
                                             f"reading {stream.obj.key} at {off}")
        except pyfuse3.FUSEError:
            stream.remember_failure(off, size)
            raise

    @handler
    async def release(self, fh):
        self._open.pop(fh, None)

    @handler
    async def access(self, inode, mode, ctx):
        if self._about_name(inode) is None:
            self._node(inode)
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)
        return True

    # -- everything that would change the tree ---------------------------------------------

    async def _read_only(self, *args, **kwargs):
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _read_only
    create = write = setxattr = removexattr = _read_only
