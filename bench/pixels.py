"""What a workload read, in a few milliseconds: the CRC-32 (zlib-ng's) of arrays of pixels and
their shapes, printed by the workload and compared with the same workload run on the objects.
A SHA-256 of a 150 MB volume took ~0.3 s, which would have been timed with the load."""

from __future__ import annotations

import numpy as np
from zlib_ng import zlib_ng


def crc(*arrays: np.ndarray) -> str:
    value = 0
    for pixels in arrays:
        value = zlib_ng.crc32(repr(pixels.shape).encode(), value)
        value = zlib_ng.crc32(np.ascontiguousarray(pixels).data.cast("B"), value)
    return f"{value:08x}"
