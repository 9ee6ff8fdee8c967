"""The runs' scratch space (copies, downloads, caches), removed between profiles, not between runs.

On a filesystem that frees inodes lazily for reuse, a file made soon after many were deleted near
it costs more: ext4 without a journal (this machine kind's root filesystem) skips each recently
freed inode, one by one, for a minute or more, so a `create` there took up to 0.9 ms instead of
20-25 µs. Removing each run's copy or cache right before the next run made every tool that
writes files (idcfs's cache and `cp`'s copy, s5cmd's download) pay for the run before it. A
run's scratch is therefore renamed aside (a rename frees no inode) and removed at the end of the
profile, and the next profile starts once making a file costs what it should again (sooner only
if the disk runs short of room).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

SETTLED_US = 60  # a create that costs less than this is not skipping freed inodes
SETTLE_MAX_S = 180
PROBE_FILES = 100
MIN_FREE = 20 << 30  # below this much free room, the set-aside scratch is removed at once


class Scratch:
    """Paths under one directory for the runs' copies and caches."""

    def __init__(self, root: Path, say) -> None:
        self.root = root
        self._trash = root / ".set-aside"
        self._say = say
        self._count = 0

    def fresh(self, name: str) -> Path:
        """A path that does not exist yet, for a run to make (what was there is set aside)."""
        path = self.root / name
        self.discard(path)
        return path

    def discard(self, path: Path) -> None:
        """Set path aside for removal at the end of the profile (see empty)."""
        if not path.exists():
            return
        self._trash.mkdir(exist_ok=True)
        self._count += 1
        path.rename(self._trash / f"{self._count}-{path.name}")
        if shutil.disk_usage(self.root).free < MIN_FREE:
            self.empty()

    def empty(self) -> None:
        """Remove what was set aside, then wait until the filesystem makes files at full speed
        (after whatever removed files before, this or another program)."""
        shutil.rmtree(self._trash, ignore_errors=True)
        started = time.monotonic()
        while (cost := self._create_cost_us()) > SETTLED_US:
            waited = time.monotonic() - started
            if waited > SETTLE_MAX_S:
                self._say(f"making a file still costs {cost:.0f} µs after {waited:.0f} s: "
                          f"going on")
                return
            self._say(f"making a file costs {cost:.0f} µs after the scratch's removal; waiting")
            time.sleep(10)

    def _create_cost_us(self) -> float:
        """What making an empty file costs here now, in µs (the probes are kept until the end:
        deleting them would free inodes again)."""
        probes = self.root / ".probes"
        probes.mkdir(exist_ok=True)
        self._count += 1
        started = time.perf_counter()
        for n in range(PROBE_FILES):
            os.close(os.open(probes / f"{self._count}-{n}", os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                             0o600))
        return (time.perf_counter() - started) / PROBE_FILES * 1e6
