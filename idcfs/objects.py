"""What every layer reads: an immutable object, named by bucket and key, and its blocks."""

from __future__ import annotations

from dataclasses import dataclass

BLOCK_SIZE = 1 << 20


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """An immutable object, its size and ETag (from the series listing)."""

    bucket: str
    key: str
    size: int
    etag: str | None = None

    def blocks(self, block_size: int = BLOCK_SIZE) -> int:
        return -(-self.size // block_size)

    def block_length(self, index: int, block_size: int = BLOCK_SIZE) -> int:
        """The length of block index: block_size, or what is left for the last one."""
        return min(block_size, self.size - index * block_size)


def runs(indexes: list[int]) -> list[list[int]]:
    """Consecutive runs of sorted block numbers: [1, 2, 3, 7, 8] -> [[1, 2, 3], [7, 8]]."""
    found: list[list[int]] = []
    for i in indexes:
        if found and found[-1][-1] == i - 1:
            found[-1].append(i)
        else:
            found.append([i])
    return found


class Blocks(list):
    """Blocks as a source answered them: a list of bytes, and their MD5 (hex) when the source
    hashed them as they arrived (None: not hashed)."""

    md5: str | None = None
