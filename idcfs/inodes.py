"""Inode numbers: what a node is, read from its number alone, so nothing is allocated per inode
and `forget` has nothing to free.

64 bits: the top byte is the node's kind: the depth of a directory in the layout (1 for the
first level; the root is inode 1), FILE for a file, ABOUT for /.idcfs and its files. Below it, a
directory keeps its run number on its level; a file keeps its series row in bits 24-55 and its
position in the series' listing in bits 0-23 (the largest IDC series has ~92k instances); an
/.idcfs node keeps its number (0 for the directory).
"""

from __future__ import annotations

ROOT = 1
FILE = 0x7F
ABOUT = 0x7E  # above any layout's depth
MAX_DEPTH = ABOUT - 1
_KIND_SHIFT = 56
_ROW_SHIFT = 24
_LOW_MASK = (1 << _ROW_SHIFT) - 1
_INDEX_MASK = (1 << _KIND_SHIFT) - 1
_ROW_MASK = (1 << (_KIND_SHIFT - _ROW_SHIFT)) - 1
MAX_POSITION = _LOW_MASK


def directory(depth: int, index: int) -> int:
    return ROOT if depth == 0 else (depth << _KIND_SHIFT) | index


def file(row: int, position: int) -> int:
    return (FILE << _KIND_SHIFT) | (row << _ROW_SHIFT) | position


def about(number: int) -> int:
    return (ABOUT << _KIND_SHIFT) | number


def kind(inode: int) -> int:
    """The depth of a directory (0: the root), FILE or ABOUT."""
    return 0 if inode == ROOT else inode >> _KIND_SHIFT


def index(inode: int) -> int:
    """A directory's run number, or an /.idcfs node's number."""
    return inode & _INDEX_MASK


def row_and_position(inode: int) -> tuple[int, int]:
    """A file's series row and its position in the series' listing."""
    return (inode >> _ROW_SHIFT) & _ROW_MASK, inode & _LOW_MASK
