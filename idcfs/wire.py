"""The messages between the daemon and its S3 process: length-prefixed pickles on a socket pair.

Both ends are idcfs's own processes on a socket pair made for them and never exposed, so pickle
is safe here. Messages are small tuples (a request, an answer's block sizes and MD5, a listing);
the bytes of the blocks themselves go through shared memory (s3/serve.py, source_process.py).
"""

from __future__ import annotations

import pickle
import struct

HEADER = struct.Struct("<I")

# Requests: (id, GET, bucket, key, start, length, block_size, places), (id, LIST, bucket, prefix,
# expected), (id, CANCEL). Answers: (id, OK, value, status), (id, FAILED, message, status), where
# status is the source's (health as a dict, requests hedged so far); and once, at start,
# (0, READY, None, status) or (0, FAILED, message, None).
GET, LIST, CANCEL = "get", "list", "cancel"
OK, FAILED, READY = "ok", "failed", "ready"


def frame(message: tuple) -> bytes:
    """message as one frame for the socket."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


def unframe(body: bytes) -> tuple:
    """The message in one frame's body."""
    return pickle.loads(body)
