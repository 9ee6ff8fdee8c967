"""Series folder listings: fetched from the bucket once, kept in memory and on disk.

There is no instance-level index for most of IDC, so a series folder's files and sizes come from
listing `<bucket>/<crdc_series_uuid>/`. A crdc_series_uuid names immutable content (a revised
series gets a new one), so a listing never goes stale: it is kept in a bounded LRU in memory and
persisted under the cache directory, and a remount does not list again.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import cachetools
import trio

from .singleflight import SingleFlight
from .index.tree import Listing, SeriesRef

log = logging.getLogger(__name__)

Fetch = Callable[[SeriesRef], Awaitable[list[tuple[str, int, str]]]]


class Listings:
    """Single-flight, two-level (memory, disk) store of series listings."""

    def __init__(self, fetch: Fetch, cache_dir: Path, max_entries: int = 2_000_000) -> None:
        self._fetch = fetch
        self._dir = cache_dir / "listings"
        self._memory: cachetools.LRUCache = cachetools.LRUCache(
            maxsize=max_entries, getsizeof=lambda listing: max(1, len(listing.names))
        )
        self._flight: SingleFlight[SeriesRef] = SingleFlight()
        self.fetched = 0

    def cached(self, ref: SeriesRef) -> Listing | None:
        """The listing if it is in memory, without any I/O."""
        return self._memory.get(ref)

    async def get(self, ref: SeriesRef) -> Listing:
        """The listing of a series folder; concurrent callers for one series share one request."""
        return await self._flight.get(ref, lambda: self._memory.get(ref), lambda: self._get(ref))

    async def _get(self, ref: SeriesRef) -> Listing:
        listing = await trio.to_thread.run_sync(self._load, ref)
        if listing is None:
            entries = sorted(await self._fetch(ref))
            self.fetched += 1
            listing = Listing(tuple(e[0] for e in entries), tuple(e[1] for e in entries),
                              tuple(e[2] if len(e) > 2 else "" for e in entries))
            await trio.to_thread.run_sync(self._save, ref, listing)
        if len(listing.names) <= self._memory.maxsize:
            self._memory[ref] = listing
        return listing

    def _path(self, ref: SeriesRef) -> Path:
        return self._dir / ref.bucket / ref.uuid[:2] / f"{ref.uuid}.json"

    def _load(self, ref: SeriesRef) -> Listing | None:
        try:
            data = json.loads(self._path(ref).read_text())
            return Listing(tuple(data["names"]), tuple(data["sizes"]), tuple(data.get("etags", ())))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable listing %s: %s", self._path(ref), exc)
            return None

    def _save(self, ref: SeriesRef, listing: Listing) -> None:
        path = self._path(ref)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "w") as out:  # dumps: dump encodes in Python, 2-3× slower
                out.write(json.dumps({"names": listing.names, "sizes": listing.sizes,
                                      "etags": listing.etags}))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("could not persist the listing of %s/%s: %s", ref.bucket, ref.uuid, exc)
