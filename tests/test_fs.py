"""The FUSE operations called directly, without a mount: the errnos they answer with, and how a
failed read is remembered, against a fake object store that counts its requests."""

from __future__ import annotations

import dataclasses
import errno
import itertools
import os

import pyfuse3
import pytest
import trio
import trio.testing

from conftest import ROWS, build_tree, in_blocks
from idcfs.data_cache import BlockCache
from idcfs.objects import ObjectRef
from idcfs.failures import FailureLog
from idcfs.fs import Attributes, Operations
from idcfs.listings import Listings
from idcfs.namespace import Namespace
from idcfs.namespace.entry import Entry
from idcfs.namespace.tree_nodes import FAILED_READ_MEMORY, TreeNodes
from idcfs.index.naming import NAME_MAX
from idcfs.prefetch import Reader
from idcfs.errors import SourceError
from idcfs.index.tree import ROOT, SeriesRef

SIZES = {"a.dcm": 10, "b.dcm": 3000}


def content(start: int, length: int) -> bytes:
    return bytes(i % 251 for i in range(start, start + length))


class FakeStore:
    """Every series holds a.dcm and b.dcm, whose bytes are their offsets mod 251."""

    def __init__(self) -> None:
        self.gets = 0
        self.failing = False

    async def list(self, ref: SeriesRef) -> list[tuple[str, int, str]]:
        return [(name, size, "") for name, size in SIZES.items()]

    async def get(self, obj: ObjectRef, start: int, length: int, block_size: int) -> list[bytes]:
        self.gets += 1
        if self.failing:
            raise SourceError(f"s3://{obj.bucket}/{obj.key}: endpoint down")
        return in_blocks(content(start, length), block_size)


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def ops(tmp_path, store) -> Operations:
    tree = build_tree(tmp_path, ROWS)
    cache = BlockCache(store.get, None, 1 << 20)
    nodes = TreeNodes(tree, Listings(store.list, tmp_path / "cache"), Reader(cache), 5.0,
                      FailureLog())
    return Operations(Namespace(nodes), Attributes(0, 0, 0, tree.timestamp_ns))


async def path_inode(ops: Operations, *names: bytes) -> int:
    inode = ROOT.inode
    for name in names:
        inode = (await ops.lookup(inode, name)).st_ino
    return inode


async def file_inode(ops: Operations, name: bytes = b"b.dcm") -> int:
    return await path_inode(ops, b"nlst", b"100", b"1.1", b"CT_1.1.1", name)


def errno_of(call) -> int:
    with pytest.raises(pyfuse3.FUSEError) as err:
        trio.run(call)
    return err.value.errno


def test_a_name_longer_than_a_name_can_be_is_enametoolong(ops):
    assert errno_of(lambda: ops.lookup(ROOT.inode, b"x" * (NAME_MAX + 1))) == errno.ENAMETOOLONG


def test_a_name_the_index_does_not_have_is_enoent(ops):
    assert errno_of(lambda: ops.lookup(ROOT.inode, b"x" * NAME_MAX)) == errno.ENOENT


def test_a_file_under_a_file_is_enotdir(ops):
    async def under_a_file():
        await ops.lookup(await file_inode(ops), b"x")
    assert errno_of(under_a_file) == errno.ENOTDIR


def test_opening_for_writing_is_erofs(ops):
    async def open_for_writing():
        await ops.open(await file_inode(ops), os.O_WRONLY, None)
    assert errno_of(open_for_writing) == errno.EROFS


def test_a_file_reads_its_objects_bytes(ops, store):
    async def read_all() -> bytes:
        fh = (await ops.open(await file_inode(ops), os.O_RDONLY, None)).fh
        return await ops.read(fh, 0, 1 << 20)
    assert trio.run(read_all) == content(0, SIZES["b.dcm"])
    assert store.gets == 1


def test_a_failed_read_fails_again_at_once_then_tries_the_store_again(ops, store):
    async def scenario() -> None:
        fh = (await ops.open(await file_inode(ops), os.O_RDONLY, None)).fh
        store.failing = True
        with pytest.raises(pyfuse3.FUSEError):
            await ops.read(fh, 0, 2048)
        asked = store.gets
        # The kernel's retry of a page inside the failed range: EIO without asking the store.
        with pytest.raises(pyfuse3.FUSEError) as err:
            await ops.read(fh, 0, 512)
        assert err.value.errno == errno.EIO and store.gets == asked
        # A range that did not fail is tried.
        with pytest.raises(pyfuse3.FUSEError):
            await ops.read(fh, 2048, 512)
        assert store.gets > asked
        # Once the memory has passed, the failed range is tried again, and works if it can.
        store.failing = False
        await trio.sleep(FAILED_READ_MEMORY)
        assert await ops.read(fh, 0, 512) == content(0, 512)
    # Trio's clock jumps over the sleep once every task has waited a moment (threads, which the
    # listings use, finish within it).
    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0.2))
    assert ops.errors == 3


