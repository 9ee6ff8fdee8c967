"""One open file as the reader sees it: where its reads are going, how far ahead is asked for,
and the read that failed last."""

from __future__ import annotations

from dataclasses import dataclass

from ..objects import ObjectRef
from .policy import Policy


@dataclass(slots=True)
class Stream:
    obj: ObjectRef
    policy: Policy = Policy()
    next_offset: int = 0
    span_start: int = 0  # where the current run of reads began
    read_bytes: int = 0  # what its reads have covered
    window: int = 0
    ahead_until: int = 0
    failed: tuple[int, int, float] | None = None
    direct: bool = False  # read past the kernel's page cache (and its readahead)

    @property
    def whole(self) -> bool:
        """Whether the object is fetched whole on its first read."""
        return self.obj.size <= self.policy.whole_object_limit

    def remember_failure(self, offset: int, size: int, now: float) -> None:
        self.failed = (offset, offset + size, now)

    def failed_recently(self, offset: int, size: int, memory: float, now: float) -> bool:
        """Whether a read of [offset, offset+size) overlaps the range that failed on this open
        file less than memory seconds before now (the kernel's repeat after a failed
        readahead)."""
        if self.failed is None:
            return False
        start, end, when = self.failed
        return now - when < memory and start < offset + size and offset < end
