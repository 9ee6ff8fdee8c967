"""Logging, the same in the daemon and in its S3 process (whose stderr is the daemon's)."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(level: str) -> None:
    """Log to stderr: a terminal in the foreground, the log file in the background, and the
    journal under systemd (which stamps the time itself)."""
    journal = bool(os.environ.get("JOURNAL_STREAM"))
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s" if journal
        else "%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if level != "DEBUG":
        for noisy in ("botocore", "aiobotocore", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
