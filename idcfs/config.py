"""The settled options of one mount: built once from the command line (after the checks), read
by everything else. Defaults come from the table of options (options.py)."""

from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import checks
from .index.files import check_index_dir, default_index_dir
from .options import GCS_ENDPOINT, default, default_cache_dir
from .index.selection import Selection, known_versions
from .index.selection import check as check_selection


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
    cache_size: int
    uid: int
    gid: int
    endpoint_url: str | None = None
    ca_bundle: str | None = None
    foreground: bool = False
    log_level: str = default("log_level")
    log_file: Path | None = None
    max_connections: int = default("max_connections")
    request_timeout: float = default("request_timeout")
    umask: int = default("umask")
    memory_cache_size: int = default("memory_cache_size")
    fuse_options: frozenset[str] = frozenset()
    selection: Selection = field(default_factory=Selection)
    notice: str | None = None  # for the person mounting: what the options leave out


def _or_default(args: argparse.Namespace, name: str):
    value = getattr(args, name)
    return default(name) if value is None else value


def mount_config(args: argparse.Namespace, fuse: set[str]) -> MountConfig:
    """Check everything a person could get wrong and settle the options of the mount (args: the
    command line with -o folded in; fuse: the FUSE options)."""
    checks.fuse()
    checks.allow_other(fuse)
    mountpoint = checks.mountpoint(args.mountpoint)
    index_dir = args.index or default_index_dir()
    check_index_dir(index_dir)
    source = _or_default(args, "source")
    endpoint = (checks.endpoint_url(args.endpoint_url) if args.endpoint_url
                else GCS_ENDPOINT if source == "gcs" else None)
    chosen = Selection(
        idc_version=(args.idc_version if args.idc_version is not None
                     else max(known_versions(index_dir), default=None)),
        source=source,
        collections=tuple(c for c in (args.collection or "").split(",") if c),
        licenses=tuple(args.license or ()),
        exclude_licenses=tuple(args.exclude_license or ()),
        filter=args.filter,
        manifest=str(args.manifest.resolve()) if args.manifest else None,
        layout=_or_default(args, "layout"),
        manifest_sha256=(hashlib.sha256(args.manifest.read_bytes()).hexdigest()
                         if args.manifest and args.manifest.is_file() else None),
    )
    notice = check_selection(index_dir, chosen)
    cache_dir = checks.cache_dir(args.cache_dir or default_cache_dir())
    return MountConfig(
        mountpoint=mountpoint,
        index_dir=index_dir.resolve(),
        cache_dir=cache_dir,
        cache_size=(args.cache_size if args.cache_size is not None
                    else default_cache_size(cache_dir)),
        uid=args.uid if args.uid is not None else os.getuid(),
        gid=args.gid if args.gid is not None else os.getgid(),
        endpoint_url=endpoint,
        ca_bundle=checks.ca_bundle(args.ca_bundle),
        foreground=bool(args.foreground),
        log_level="DEBUG" if args.debug else _or_default(args, "log_level"),
        log_file=args.log_file.resolve() if args.log_file else None,
        max_connections=_or_default(args, "max_connections"),
        request_timeout=_or_default(args, "request_timeout"),
        umask=_or_default(args, "umask"),
        memory_cache_size=_or_default(args, "memory_cache_size"),
        fuse_options=frozenset(fuse),
        selection=chosen,
        notice=notice,
    )
