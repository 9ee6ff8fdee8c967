"""How far ahead of readers to fetch, and what a series' modality changes about it."""

from __future__ import annotations

from dataclasses import dataclass, replace

# Modalities whose series are pyramids of a few large files that viewers open all at once to
# read their headers and then read tiles of (slide microscopy): nothing is fetched whole or
# ahead of a file until its reads show a stream.
TILED = frozenset({"SM"})


@dataclass(frozen=True)
class Policy:
    """Bytes unless named otherwise."""

    whole_object_limit: int = 8 << 20  # objects up to this size are fetched whole
    readahead_start: int = 1 << 20  # a sequential reader's first window
    readahead_cap: int = 64 << 20  # the window doubles up to this
    readahead_chunk_blocks: int = 8  # blocks per readahead GET (and per disk file)
    sequential_slack: int = 8 << 20  # a read this near the stream's end counts as sequential
    stream_min: int = 2 << 20  # reads are a stream once they have covered this much
    series_first_ahead: int = 2  # files fetched ahead when the first file of a series opens
    series_ahead_bytes: int = 48 << 20  # then this much ahead of the reader
    in_flight_bytes: int = 32 << 20  # background fetches in flight, per mount (source_process.py)
    tiled: bool = False  # a slide's: files with an offset table are read past the page cache

    def within_memory(self, memory_bytes: int) -> Policy:
        """The policy with a readahead window that a memory cache of memory_bytes can hold: a
        stream asks for its next window once its reader is half a window from the end of what
        is coming, so up to one and a half windows wait ahead of it, and blocks that leave the
        cache before the reader gets to them are read again (a 1 GiB re-read from the disk
        cache took 1.66 s instead of 1.06 s with a 64 MiB cache and a 64 MiB window)."""
        return replace(self, readahead_cap=max(self.readahead_start,
                                               min(self.readahead_cap, memory_bytes * 2 // 3)))

    def for_modality(self, modality: str) -> Policy:
        """The policy for a series of this modality: a slide's files are read by the block
        (a header, a tail, the tiles of a region), never whole, and no file is fetched because
        another one of the slide was opened."""
        if modality in TILED:
            return replace(self, whole_object_limit=0, series_first_ahead=0,
                           series_ahead_bytes=0, tiled=True)
        return self
