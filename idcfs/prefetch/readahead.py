"""Readahead within a file, as the kernel does it: a window that starts small and doubles while
the reads go forward, and resets on a jump.

A read counts as part of the stream when it lands near where the stream is (the kernel keeps
several requests in flight and they may arrive out of order), or anywhere ahead of it within the
slack: small reads that move forward with gaps (a DICOM reader walking the fragment headers of a
pyramid level without an offset table) are a stream too, and get the window a sequential read
gets. When the reader comes within half a window of what is already coming, the next window is
asked for, in chunks fetched in parallel. Pure: it says what to fetch, the reader fetches it.
"""

from __future__ import annotations

from .stream import Stream


def plan(stream: Stream, offset: int, size: int, block_size: int) -> list[tuple[int, int]]:
    """Update the stream for a read of [offset, offset+size); the block runs (first, last) to
    fetch ahead of it now."""
    policy = stream.policy
    sequential = stream.next_offset > 0 and abs(offset - stream.next_offset) <= policy.sequential_slack
    stream.next_offset = max(stream.next_offset, offset + size) if sequential else offset + size
    if not sequential:
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
