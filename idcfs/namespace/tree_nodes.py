"""The IDC tree as entries: directories from the index, files from the series listings, bytes
through the reader. Every request to the object store runs within the mount's time budget."""

from __future__ import annotations

from collections.abc import Awaitable, Iterator
from typing import TypeVar

import trio

from ..index import naming
from ..errors import SourceError
from ..failures import FailureLog
from ..listings import Listings
from .. import inodes
from ..dicom import has_offset_table
from ..index.naming import NAME_MAX
from ..objects import ObjectRef
from ..prefetch import Reader, Stream
from ..index.tree import FILE, Listing, Node, SeriesRef, Tree
from .entry import Entry, IsADirectory, NameTooLong, NotADirectory, NotFound, Unavailable

T = TypeVar("T")

# After a failed readahead request the kernel at once asks again, on the same open file, for the
# page being read; for this long, a read of that file inside the range that just failed fails at
# once instead of taking a second budget. A new open tries again.
FAILED_READ_MEMORY = 1.0


class TreeNodes:
    def __init__(self, tree: Tree, listings: Listings, reader: Reader, budget: float,
                 failures: FailureLog) -> None:
        self.tree = tree
        self.listings = listings
        self.reader = reader
        self.budget = budget
        self.failures = failures
        self.errors = 0

    # -- helpers ----------------------------------------------------------------------------

    def node(self, inode: int) -> Node:
        node = self.tree.node(inode)
        if node is None:
            raise NotFound
        return node

    def entry(self, node: Node, size: int = 0) -> Entry:
        if not node.is_dir:
            return Entry(node.inode, False, size=size)
        return Entry(node.inode, True, subdirs=self.tree.child_count(node))

    async def within_budget(self, work: Awaitable[T], what: str) -> T:
        """Run work, or fail: on an object store error, or past the request budget (a stalled
        connection must not hang the program that reads)."""
        try:
            with trio.fail_after(self.budget):
                return await work
        except SourceError as exc:
            self.errors += 1
            self.failures.log(exc)
            raise Unavailable from exc
        except trio.TooSlowError as exc:
            self.errors += 1
            self.failures.log(TimeoutError(f"{what}: no answer within {self.budget:g} s"))
            raise Unavailable from exc

    async def _listing(self, row: int) -> tuple[SeriesRef, Listing]:
        ref = self.tree.series(row)
        listing = self.listings.cached(ref)
        if listing is None:
            listing = await self.within_budget(self.listings.get(ref), f"listing {ref.prefix}")
        return ref, listing

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

    async def _file_listing(self, node: Node) -> tuple[SeriesRef, Listing]:
        """The listing a file's inode points into (NotFound if the inode points past its end)."""
        ref, listing = await self._listing(node.index)
        if node.file >= len(listing.names):
            raise NotFound
        return ref, listing

    # -- the interface ----------------------------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes) -> Entry:
        if len(name) > NAME_MAX:  # FUSE passes names up to 1024 bytes; none can exist here
            raise NameTooLong
        parent = self.node(parent_inode)
        if not parent.is_dir:
            raise NotADirectory
        if self.tree.is_leaf(parent):
            value = naming.decode(name)
            for row, listing in await self._leaf(parent):
                i = None if value is None else listing.find(value)
                if i is not None:
                    return self.entry(Node(FILE, row, i), listing.sizes[i])
            raise NotFound
        child = self.tree.lookup(parent, name)
        if child is None:
            raise NotFound
        return self.entry(child)

    async def getattr(self, inode: int) -> Entry:
        node = self.node(inode)
        if not node.is_dir:
            _, listing = await self._file_listing(node)
            return self.entry(node, listing.sizes[node.file])
        return self.entry(node)

    def opendir(self, inode: int) -> None:
        if not self.node(inode).is_dir:
            raise NotADirectory

    async def entries(self, inode: int, start: int) -> Iterator[tuple[str, Entry]]:
        """(name, entry) of a directory's children from position start, in a fixed order."""
        node = self.node(inode)
        if self.tree.is_leaf(node):
            return self._files(await self._leaf(node), start)
        return ((name, self.entry(child)) for name, child in self.tree.children(node, start))

    def _files(self, leaf: list[tuple[int, Listing]], start: int) -> Iterator[tuple[str, Entry]]:
        """A leaf's files from position start, series after series."""
        position = 0
        for row, listing in leaf:
            count = len(listing.names)
            names, sizes = listing.names, listing.sizes
            for i in range(max(0, start - position), count):
                yield naming.encode(names[i]), Entry(inodes.file(row, i), False, size=sizes[i])
            position += count

    async def xattrs(self, inode: int) -> dict[str, str]:
        node = self.node(inode)
        if node.is_dir:
            return self.tree.metadata(node)
        _, listing = await self._file_listing(node)
        return self.tree.metadata(node, listing.names[node.file])

    async def open(self, inode: int) -> Stream:
        node = self.node(inode)
        if node.is_dir:
            raise IsADirectory
        ref, listing = await self._file_listing(node)

        def object_at(i: int) -> ObjectRef:
            return ObjectRef(ref.bucket, ref.prefix + listing.names[i], listing.sizes[i],
                             listing.etag(i))

        stream = self.reader.stream(object_at(node.file), ref.modality)
        self.reader.opened(ref, node.file, listing.sizes, ref.modality, object_at)
        if stream.policy.tiled:
            await self._choose_page_cache(stream)
        return stream

    async def _choose_page_cache(self, stream: Stream) -> None:
        """A slide's file with an offset table is read past the kernel's page cache: its reader
        reads tiles where the table says, and the kernel's readahead of each (up to 4 MiB of a
        mount as root) fetched several times the blocks a region needs. One without a table is
        walked fragment by fragment in small reads, which the page cache gathers into large
        ones. Nothing is read ahead of a reader that reads by the table: it knows where the tiles
        are. Telling them apart needs the file's header: its first block, which the reader asks
        for next anyway."""
        head = await self.within_budget(
            self.reader.cache.read(stream.obj, 0, self.reader.cache.block_size),
            f"reading {stream.obj.key} at 0")
        stream.direct = has_offset_table(head) is True

    async def read(self, stream: Stream, offset: int, size: int) -> bytes:
        if stream.failed_recently(offset, size, FAILED_READ_MEMORY, trio.current_time()):
            self.errors += 1
            raise Unavailable
        data = self.reader.read_now(stream, offset, size)
        if data is not None:
            return data
        try:
            return await self.within_budget(self.reader.read(stream, offset, size),
                                            f"reading {stream.obj.key} at {offset}")
        except Unavailable:
            stream.remember_failure(offset, size, trio.current_time())
            raise

    def usage(self) -> tuple[int, int]:
        """(bytes, entries) of everything shown, as the index gives them."""
        meta = self.tree.files.meta
        return int(meta.get("bytes", 0)), int(meta.get("files", 0)) + int(meta.get("rows", 0))
