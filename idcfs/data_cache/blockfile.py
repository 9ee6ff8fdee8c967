"""The on-disk format of cached blocks: packs, slots, trailers, directories, as pure functions
(but blocks_in_pack, which reads a pack's directory for `idcfs cache stats`).

Blocks are kept in packs, `<id>.pack`, each written whole once, with O_DIRECT, and never
changed. A pack holds the blocks the disk writer had queued together (many small objects, or a
run of up to RUN_BLOCKS blocks of a large one), each block and its trailer in a slot of its own
padded to the page, so that one block can still be read alone, straight from disk; consecutive
blocks of an object sit in consecutive slots and come back in one read. A file per block cost a
loader a file system create, a rename and a small O_DIRECT write per DICOM instance, each a
system call that gives up the GIL (the write also leaves the VM); a pack costs that once.

A slot's trailer is the block's length, its CRC-32, a magic number, and which block it is (the
SHA-1 of `bucket/key` and the block's index): a block is served only if all of them match, so a
pack torn by a crash, damaged by the disk or indexed wrongly is detected, never served. The
pack's last page is its directory (each block's identity, offset and length, with a CRC-32 of
its own), read by the start-up scan without reading the blocks.

The CRC is zlib-ng's (~58 GB/s here against the system zlib's 6 GB/s, which was a tenth of the
daemon's CPU in a cold 1 GiB read): the same checksum, computed faster.

The format's number is in the name of the directory that holds it (`blocks.v4`): a new format
is a new directory, and the old one is removed, instead of a migration.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from zlib_ng import zlib_ng

FORMAT = 4
PAGE = 4096
# length, CRC-32, magic, SHA-1 of bucket/key, block index
TRAILER = struct.Struct("<QI4s20sQ")
MAGIC = b"IDCB"
# One block in a pack's directory: SHA-1 of bucket/key, block index, offset, length.
ENTRY = struct.Struct("<20sQQQ")
# The directory's end: its entries, their CRC-32, a magic number.
FOOTER = struct.Struct("<II4s")
PACK_MAGIC = b"IDCP"
SUFFIX = ".pack"
# The most blocks a pack holds: as many as its directory page lists.
MAX_ENTRIES = (PAGE - FOOTER.size) // ENTRY.size
# The most slots of blocks a pack holds, in blocks: what readahead fetches in one GET.
RUN_BLOCKS = 8


class Entry(NamedTuple):
    """A block in a pack: whose (the SHA-1 of bucket/key, in hex), which, where, how long."""

    digest: str
    index: int
    offset: int
    length: int


def directory(cache_dir: Path) -> Path:
    """Where blocks of this format live under a cache directory."""
    return cache_dir / f"blocks.v{FORMAT}"


def is_block_directory(path: Path) -> bool:
    """Whether path holds blocks of some format (this one's or an older one's)."""
    return path.name == "blocks" or path.name.startswith("blocks.v")


def digest(bucket: str, key: str) -> str:
    return hashlib.sha1(f"{bucket}/{key}".encode()).hexdigest()


def is_pack(name: str) -> bool:
    return name.endswith(SUFFIX) and not name.startswith(".")


def aligned(size: int) -> int:
    return -(-size // PAGE) * PAGE


def slot(length: int) -> int:
    """The room a block of length bytes and its trailer take in a pack."""
    return aligned(length + TRAILER.size)


def pack_size(lengths: Sequence[int]) -> int:
    """The bytes of a pack of blocks of these lengths: their slots and the directory page."""
    return sum(map(slot, lengths)) + PAGE


def write_pack(buf, blocks: Sequence[tuple[str, int, bytes]]) -> tuple[int, list[Entry]]:
    """Lay out a pack of blocks (digest, index, bytes) in buf: each block and its trailer in a
    slot padded to the page, then the directory page. The image's length (a multiple of the
    page) and the pack's entries."""
    if not 0 < len(blocks) <= MAX_ENTRIES:
        raise ValueError(f"a pack holds 1 to {MAX_ENTRIES} blocks, not {len(blocks)}")
    at, entries = 0, []
    for digest_, index, data in blocks:
        end = at + len(data)
        room = slot(len(data))
        buf[at:end] = data
        buf[end:end + TRAILER.size] = TRAILER.pack(len(data), zlib_ng.crc32(data), MAGIC,
                                                   bytes.fromhex(digest_), index)
        buf[end + TRAILER.size:at + room] = bytes(at + room - end - TRAILER.size)
        entries.append(Entry(digest_, index, at, len(data)))
        at += room
    listing = b"".join(ENTRY.pack(bytes.fromhex(e.digest), e.index, e.offset, e.length)
                       for e in entries)
    page = listing + bytes(PAGE - len(listing) - FOOTER.size) + FOOTER.pack(
        len(entries), zlib_ng.crc32(listing), PACK_MAGIC)
    buf[at:at + PAGE] = page
    return at + PAGE, entries


def read_directory(page: memoryview | bytes, size: int) -> list[Entry] | None:
    """The entries of a pack of size bytes from its last page; None if the page is not a sound
    directory of a pack of that size."""
    if size < 2 * PAGE or size % PAGE or len(page) != PAGE:
        return None
    count, crc, magic = FOOTER.unpack_from(page, PAGE - FOOTER.size)
    if magic != PACK_MAGIC or not 0 < count <= MAX_ENTRIES:
        return None
    listing = bytes(page[:count * ENTRY.size])
    if zlib_ng.crc32(listing) != crc:
        return None
    entries = [Entry(raw.hex(), index, offset, length)
               for raw, index, offset, length in ENTRY.iter_unpack(listing)]
    if any(e.offset % PAGE or e.offset + slot(e.length) > size - PAGE for e in entries):
        return None
    return entries


def verified(view: memoryview, entries: Sequence[Entry]) -> list[bytes | None]:
    """Each block's bytes from the image of consecutive slots, if its trailer matches the entry
    (length, CRC, magic, identity), else None."""
    datas: list[bytes | None] = []
    at = 0
    for e in entries:
        size, crc, magic, raw, index = TRAILER.unpack_from(view, at + e.length)
        block = view[at:at + e.length]
        intact = (magic == MAGIC and size == e.length and index == e.index
                  and raw.hex() == e.digest and zlib_ng.crc32(block) == crc)
        datas.append(block.tobytes() if intact else None)
        at += slot(e.length)
    return datas


def blocks_in_pack(path: str) -> int:
    """How many blocks a pack holds, from its directory (0: not a readable pack)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - PAGE))
            entries = read_directory(f.read(PAGE), size)
    except OSError:
        return 0
    return len(entries) if entries else 0
