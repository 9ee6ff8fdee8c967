"""The runs' scratch space (copies, downloads, caches): set aside after each run, removed when
the benchmark ends, or between profiles when the disk has no room for another profile's.

On a filesystem that frees inodes lazily for reuse, a file made soon after many were deleted near
it costs more: ext4 without a journal (this machine kind's root filesystem) skips each inode freed
in the last 60 s (360 s while its inode table block is not yet written back), one by one, so a
`create` there took up to 0.9 ms instead of 20-25 µs. Removing each run's copy or cache right
before the next run made every tool that writes files (idcfs's cache and `cp`'s copy, s5cmd's
download) pay for the run before it. A run's scratch is therefore renamed aside (a rename frees
no inode) and kept until the benchmark ends, when nothing follows that could pay for its removal.
Only when the disk has no room for another profile like the largest so far is it removed before
the next profile, written back (`sync`), and the 60 s waited out: three such waits were 3.3 of
the benchmark's 30 minutes. What is kept is written back and dropped from the page cache
between profiles instead, as its removal did, so that a later profile does not run with memory
full of it. Probing the cost instead does not work: each probe's files dirty the
very inode table blocks it would measure.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

SETTLE_S = 65  # ext4's 60 s for an inode freed in a written-back block, and a margin
MIN_FREE = 20 << 30  # below this much free room, the set-aside scratch is removed at once


class Scratch:
    """Paths under one directory for the runs' copies and caches."""

    def __init__(self, root: Path, say) -> None:
        self.root = root
        self._trash = root / ".set-aside"
        self._say = say
        self._count = 0
        self._profile_began: int | None = None  # free bytes when the current profile began
        self._largest = 0  # the most room a profile's scratch took

    def discard_all(self) -> None:
        """Set aside whatever is there (an earlier run's leftovers)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for path in list(self.root.iterdir()):
            if path != self._trash:
                self.discard(path)

    def fresh(self, name: str) -> Path:
        """A path that does not exist yet, for a run to make (what was there is set aside)."""
        path = self.root / name
        self.discard(path)
        return path

    def discard(self, path: Path) -> None:
        """Set path aside, for removal when the benchmark ends (see next_profile)."""
        if not path.exists():
            return
        self._trash.mkdir(exist_ok=True)
        while True:  # names an interrupted run set aside may still be there
            self._count += 1
            aside = self._trash / f"{self._count}-{path.name}"
            if not aside.exists():
                break
        path.rename(aside)
        if shutil.disk_usage(self.root).free < MIN_FREE:
            self.empty()

    def next_profile(self) -> None:
        """Between profiles (outside any run): keep what was set aside if the disk has room for
        another profile like the largest so far, else remove it and wait (empty)."""
        free = shutil.disk_usage(self.root).free
        if self._profile_began is not None:
            self._largest = max(self._largest, self._profile_began - free)
        if free - self._largest < MIN_FREE:
            self.empty()
            free = shutil.disk_usage(self.root).free
        else:  # what is kept must not keep its pages: removing it had freed them
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("1\n")
        self._profile_began = free

    def remove(self) -> None:
        """The benchmark is over: remove everything, with nothing left to wait for."""
        shutil.rmtree(self.root, ignore_errors=True)

    def empty(self) -> None:
        """Remove what was set aside and wait until the filesystem reuses its inodes."""
        if not self._trash.exists():
            return
        self._say(f"removing the runs' scratch; {SETTLE_S} s for the filesystem to reuse its inodes")
        shutil.rmtree(self._trash, ignore_errors=True)
        removed = time.monotonic()
        os.sync()
        time.sleep(max(0.0, removed + SETTLE_S - time.monotonic()))
