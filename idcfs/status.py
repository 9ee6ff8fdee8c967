"""`idcfs status`: every idcfs mount on this machine, with its release, cache use and health."""

from __future__ import annotations

import concurrent.futures
import errno
import json
import os
import sys
import time

from .namespace.about import DIRECTORY
from .mounts import idcfs_mounts

TIMEOUT = 5.0


def _probe(mountpoint: str) -> dict:
    about = os.path.join(mountpoint, DIRECTORY)
    with open(os.path.join(about, "options")) as f:
        options = json.load(f)
    with open(os.path.join(about, "stats")) as f:
        stats = json.load(f)
    return {"options": options, "stats": stats}


def _row(mountpoint: str, pool: concurrent.futures.ThreadPoolExecutor) -> list[str]:
    future = pool.submit(_probe, mountpoint)
    try:
        found = future.result(timeout=TIMEOUT)
    except concurrent.futures.TimeoutError:
        return [mountpoint, "?", "?", f"not answering after {TIMEOUT:.0f} s", "", ""]
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            return [mountpoint, "?", "?",
                    f"stale: its daemon died (clear it: idcfs umount {mountpoint})", "", ""]
        return [mountpoint, "?", "?", f"error: {exc.strerror}", "", ""]
    options, stats = found["options"], found["stats"]
    errors = stats.get("errors", 0)
    used, limit = stats.get("disk_cache_bytes", 0), stats.get("disk_cache_limit", 0)
    cache = f"{used / 1e9:.2f} of {limit / 1e9:.1f} GB"
    health = "ok" if not errors else f"ok, {errors} failed request(s) (see its log)"
    return [mountpoint, str(options.get("idc_version")), options.get("source", "?"), health, cache,
            _endpoint(stats)]


def _endpoint(stats: dict) -> str:
    """The endpoint and how it answered lately: ok, not asked yet, or what is wrong since when."""
    health = stats.get("endpoint_health", {})
    where = stats.get("endpoint", "?")
    if health.get("state") == "unreachable":
        since = time.strftime("%H:%M:%S", time.localtime(health.get("since", 0)))
        return f"{where}: unreachable since {since}: {health.get('problem', '?')}"
    return f"{where}: {'ok' if health.get('state') == 'ok' else 'not asked yet'}"


def run() -> int:
    mounts = idcfs_mounts()
    if not mounts:
        print("no idcfs mounts")
        return 0
    rows = [["MOUNTPOINT", "VERSION", "SOURCE", "HEALTH", "DISK CACHE", "ENDPOINT"]]
    # Threads that never return (a hung mount) must not keep the command from exiting.
    pool = concurrent.futures.ThreadPoolExecutor(len(mounts))
    rows += [_row(m, pool) for m in mounts]
    pool.shutdown(wait=False, cancel_futures=True)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    sys.stdout.flush()
    return 0