def test_a_new_open_tries_the_store_again_at_once_after_a_failed_read(ops, store):
    """The memory of a failure belongs to the open file it happened on: a user who opens the
    file again right after the endpoint recovered gets the bytes."""
    async def scenario() -> None:
        inode = await file_inode(ops)
        fh = (await ops.open(inode, os.O_RDONLY, None)).fh
        store.failing = True
        with pytest.raises(pyfuse3.FUSEError):
            await ops.read(fh, 0, 2048)
        store.failing = False
        again = (await ops.open(inode, os.O_RDONLY, None)).fh
        assert await ops.read(again, 0, 2048) == content(0, 2048)
    trio.run(scenario)


def test_every_listed_entry_has_the_attributes_its_lookup_gives(ops):
    """readdir gives the kernel each entry's attributes, which it keeps as if looked up: they
    must be what a lookup of the name gives, in every directory of the tree."""
    async def scenario() -> None:
        for path in [(), (b"nlst",), (b"nlst", b"100", b"1.1"), (b"nlst", b"100", b"1.1",
                                                                 b"CT_1.1.1")]:
            inode = await path_inode(ops, *path)
            listed = await readdir_all(ops, inode)
            assert listed
            for name, attributes in listed:
                assert attributes == fields(await ops.lookup(inode, name, None)), (path, name)
    trio.run(scenario)


def test_a_listings_attributes_are_each_entrys_own_whatever_was_listed_before_it():
    attributes = Attributes(1000, 100, 0o027, 123_456_789)
    entries = [Entry(10, False, size=3000), Entry(11, True, subdirs=3),
               Entry(12, False, size=10, volatile=True), Entry(13, False, size=1),
               Entry(14, False, size=4096), Entry(15, True)]
    for order in itertools.permutations(entries):
        fill = attributes.lister()
        for entry in order:
            assert fields(fill(entry)) == fields(attributes.of(entry)), (order, entry)


class Broken:
    """A stand-in for one method of a layer: raises exc while broken, else calls the real one."""

    def __init__(self, real, exc: Exception) -> None:
        self.real, self.exc, self.broken = real, exc, True

    def __call__(self, *args, **kwargs):
        if self.broken:
            raise self.exc
        return self.real(*args, **kwargs)


async def _lookup(ops):
    return await path_inode(ops, b"nlst", b"100")


async def readdir_all(ops: Operations, inode: int) -> list[tuple[bytes, dict]]:
    """(name, attributes) of a directory's entries, as readdir hands them to pyfuse3 (which
    copies the attributes at once: readdir may reuse one object for them all)."""
    listed = []

    def collect(token, name, attr, next_id):
        listed.append((name, fields(attr)))
        return True

    original, pyfuse3.readdir_reply = pyfuse3.readdir_reply, collect
    try:
        await ops.readdir(await ops.opendir(inode, None), 0, None)
    finally:
        pyfuse3.readdir_reply = original
    return listed


ATTRIBUTES = ("st_ino", "st_mode", "st_nlink", "st_size", "st_blocks", "st_blksize", "st_uid",
              "st_gid", "st_atime_ns", "st_mtime_ns", "st_ctime_ns", "entry_timeout",
              "attr_timeout")


def fields(attr: pyfuse3.EntryAttributes) -> dict:
    return {name: getattr(attr, name) for name in ATTRIBUTES}


async def _readdir(ops):
    return [name for name, _ in await readdir_all(ops, await path_inode(ops, b"nlst"))]


async def _open(ops):
    return (await ops.open(await file_inode(ops), os.O_RDONLY, None)).fh


async def _read(ops):
    return await ops.read(await _open(ops), 0, 100)


async def _getxattr(ops):
    return await ops.getxattr(await path_inode(ops, b"nlst"), b"user.idc.collection_id", None)


async def _statfs(ops):
    return (await ops.statfs(None)).f_files


# handler: (the call, which layer's method breaks)
BREAKING = {
    "lookup": (_lookup, lambda nodes: (nodes.tree, "lookup")),
    "readdir": (_readdir, lambda nodes: (nodes.tree, "children")),
    "open": (_open, lambda nodes: (nodes.reader, "opened")),
    "read": (_read, lambda nodes: (nodes.reader, "read")),
    "getxattr": (_getxattr, lambda nodes: (nodes.tree, "metadata")),
    "statfs": (_statfs, lambda nodes: (nodes.tree.files.meta, "get")),
}


class Meta(dict):
    """The tree's metadata, as an object whose get can be replaced."""


@pytest.mark.parametrize("exc", [KeyError("row"), RuntimeError("a bug"), OSError(5, "disk")],
                         ids=["KeyError", "RuntimeError", "OSError"])
@pytest.mark.parametrize("handler", list(BREAKING))
def test_an_unexpected_exception_in_any_layer_is_eio_logged_once_and_the_next_request_works(
        ops, handler, exc, caplog):
    call, where = BREAKING[handler]
    nodes = ops.namespace.tree
    nodes.tree.files = dataclasses.replace(nodes.tree.files, meta=Meta(nodes.tree.files.meta))
    layer, name = where(nodes)
    broken = Broken(getattr(layer, name), exc)
    setattr(layer, name, broken)
    with pytest.raises(pyfuse3.FUSEError) as err:
        trio.run(call, ops)
    assert err.value.errno == errno.EIO
    failures = [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert ops.unexpected == 1
    broken.broken = False
    assert trio.run(call, ops)  # the same request, now answered
