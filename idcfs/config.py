"""The settled options of one mount: built once by the CLI, read by everything else, no I/O."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/idcfs, else ~/.cache/idcfs, as every desktop tool expects."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "idcfs"


@dataclass(frozen=True)
class MountConfig:
    mountpoint: Path
    index_dir: Path
    cache_dir: Path
    endpoint_url: str | None = None
    foreground: bool = False
    log_level: str = "INFO"
    log_file: Path | None = None
    max_connections: int = 64
    fuse_options: frozenset[str] = frozenset()
