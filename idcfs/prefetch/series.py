"""Prefetch across the files of a series: what viewers, converters, `cp -r` and `tar` read.

Once a second file of a series is opened, the files after it (in listing order, the order
`ls`, `cp -r` and `glob` see) are fetched whole ahead of the reader, up to a number of bytes
ahead; the first open already fetches a couple. Loading a 300-slice series then costs about one
round trip per batch of files instead of one per file. Only files small enough to be fetched
whole are, and a series whose policy fetches nothing whole (a slide) is never prefetched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .policy import Policy


@dataclass(slots=True)
class SeriesState:
    opened: set[int] = field(default_factory=set)
    scheduled_until: int = 0

    def opened_file(self, position: int, sizes: Sequence[int], policy: Policy) -> range:
        """A file was opened: the positions of the files to fetch ahead now. The bytes ahead
        are summed from the listing's sizes (making an ObjectRef for each of the ~100 files in
        the window, on every open, took 15 % of the FUSE loop's time in a warm `cp -r`)."""
        self.opened.add(position)
        count = len(sizes)
        limit = position + 1 + policy.series_first_ahead
        if len(self.opened) > 1:
            limit, budget = position + 1, policy.series_ahead_bytes
            while limit < count and budget > 0:
                budget -= sizes[limit]
                limit += 1
        start = max(self.scheduled_until, position + 1)
        end = min(limit, count)
        self.scheduled_until = max(self.scheduled_until, end)
        return range(start, end)
