"""pyfuse3 operations: thin translation between the kernel's requests and the namespace.

This is the only module that speaks FUSE: it turns entries into attributes and the namespace's
failures into errnos (a missing node ENOENT, an object store that cannot answer EIO), refuses
anything that would change something with EROFS, and is the error boundary: no exception but
FUSEError ever reaches pyfuse3. Everything it serves is immutable, and it tells the kernel so
(long entry and attribute timeouts, keep_cache) so that repeated lookups and reads never reach
the daemon.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pyfuse3

from ..failures import FailureLog
from ..namespace import Handle, Namespace
from ..namespace.entry import (IsADirectory, NameTooLong, NoAttribute, NotADirectory, NotFound,
                               ReadOnly, Unavailable)
from ..index.naming import NAME_MAX
from ..objects import BLOCK_SIZE
from ..prefetch import Stream
from .attributes import Attributes

XATTR_PREFIX = "user.idc."

ERRNOS: dict[type[Exception], int] = {
    NotFound: errno.ENOENT,
    NotADirectory: errno.ENOTDIR,
    IsADirectory: errno.EISDIR,
    NameTooLong: errno.ENAMETOOLONG,
    ReadOnly: errno.EROFS,
    Unavailable: errno.EIO,
    NoAttribute: pyfuse3.ENOATTR,
}

H = TypeVar("H")


def handler(method: Callable[..., Awaitable[H]]) -> Callable[..., Awaitable[H]]:
    """The error boundary of one FUSE handler. pyfuse3 lets a handler raise only FUSEError:
    anything else ends pyfuse3.main() and leaves every user of the mount with "Transport
    endpoint is not connected". The namespace's failures become their errnos; any other
    exception, a bug or an answer nobody foresaw, becomes EIO for this request, is logged with
    its traceback, and the mount serves on."""

    @functools.wraps(method)
    async def guarded(self: Operations, *args):
        try:
            return await method(self, *args)
        except pyfuse3.FUSEError:
            raise
        except tuple(ERRNOS) as exc:
            raise pyfuse3.FUSEError(ERRNOS[type(exc)]) from None
        except Exception as exc:  # noqa: BLE001 - this is the boundary
            self.unexpected += 1
            self.failures.log(exc, f"{method.__name__} failed unexpectedly")
            raise pyfuse3.FUSEError(errno.EIO) from None

    return guarded


class Operations(pyfuse3.Operations):
    """A read-only view of the namespace."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, namespace: Namespace, attributes: Attributes,
                 failures: FailureLog | None = None) -> None:
        super().__init__()
        self.namespace = namespace
        self.attributes = attributes
        self.failures = failures or namespace.tree.failures
        self.unexpected = 0
        self._open: dict[int, Handle] = {}
        self._next_fh = 1

    @property
    def errors(self) -> int:
        """Requests that failed: the object store's failures and the unexpected ones."""
        return self.namespace.tree.errors + self.unexpected

    # -- namespace --------------------------------------------------------------------------

    @handler
    async def lookup(self, parent_inode, name, ctx=None):
        return self.attributes.of(await self.namespace.lookup(parent_inode, name))

    @handler
    async def getattr(self, inode, ctx=None):
        return self.attributes.of(await self.namespace.getattr(inode))

    @handler
    async def forget(self, inode_list):
        """Inodes are derived from positions, so there is nothing to free."""

    @handler
    async def opendir(self, inode, ctx):
        self.namespace.opendir(inode)
        return inode

    @handler
    async def readdir(self, fh, start_id, token):
        fill = self.attributes.lister()
        for i, (name, entry) in enumerate(await self.namespace.entries(fh, start_id), start_id):
            if not pyfuse3.readdir_reply(token, name.encode(), fill(entry), i + 1):
                return

    @handler
    async def releasedir(self, fh):
        """Directory handles are inode numbers; nothing to release."""

    @handler
    async def listxattr(self, inode, ctx):
        return [f"{XATTR_PREFIX}{key}".encode() for key in await self.namespace.xattrs(inode)]

    @handler
    async def getxattr(self, inode, name, ctx):
        if not name.startswith(XATTR_PREFIX.encode()):
            raise NoAttribute
        value = (await self.namespace.xattrs(inode)).get(
            name.decode(errors="replace").removeprefix(XATTR_PREFIX))
        if value is None:
            raise NoAttribute
        return value.encode()

    @handler
    async def statfs(self, ctx):
        size, entries = self.namespace.usage()
        st = pyfuse3.StatvfsData()
        st.f_bsize = st.f_frsize = BLOCK_SIZE
        st.f_blocks = -(-size // BLOCK_SIZE)
        st.f_bfree = st.f_bavail = 0
        st.f_files = entries
        st.f_ffree = st.f_favail = 0
        st.f_namemax = NAME_MAX
        return st

    @handler
    async def access(self, inode, mode, ctx):
        await self.namespace.getattr(inode)
        if mode & os.W_OK:
            raise ReadOnly
        return True

    # -- reading ----------------------------------------------------------------------------

    @handler
    async def open(self, inode, flags, ctx):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            await self.namespace.getattr(inode)  # ENOENT before EROFS
            raise ReadOnly
        handle = await self.namespace.open(inode)
        fh = self._next_fh
        self._next_fh += 1
        self._open[fh] = handle
        if isinstance(handle, Stream):
            return pyfuse3.FileInfo(fh=fh, keep_cache=not handle.direct, direct_io=handle.direct)
        return pyfuse3.FileInfo(fh=fh, direct_io=True)  # /.idcfs: its size changes

    @handler
    async def read(self, fh, off, size):
        handle = self._open.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return await self.namespace.read(handle, off, size)

    @handler
    async def release(self, fh):
        self._open.pop(fh, None)

    # -- everything that would change the tree ---------------------------------------------

    async def _read_only(self, *args, **kwargs):
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _read_only
    create = write = setxattr = removexattr = _read_only
