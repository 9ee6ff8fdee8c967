"""The FUSE operations called directly, without a mount: the errnos they answer with, and how a
failed read is remembered, against a fake object store that counts its requests."""

from __future__ import annotations

import errno
import os

import pyfuse3
import pytest
import trio

from conftest import in_blocks
from idcfs.cache import BlockCache, ObjectRef
from idcfs.fs import FAILED_READ_MEMORY, Operations
from idcfs.listings import Listings
from idcfs.naming import NAME_MAX
from idcfs.prefetch import Reader
from idcfs.source import SourceError
from idcfs.tree import ROOT, SeriesRef
from test_tree import ROWS, build_tree

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
    return Operations(tree, Listings(store.list, tmp_path / "cache"), Reader(cache), budget=5)


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
    trio.run(scenario)
    assert ops.errors == 3
