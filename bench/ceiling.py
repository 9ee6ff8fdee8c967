"""The plain-aiobotocore ceiling: what parallel unsigned GETs from Python achieve, no filesystem.

    python bench/ceiling.py series ENDPOINT BUCKET PREFIX DEST   # list, then GET every object (64 at once)
    python bench/ceiling.py object ENDPOINT BUCKET KEY           # ranged GETs of 8 MiB, 16 at once
    python bench/ceiling.py random ENDPOINT BUCKET KEY N SEED    # N random 64 KiB GETs, one at a time

It prints the wall and CPU seconds of the transfer alone, from the client made to the last
byte: starting Python and importing aiobotocore took 0.36-0.38 s of each (measured here), which
no ceiling pays per transfer and s5cmd, a Go binary, hardly pays at all.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore import UNSIGNED


async def main(mode: str, endpoint: str, bucket: str, *args: str) -> None:
    config = AioConfig(signature_version=UNSIGNED, max_pool_connections=64,
                       s3={"addressing_style": "path"})
    async with get_session().create_client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                           config=config) as s3:
        wall, cpu = time.perf_counter(), time.process_time()
        await transfer(s3, mode, bucket, *args)
        print(f"{time.perf_counter() - wall:.6f} {time.process_time() - cpu:.6f}")


async def transfer(s3, mode: str, bucket: str, *args: str) -> None:
    if mode == "series":
        prefix, dest = args
        keys = [o["Key"] async for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])]
        limit = asyncio.Semaphore(64)
        Path(dest).mkdir(parents=True, exist_ok=True)

        async def get(key: str) -> None:
            async with limit:
                resp = await s3.get_object(Bucket=bucket, Key=key)
                async with resp["Body"] as body:
                    Path(dest, key.rsplit("/", 1)[-1]).write_bytes(await body.read())

        await asyncio.gather(*(get(k) for k in keys))
    elif mode == "object":
        (key,) = args
        size = (await s3.head_object(Bucket=bucket, Key=key))["ContentLength"]
        chunk, limit = 8 << 20, asyncio.Semaphore(16)

        async def get(start: int) -> int:
            async with limit:
                resp = await s3.get_object(Bucket=bucket, Key=key,
                                           Range=f"bytes={start}-{min(size, start + chunk) - 1}")
                async with resp["Body"] as body:
                    return len(await body.read())

        assert sum(await asyncio.gather(*(get(s) for s in range(0, size, chunk)))) == size
    elif mode == "random":
        key, n, seed = args
        size = (await s3.head_object(Bucket=bucket, Key=key))["ContentLength"]
        rng = random.Random(int(seed))
        for _ in range(int(n)):
            off = rng.randrange(0, size - 65536)
            resp = await s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={off}-{off + 65535}")
            async with resp["Body"] as body:
                assert len(await body.read()) == 65536


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
