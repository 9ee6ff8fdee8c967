"""FUSE: the kernel's requests answered from the namespace (the only package that imports
pyfuse3, beside the daemon that runs it)."""

from .attributes import Attributes
from .operations import Operations

__all__ = ["Attributes", "Operations"]
