"""The filesystem's core: what is where, as entries, without FUSE.

The tree (tree_nodes.py) with the /.idcfs directory (about.py) in its root, behind one
interface: lookup, getattr, opendir, entries, xattrs, open, read. Failures are the exceptions of
entry.py; fs/ turns them into errnos. Nothing here imports pyfuse3.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

from .. import inodes
from ..prefetch import Stream
from .about import DIRECTORY, AboutNodes
from .entry import Entry
from .tree_nodes import TreeNodes

Handle = Stream | bytes  # an open file: a stream of an object, or the bytes of an /.idcfs file


class Namespace:
    def __init__(self, tree: TreeNodes, about: AboutNodes | None = None) -> None:
        self.tree = tree
        self.about = about

    def _space(self, inode: int) -> TreeNodes | AboutNodes:
        return self.about if self.about is not None and self.about.owns(inode) else self.tree

    async def lookup(self, parent_inode: int, name: bytes) -> Entry:
        if parent_inode == inodes.ROOT and self.about is not None and name == DIRECTORY.encode():
            return self.about.directory
        return await self._space(parent_inode).lookup(parent_inode, name)

    async def getattr(self, inode: int) -> Entry:
        entry = await self._space(inode).getattr(inode)
        if inode == inodes.ROOT and self.about is not None:
            entry = dataclasses.replace(entry, subdirs=entry.subdirs + 1)
        return entry

    def opendir(self, inode: int) -> None:
        self._space(inode).opendir(inode)

    async def entries(self, inode: int, start: int) -> Iterator[tuple[str, Entry]]:
        """A directory's (name, entry) from position start; /.idcfs comes first in the root."""
        if inode != inodes.ROOT or self.about is None:
            return await self._space(inode).entries(inode, start)
        own = await self.tree.entries(inode, max(0, start - 1))
        return itertools.chain([(DIRECTORY, self.about.directory)] if start == 0 else [], own)

    async def xattrs(self, inode: int) -> dict[str, str]:
        return await self._space(inode).xattrs(inode)

    async def open(self, inode: int) -> Handle:
        return await self._space(inode).open(inode)

    async def read(self, handle: Handle, offset: int, size: int) -> bytes:
        if isinstance(handle, bytes):
            return handle[offset:offset + size]
        return await self.tree.read(handle, offset, size)

    def usage(self) -> tuple[int, int]:
        return self.tree.usage()
