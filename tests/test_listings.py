"""Series listings with a counting fake source: one request per series, ever."""

from __future__ import annotations

import trio

from idcfs.listings import Listings
from idcfs.index.tree import SeriesRef

REF = SeriesRef("idc-open-data", "0d73f84e-70ae-4eeb-96a0-1c613b5d9229")


class CountingSource:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, ref: SeriesRef) -> list[tuple[str, int]]:
        self.calls += 1
        await trio.sleep(0.05)
        return [("b.dcm", 20, "e2"), ("a.dcm", 10, "e1"), ("c.dcm", 30, "e3")]


def test_listing_is_sorted_with_sizes(tmp_path):
    listings = Listings(CountingSource(), tmp_path)
    listing = trio.run(listings.get, REF)
    assert listing.names == ("a.dcm", "b.dcm", "c.dcm")
    assert listing.sizes == (10, 20, 30)
    assert listing.etags == ("e1", "e2", "e3")
    assert listing.find("b.dcm") == 1 and listing.find("zz.dcm") is None


def test_concurrent_readers_of_one_series_cause_one_request(tmp_path):
    source = CountingSource()
    listings = Listings(source, tmp_path)
    results = []

    async def main():
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(lambda: _append(results, listings))

    trio.run(main)
    assert source.calls == 1
    assert len(results) == 20 and len(set(results)) == 1


async def _append(results, listings):
    results.append(await listings.get(REF))


def test_a_new_mount_reads_the_persisted_listing_without_a_request(tmp_path):
    first = CountingSource()
    trio.run(Listings(first, tmp_path).get, REF)
    second = CountingSource()
    listing = trio.run(Listings(second, tmp_path).get, REF)
    assert (first.calls, second.calls) == (1, 0)
    assert listing.names == ("a.dcm", "b.dcm", "c.dcm")


def test_a_corrupt_persisted_listing_is_fetched_again(tmp_path):
    trio.run(Listings(CountingSource(), tmp_path).get, REF)
    for path in (tmp_path / "listings").rglob("*.json"):
        path.write_text("{truncated")
    source = CountingSource()
    assert trio.run(Listings(source, tmp_path).get, REF).sizes == (10, 20, 30)
    assert source.calls == 1


def test_memory_holds_at_most_its_bound_of_entries(tmp_path):
    listings = Listings(CountingSource(), tmp_path, max_entries=7)

    async def main():
        for i in range(5):
            await listings.get(SeriesRef("idc-open-data", f"uuid-{i}"))

    trio.run(main)
    assert listings._memory.currsize <= 7
    assert listings.cached(SeriesRef("idc-open-data", "uuid-4")) is not None
    assert listings.cached(SeriesRef("idc-open-data", "uuid-0")) is None
