"""An HTTP proxy that breaks requests on purpose, in front of an S3 endpoint.

Faults are set over HTTP (`POST /_faults` with JSON, `DELETE /_faults` to clear) and apply to
object GETs whose path contains `match`, for the next `count` requests (or all, with count -1):

* `status`   answer 503 SlowDown (or `code`) instead of the object;
* `reset`    drop the connection without an answer;
* `stall`    send the headers and half the body, then nothing, until the client gives up;
* `silent`   send the headers, then nothing;
* `truncate` promise the full Content-Length, send half the body, close;
* `flip`     send a body of the right length with one byte changed;
* `garbage`  (listings, with `"listing": true`) a listing whose `field` is garbage: `Size` not a
  number, a `Key` outside the prefix, or `IsTruncated` true without a continuation token.

It speaks HTTPS on both sides when given a certificate and the CA that vouches for upstream.

    python tests/faultproxy.py LISTEN_PORT UPSTREAM_URL [CERT KEY CA]
"""

from __future__ import annotations

import asyncio
import re
import ssl
import sys

import aiohttp
from aiohttp import web


GARBAGE = {
    "Size": lambda xml: re.sub(r"<Size>\d+</Size>", "<Size>lots</Size>", xml, count=1),
    "Key": lambda xml: re.sub(r"<Key>[^<]*</Key>", "<Key>elsewhere/x.dcm</Key>", xml, count=1),
    "IsTruncated": lambda xml: re.sub(r"<IsTruncated>false</IsTruncated>",
                                      "<IsTruncated>true</IsTruncated>", xml),
}


def make_app(upstream: str, upstream_ca: str | None = None) -> web.Application:
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
        if not faults or request.method != "GET":
            return None
        if bool(request.query) != bool(faults.get("listing")):
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
            trust = ssl.create_default_context(cafile=upstream_ca) if upstream_ca else None
            session["client"] = aiohttp.ClientSession(
                auto_decompress=False, connector=aiohttp.TCPConnector(ssl=trust or True))
        async with session["client"].request(request.method, upstream + request.path_qs,
                                             headers=headers) as up:
            body = await up.read()
            passed = {k: v for k, v in up.headers.items()
                      if k.lower() in ("content-type", "etag", "content-range", "last-modified",
                                       "accept-ranges")}
            if mode in ("stall", "silent", "truncate"):
                response = web.StreamResponse(status=up.status, headers=passed)
                response.content_length = len(body)
                await response.prepare(request)
                if mode != "silent":
                    await response.write(body[: len(body) // 2])
                if mode in ("stall", "silent"):
                    await asyncio.sleep(3600)
                request.transport.close()
                return response
            if mode == "flip" and body:
                body = body[:-1] + bytes([body[-1] ^ 0xFF])
            if mode == "garbage":
                body = GARBAGE[faults.get("field", "Size")](body.decode()).encode()
            return web.Response(status=up.status, body=body, headers=passed)

    app = web.Application()
    app.router.add_route("*", "/_faults", control)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


if __name__ == "__main__":
    context, ca = None, None
    if len(sys.argv) > 3:
        cert, key, ca = sys.argv[3:6]
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
    web.run_app(make_app(sys.argv[2].rstrip("/"), ca), host="127.0.0.1", port=int(sys.argv[1]),
                ssl_context=context, print=None, access_log=None)
