"""Reversible mapping between index values and file names.

Index values go into names unchanged whenever they are safe, so that a path under the mount is
the path `idc download` would have written. A value is escaped only where it could not be a name
or could be confused with another value:

* ``%`` becomes ``%25`` (so that every ``%`` in a name starts an escape and decoding is exact);
* ``/`` becomes ``%2F`` and NUL becomes ``%00`` (they cannot appear in a name);
* the whole values ``.`` and ``..`` become ``%2E`` and ``%2E%2E`` (they mean something else);
* the empty value becomes a lone ``%`` (no escape sequence can produce it).

Every name has exactly one decoding and every value exactly one encoding; `decode` rejects names
that are not the canonical encoding of anything (``%41``, ``%zz``), so two different names never
reach the same index row. Names the kernel hands us that are not valid UTF-8 cannot be an index
value (the index is UTF-8 text) and decode to None.
"""

from __future__ import annotations

import re

EMPTY_NAME = "%"
NAME_MAX = 255  # bytes in one file name, as Linux filesystems allow
_NEEDS_ESCAPE = re.compile(r"[%/\x00]")
_ESCAPES = {"%": "%25", "/": "%2F", "\x00": "%00"}
_SEQUENCE = re.compile(r"%(25|2F|00)")
_UNESCAPES = {"25": "%", "2F": "/", "00": "\x00"}


def encode(value: str) -> str:
    """Return the file name that stands for an index value."""
    if value == "":
        return EMPTY_NAME
    if value == ".":
        return "%2E"
    if value == "..":
        return "%2E%2E"
    if _NEEDS_ESCAPE.search(value) is None:
        return value
    return _NEEDS_ESCAPE.sub(lambda m: _ESCAPES[m.group(0)], value)


def decode(name: str | bytes) -> str | None:
    """Return the index value a file name stands for, or None if no value encodes to it."""
    if isinstance(name, bytes):
        try:
            name = name.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if name == EMPTY_NAME:
        return ""
    if name == "%2E":
        return "."
    if name == "%2E%2E":
        return ".."
    value = _SEQUENCE.sub(lambda m: _UNESCAPES[m.group(1)], name) if "%" in name else name
    return value if encode(value) == name else None
