"""The kernel's table of mounts, read as it is meant to be read.

/proc/mounts escapes space, tab, newline and backslash in paths as octal (`\\040` ...), so a
mountpoint like `~/IDC data` appears as `IDC\\040data`; comparing raw lines with paths would call
such a mount "not mounted". stat() is no substitute: a dead daemon's mount may answer it from
the kernel's cache.
"""

from __future__ import annotations

import os
import re

_OCTAL = re.compile(r"\\([0-7]{3})")


def table() -> list[tuple[str, str]]:
    """(mountpoint, filesystem type) of every mount."""
    with open("/proc/mounts") as mounts:
        rows = [line.split() for line in mounts]
    return [(_OCTAL.sub(lambda m: chr(int(m.group(1), 8)), r[1]), r[2]) for r in rows if len(r) > 2]


def is_mounted(path: os.PathLike | str) -> bool:
    """Whether path is a mount point."""
    target = os.path.abspath(path)
    return any(mountpoint == target for mountpoint, _ in table())


def idcfs_mounts() -> list[str]:
    """The mountpoints of idcfs mounts."""
    return [mountpoint for mountpoint, kind in table() if kind == "fuse.idcfs"]
