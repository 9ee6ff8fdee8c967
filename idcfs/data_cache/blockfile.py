"""The on-disk format of cached blocks, as pure functions: names, slots, trailers.

A block fetched alone is a file of its own, `<digest>.<block>`: its bytes and its trailer in one
slot padded to the page. Consecutive blocks fetched together (one readahead GET, up to
RUN_BLOCKS) share a file, `<digest>.<first>+<count>`, each block and its trailer in a slot of its
own, so that one block can still be read alone, straight from disk with O_DIRECT. Every file is
written whole pages at a time with O_DIRECT and never cut to a length afterwards: truncating each
new file was a tenth of the daemon's CPU when a loader read many small files. A trailer is the
block's length, its CRC-32 and a magic number: a block is served only if all three match, so a
file torn by a crash or damaged by the disk is detected, never served.

The CRC is zlib-ng's (~58 GB/s here against the system zlib's 6 GB/s, which was a tenth of the
daemon's CPU in a cold 1 GiB read): the same checksum, computed faster.

The format's number is in the name of the directory that holds it (`blocks.v3`): a new format
is a new directory, and the old one is removed, instead of a migration.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from zlib_ng import zlib_ng

FORMAT = 3
TRAILER = struct.Struct("<QI4s")
MAGIC = b"IDCB"
PAGE = 4096
# The most blocks one file holds: what readahead fetches in one GET.
RUN_BLOCKS = 8


def directory(cache_dir: Path) -> Path:
    """Where blocks of this format live under a cache directory."""
    return cache_dir / f"blocks.v{FORMAT}"


def is_block_directory(path: Path) -> bool:
    """Whether path holds blocks of some format (this one's or an older one's)."""
    return path.name == "blocks" or path.name.startswith("blocks.v")


def digest(bucket: str, key: str) -> str:
    return hashlib.sha1(f"{bucket}/{key}".encode()).hexdigest()


def file_name(digest_: str, first: int, count: int) -> str:
    return f"{digest_}.{first}" if count == 1 else f"{digest_}.{first}+{count}"


def parse(name: str) -> tuple[str, int, int] | None:
    """(digest, first block, blocks) from a block file's name; None for any other file."""
    digest_, dot, rest = name.partition(".")
    first, plus, count = rest.partition("+")
    if not dot or not first.isdigit() or plus and not count.isdigit():
        return None
    return digest_, int(first), int(count) if plus else 1


def blocks_in_file(name: str) -> int:
    """How many blocks a file of the disk cache holds, from its name (0: not a block file)."""
    parsed = parse(name)
    return parsed[2] if parsed else 0


def aligned(size: int) -> int:
    return -(-size // PAGE) * PAGE


def slot(length: int) -> int:
    """The room a block of length bytes and its trailer take in a shared file."""
    return aligned(length + TRAILER.size)


def file_size(lengths: list[int]) -> int:
    """The slots of the blocks, padding included."""
    return sum(map(slot, lengths))


def read_extent(lengths: list[int], shared: bool) -> tuple[int, int]:
    """(bytes to read, bytes a good file answers) for a read of these blocks. A file of its own
    is read a page past its end, to see a file that is longer than it should be."""
    room = sum(map(slot, lengths))
    return (room, room) if shared else (room + PAGE, room)


def write_image(buf, datas: list[bytes]) -> int:
    """Lay the file's bytes out in buf (a block and its trailer, or each in a slot padded to
    the page); the image's length, a multiple of the page."""
    at = 0
    for data in datas:
        end = at + len(data)
        room = slot(len(data))
        buf[at:end] = data
        buf[end:end + TRAILER.size] = TRAILER.pack(len(data), zlib_ng.crc32(data), MAGIC)
        buf[end + TRAILER.size:at + room] = bytes(at + room - end - TRAILER.size)
        at += room
    return at


def verified(view: memoryview, lengths: list[int]) -> list[bytes | None]:
    """Each block's bytes from a file's image if its trailer matches, else None."""
    datas: list[bytes | None] = []
    at = 0
    for length in lengths:
        size, crc, magic = TRAILER.unpack_from(view, at + length)
        block = view[at:at + length]
        intact = magic == MAGIC and size == length and zlib_ng.crc32(block) == crc
        datas.append(block.tobytes() if intact else None)
        at += slot(length)
    return datas
