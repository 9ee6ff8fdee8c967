"""What the filesystem's core answers: entries, and the failures a caller turns into errnos."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Entry:
    """A directory or a file as the kernel sees it. volatile: its size or content changes
    (/.idcfs), so the kernel must not keep its attributes."""

    inode: int
    is_dir: bool
    size: int = 0
    subdirs: int = 0
    volatile: bool = False


class NotFound(Exception):
    """No such entry."""


class NotADirectory(Exception):
    """Looked up or listed inside a file."""


class IsADirectory(Exception):
    """Opened a directory as a file."""


class NameTooLong(Exception):
    """A name longer than any name in the tree can be."""


class ReadOnly(Exception):
    """Asked to change something: nothing here can change."""


class Unavailable(Exception):
    """The object store could not give what was asked for (already logged, with its cause)."""


class NoAttribute(Exception):
    """No such extended attribute."""
