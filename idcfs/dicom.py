"""What idcfs needs to know of a DICOM file's bytes: whether its encapsulated frames come with
an offset table, which tells how a reader will read it."""

from __future__ import annotations

import io
import struct

_PIXEL_DATA = b"\xe0\x7f\x10\x00"
_ITEM = b"\xfe\xff\x00\xe0"


def has_offset_table(head: bytes) -> bool | None:
    """Whether the file whose first bytes are head gives its frames' offsets: an Extended Offset
    Table, or a Basic Offset Table that is not empty. None when head does not reach the first
    item of encapsulated Pixel Data (or the file has none)."""
    import pydicom  # only for slides: a viewer opening one pays its import once

    try:
        buffer = io.BytesIO(head)
        ds = pydicom.dcmread(buffer, stop_before_pixels=True, force=True)
        if "ExtendedOffsetTable" in ds:
            return True
        at = buffer.tell()
    except Exception:  # noqa: BLE001 - any header pydicom cannot read is simply not known
        return None
    # Encapsulated Pixel Data: its tag, OB and reserved bytes, an undefined length, then the
    # Basic Offset Table's item: its tag and its length (0 when the table is empty).
    element = head[at:at + 20]
    if len(element) < 20 or element[:4] != _PIXEL_DATA or element[12:16] != _ITEM:
        return None
    return struct.unpack_from("<I", element, 16)[0] > 0
