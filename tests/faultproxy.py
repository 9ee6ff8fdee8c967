"""An HTTP proxy that breaks requests on purpose, in front of an S3 endpoint.

Faults are set over HTTP (`POST /_faults` with JSON, `DELETE /_faults` to clear) and apply to
object GETs whose path contains `match`, for the next `count` requests (or all, with count -1):

* `status`   answer 503 SlowDown (or `code`) instead of the object;
* `reset`    drop the connection without an answer;
* `stall`    send the headers and half the body, then nothing, until the client gives up;
* `truncate` promise the full Content-Length, send half the body, close;
* `flip`     send a body of the right length with one byte changed.

    python tests/faultproxy.py LISTEN_PORT UPSTREAM_URL
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp
from aiohttp import web


def make_app(upstream: str) -> web.Application:
    faults: dict = {}
    session: dict = {}

    async def control(request: web.Request) -> web.Response:
        if request.method == "DELETE":
            faults.clear()
        else:
            faults.clear()
            faults.update(await request.json())
        return web.json_response(faults)

    def fault_for(request: web.Request) -> str | None:
        if not faults or request.method != "GET" or request.query:
            return None
        if faults.get("match", "") not in request.path or faults.get("count", -1) == 0:
            return None
        if faults.get("count", -1) > 0:
            faults["count"] -= 1
        return faults["mode"]

    async def proxy(request: web.Request) -> web.StreamResponse:
        mode = fault_for(request)
        if mode == "status":
            code = faults.get("code", 503)
            body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                    b"<Message>Please reduce your request rate.</Message></Error>")
            return web.Response(status=code, body=body, content_type="application/xml")
        if mode == "reset":
            request.transport.abort()
            return web.Response(status=500)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("range",)}
        if "client" not in session:
            session["client"] = aiohttp.ClientSession(auto_decompress=False)
        async with session["client"].request(request.method, upstream + request.path_qs,
                                             headers=headers) as up:
            body = await up.read()
            passed = {k: v for k, v in up.headers.items()
                      if k.lower() in ("content-type", "etag", "content-range", "last-modified",
                                       "accept-ranges")}
            if mode in ("stall", "truncate"):
                response = web.StreamResponse(status=up.status, headers=passed)
                response.content_length = len(body)
                await response.prepare(request)
                await response.write(body[: len(body) // 2])
                if mode == "stall":
                    await asyncio.sleep(3600)
                request.transport.close()
                return response
            if mode == "flip" and body:
                body = body[:-1] + bytes([body[-1] ^ 0xFF])
            return web.Response(status=up.status, body=body, headers=passed)

    app = web.Application()
    app.router.add_route("*", "/_faults", control)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


if __name__ == "__main__":
    web.run_app(make_app(sys.argv[2].rstrip("/")), host="127.0.0.1", port=int(sys.argv[1]),
                print=None, access_log=None)
