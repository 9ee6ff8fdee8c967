"""The one failure every layer above the object store knows."""


class SourceError(Exception):
    """A request to the object store failed, or its answer was refused; the message names
    endpoint, bucket, key and cause, for the log."""
