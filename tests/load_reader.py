"""One reader process of the load test: hypothesis chooses files, offsets and sizes; every read
through the mount must equal the same read of the reference copy.

    python load_reader.py MOUNT REFERENCE SECONDS SEED PATH...

Runs batches of examples until SECONDS have passed; exits 1 with the failing example (shrunk by
hypothesis) on the first difference or error.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

BLOCK = 1 << 20


def offsets(size: int) -> st.SearchStrategy[int]:
    """Anywhere in the file, with extra weight on block edges and the end, where bugs live."""
    edges = sorted({max(0, min(size, b * BLOCK + d)) for b in range(size // BLOCK + 1)
                    for d in (-1, 0, 1)} | {size})
    return st.one_of(st.integers(0, size), st.sampled_from(edges))


def lengths(size: int) -> st.SearchStrategy[int]:
    return st.one_of(st.integers(1, 4096), st.integers(1, 3 * BLOCK), st.just(size + 1))


def reads(paths: list[str], sizes: dict[str, int]) -> st.SearchStrategy:
    """(path, [(offset, length), ...]): a file opened once and read at a few places."""
    return st.sampled_from(paths).flatmap(lambda p: st.tuples(
        st.just(p), st.lists(st.tuples(offsets(sizes[p]), lengths(sizes[p])), min_size=1,
                             max_size=6)))


def sequential(fd: int, chunk: int) -> bytes:
    parts = []
    while part := os.read(fd, chunk):
        parts.append(part)
    return b"".join(parts)


def main() -> int:
    mount, reference, seconds, number = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), \
        int(sys.argv[4])
    paths = sys.argv[5:]
    sizes = {p: (reference / p).stat().st_size for p in paths}
    deadline = time.monotonic() + seconds

    @seed(number)
    @settings(max_examples=25, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(reads(paths, sizes), st.sampled_from([0, 4096, 128 << 10, 1 << 20]))
    def check(case, chunk):
        path, ranges = case
        expected = (reference / path).read_bytes()
        fd = os.open(mount / path, os.O_RDONLY)
        try:
            if chunk:
                assert sequential(fd, chunk) == expected, f"sequential read of {path}"
            for offset, length in ranges:
                got = os.pread(fd, length, offset)
                assert got == expected[offset:offset + length], f"{path} at {offset}+{length}"
        finally:
            # Drop the pages from the kernel's cache, so that the next read reaches the daemon.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)

    batches = 0
    while time.monotonic() < deadline:
        check()
        batches += 1
        number += 1000
        check = seed(number)(check)
    print(f"{batches} batches", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
