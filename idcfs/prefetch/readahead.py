"""Readahead within a file, as the kernel does it: a window that starts small and doubles while
the reads go forward, and resets on a jump.

A read counts as part of the stream when it lands near where the stream is (within the slack:
the kernel keeps several readahead requests in flight and they may arrive out of order), and
when the reads since the stream began cover most of the bytes it has passed over. A reader
walking the fragment headers of a pyramid level without an offset table reaches FUSE as the
kernel's readahead of nearly every page: a stream, read ahead at full speed. A viewer reading the
tiles of a region jumps forward a row of tiles at a time, and reads a fraction of what it
passes: not a stream, so only its blocks are fetched (counting jumps alone, a 1024x1024 region
of a slide fetched twice the blocks it touched). Nor is a run shorter than the policy's
stream_min: the kernel reads ahead of a reader itself, and the first megabyte of a file that a
viewer reads for its header would otherwise set off readahead. When the reader comes within half
a window of
what is already coming, the next window is asked for, in chunks fetched in parallel. Pure: it
says what to fetch, the reader fetches it.
"""

from __future__ import annotations

from .stream import Stream

# The share of the bytes passed over that the reads must cover, for them to be a stream.
DENSE = 0.5


def plan(stream: Stream, offset: int, size: int, block_size: int) -> list[tuple[int, int]]:
    """Update the stream for a read of [offset, offset+size); the block runs (first, last) to
    fetch ahead of it now."""
    policy = stream.policy
    near = stream.next_offset > 0 and abs(offset - stream.next_offset) <= policy.sequential_slack
    if not near:
        stream.span_start, stream.read_bytes = offset, 0
    stream.read_bytes += size
    stream.next_offset = max(stream.next_offset, offset + size) if near else offset + size
    passed = stream.next_offset - stream.span_start
    if not (near and passed >= policy.stream_min and stream.read_bytes >= DENSE * passed):
        stream.window = stream.ahead_until = 0
        return []
    reading = (stream.next_offset - 1) // block_size
    if not stream.window:
        stream.window, stream.ahead_until = policy.readahead_start, reading + 1
    if (stream.ahead_until - reading - 1) * block_size > stream.window // 2:
        return []
    first = max(stream.ahead_until, reading + 1)
    last = min(stream.obj.blocks(block_size), first + max(1, stream.window // block_size))
    chunk = policy.readahead_chunk_blocks
    runs = [(start, min(last, start + chunk) - 1) for start in range(first, last, chunk)]
    stream.ahead_until = max(stream.ahead_until, last)
    stream.window = min(policy.readahead_cap, stream.window * 2)
    return runs
