"""Fetching a run of blocks from the object store, and refusing what is not the object's.

Every answer must come as blocks of exactly the sizes asked for; an object fetched whole (every
file up to the whole-object limit, almost every DICOM instance) must also match the MD5 its
listing gave as ETag. Bytes that fail either are neither returned nor cached. (A range of a
larger object is checked for length and range only: S3 gives no checksum of a range.)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable

import trio

from ..objects import ObjectRef
from ..errors import SourceError

# (object, start, length, block size) -> the bytes [start, start+length) in blocks of block size
# (a list, or Blocks carrying their MD5)
Fetch = Callable[[ObjectRef, int, int, int], Awaitable[list[bytes]]]

# An ETag that is an MD5 of the content (single-part uploads, as IDC's objects are; GCS's for
# objects that are not composite).
_MD5 = re.compile(r"[0-9a-f]{32}")
# Digests of more than this run in a thread: hashlib lets go of the GIL on large buffers, so
# they run beside the FUSE loop and in parallel.
_HASH_IN_THREAD = 65536


async def fetch_run(fetch: Fetch, obj: ObjectRef, first: int, last: int,
                    block_size: int) -> dict[int, bytes]:
    """Blocks first..last of obj from the source, checked."""
    start = first * block_size
    end = min(obj.size, (last + 1) * block_size)
    blocks = await fetch(obj, start, end - start, block_size)
    expected = [obj.block_length(i, block_size) for i in range(first, last + 1)]
    if [len(b) for b in blocks] != expected:
        raise SourceError(f"s3://{obj.bucket}/{obj.key}: blocks {first}-{last} came back as "
                          f"{len(blocks)} blocks of the wrong sizes; not used")
    if start == 0 and end == obj.size and obj.etag and _MD5.fullmatch(obj.etag):
        digest = getattr(blocks, "md5", None)  # hashed by the source as the bytes arrived
        if digest is None:
            digest = (await trio.to_thread.run_sync(_md5, blocks) if obj.size > _HASH_IN_THREAD
                      else _md5(blocks))
        if digest != obj.etag:
            raise ContentMismatch(f"s3://{obj.bucket}/{obj.key}: the bytes received do not "
                                  f"match its ETag (MD5 {obj.etag}); not used, not cached")
    return dict(zip(range(first, last + 1), blocks))


class ContentMismatch(SourceError):
    """The bytes of a whole object do not hash to its ETag."""


def _md5(blocks: list[bytes]) -> str:
    digest = hashlib.md5()
    for block in blocks:
        digest.update(block)
    return digest.hexdigest()
