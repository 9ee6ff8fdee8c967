"""Entries as the kernel's attributes: modes, owner, times, and how long it may keep them."""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import dataclass

import pyfuse3

from ..namespace.entry import Entry
from ..objects import BLOCK_SIZE

IMMUTABLE_TIMEOUT = 24 * 3600.0


@dataclass(frozen=True)
class Attributes:
    """Every entry's owner, mode mask and time: directories 0555, files 0444 (less umask), the
    release date of the data shown as every time, so times are the same on every machine."""

    uid: int
    gid: int
    umask: int
    timestamp_ns: int

    def of(self, entry: Entry) -> pyfuse3.EntryAttributes:
        return self.fill(pyfuse3.EntryAttributes(), entry)

    def fill(self, attr: pyfuse3.EntryAttributes, entry: Entry) -> pyfuse3.EntryAttributes:
        """attr made to describe entry (every field set): a listing of 91,980 files reuses one
        instead of making one per entry."""
        attr.st_ino = entry.inode
        if entry.is_dir:
            attr.st_mode = stat.S_IFDIR | (0o555 & ~self.umask)
            attr.st_nlink = 2 + entry.subdirs
            attr.st_size = attr.st_blocks = 0
        else:
            attr.st_mode = stat.S_IFREG | (0o444 & ~self.umask)
            attr.st_nlink = 1
            attr.st_size = entry.size
            attr.st_blocks = (entry.size + 511) // 512
        attr.st_blksize = BLOCK_SIZE
        attr.st_uid, attr.st_gid = self.uid, self.gid
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = self.timestamp_ns
        timeout = 0 if entry.volatile else IMMUTABLE_TIMEOUT
        attr.entry_timeout = attr.attr_timeout = timeout
        return attr

    def lister(self) -> Callable[[Entry], pyfuse3.EntryAttributes]:
        """fill for the entries of one directory listing, one after another, into one
        EntryAttributes (readdir_reply copies it at once). Between two files that are not
        volatile only the inode and the size differ, so only those are set: setting every
        field again took ~1.1 µs an entry, ~0.1 s of listing 91,980 files, against ~0.5 µs."""
        attr = pyfuse3.EntryAttributes()
        plain_file = False

        def fill(entry: Entry) -> pyfuse3.EntryAttributes:
            nonlocal plain_file
            if plain_file and not entry.is_dir and not entry.volatile:
                attr.st_ino, attr.st_size = entry.inode, entry.size
                attr.st_blocks = (entry.size + 511) // 512
                return attr
            plain_file = not entry.is_dir and not entry.volatile
            return self.fill(attr, entry)

        return fill
