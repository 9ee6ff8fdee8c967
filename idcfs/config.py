"""The settled options of one mount: built once by the CLI, read by everything else, no I/O."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .selection import Selection


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/idcfs, else ~/.cache/idcfs, as every desktop tool expects."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "idcfs"


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from a size such as 20G, 512M, 1.5T or 1048576 (binary units, B/iB optional)."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in _UNITS and value[-1:] != "" else ""
    number = value[: len(value) - len(unit)]
    try:
        size = float(number) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"not a size: {text!r} (use e.g. 20G, 512M)") from None
    if size < 0:
        raise ValueError(f"not a size: {text!r}")
    return int(size)


def default_cache_size(cache_dir: Path) -> int:
    """A quarter of the free space where the cache lives: useful, and never the whole disk."""
    try:
        st = os.statvfs(cache_dir)
    except OSError:
        return 10 << 30
    return st.f_bavail * st.f_frsize // 4


@dataclass(frozen=True)
class MountConfig:
    mountpoint: Path
    index_dir: Path
    cache_dir: Path
    endpoint_url: str | None = None
    ca_bundle: str | None = None
    foreground: bool = False
    log_level: str = "INFO"
    log_file: Path | None = None
    max_connections: int = 64
    request_timeout: float = 60.0
    uid: int = 0
    gid: int = 0
    umask: int = 0
    cache_size: int = 10 << 30
    memory_cache_size: int = 96 << 20
    fuse_options: frozenset[str] = frozenset()
    selection: Selection = Selection()
