"""`idcfs cache stats|clear|warm`: what the cache holds, emptying it, filling it ahead of time."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from .data_cache import clear
from .data_cache.blockfile import blocks_in_pack, directory
from .options import default_cache_dir
from .mounts import idcfs_mounts

CHUNK = 1 << 20


def _du(path: Path, count: Callable[[str], int] = lambda path: 1) -> tuple[int, int]:
    """(things, bytes) below path, counting count(path) things per file, skipping unfinished
    temporary files."""
    things = size = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            if name.startswith(".tmp-"):
                continue
            try:
                size += os.stat(os.path.join(dirpath, name)).st_size
                things += count(os.path.join(dirpath, name))
            except FileNotFoundError:
                pass
    return things, size


def stats(cache_dir: Path) -> int:
    if not cache_dir.is_dir():
        print(f"idcfs: no cache at {cache_dir}", file=sys.stderr)
        return 1
    blocks, block_bytes = _du(directory(cache_dir), blocks_in_pack)
    listings, listing_bytes = _du(cache_dir / "listings")
    built = cache_dir / "index"
    trees = [p for p in built.glob("*") if p.is_dir()] if built.is_dir() else []
    tree_bytes = sum(_du(p)[1] for p in trees)
    print(f"cache directory  {cache_dir}")
    print(f"blocks           {blocks} ({block_bytes / 1e6:.1f} MB)")
    print(f"series listings  {listings} ({listing_bytes / 1e6:.1f} MB)")
    print(f"index trees      {len(trees)} ({tree_bytes / 1e6:.1f} MB)")
    return 0


def _read_all(path: str, progress: tqdm) -> None:
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            progress.update(len(chunk))


def warm(paths: list[Path], jobs: int) -> int:
    mounts = idcfs_mounts()
    files: list[tuple[str, int]] = []
    for path in paths:
        full = os.path.abspath(path)
        if not os.path.exists(full):
            print(f"idcfs: {path} does not exist", file=sys.stderr)
            return 1
        if not any(full == m or full.startswith(m.rstrip("/") + "/") for m in mounts):
            print(f"idcfs: {path} is not inside an idcfs mount", file=sys.stderr)
            return 1
        if os.path.isfile(full):
            files.append((full, os.path.getsize(full)))
        for dirpath, _, names in os.walk(full):
            files.extend((os.path.join(dirpath, n), os.path.getsize(os.path.join(dirpath, n)))
                         for n in sorted(names))
    total = sum(size for _, size in files)
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"warming {len(files)} files",
              file=sys.stderr) as progress, ThreadPoolExecutor(max(1, jobs)) as pool:
        for future in [pool.submit(_read_all, path, progress) for path, _ in files]:
            try:
                future.result()
            except OSError as exc:
                print(f"idcfs: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
                return 1
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "warm":
        return warm(args.paths, args.jobs)
    cache_dir = args.cache_dir or default_cache_dir()
    if args.action == "clear":
        clear(cache_dir)
        print(f"cleared the cached blocks and listings in {cache_dir}")
        return 0
    return stats(cache_dir)
