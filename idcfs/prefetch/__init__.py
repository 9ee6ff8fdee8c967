"""Reading ahead of readers: within a file (readahead.py) and across a series (series.py), by
the policy of the series' modality (policy.py), for the open files (stream.py) the reader
(reader.py) serves."""

from .policy import Policy
from .reader import Reader
from .stream import Stream

__all__ = ["Policy", "Reader", "Stream"]
