"""The floor under a Python gateway: Uvicorn and one aiohttp session forwarding each request, nothing else.

    UPSTREAM=http://127.0.0.1:8001 python -m uvicorn --app-dir scripts/peers bare_proxy:app \
        --loop uvloop --http httptools --no-access-log --port 8110

It forwards the method, path, query, body and the two content headers (Content-Type and the Open
Inference Protocol's Inference-Header-Content-Length) to UPSTREAM and sends the answer back. No keys,
rate limits, request IDs, logs, metrics, timings, breakers or error mapping: what ModelGate's gateway
costs above this proxy is what its features cost, and what this proxy costs is what the server and the
HTTP client cost before any feature (`make bench` measures both side by side).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

UPSTREAM = os.environ.get("UPSTREAM", "http://127.0.0.1:8001").rstrip("/")
FORWARDED = (b"content-type", b"inference-header-content-length")
RETURNED = ("Content-Type", "Inference-Header-Content-Length")

_session: aiohttp.ClientSession | None = None


async def _lifespan(receive: Receive, send: Send) -> None:
    global _session
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if _session is not None:
                await _session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    assert scope["type"] == "http" and _session is not None
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    headers = {k.decode(): v.decode() for k, v in scope["headers"] if k in FORWARDED}
    query = scope["query_string"].decode()
    url = UPSTREAM + scope["path"] + (f"?{query}" if query else "")
    async with _session.request(scope["method"], url, data=b"".join(chunks), headers=headers) as answer:
        body = await answer.read()
        returned = [(k.lower().encode(), answer.headers[k].encode()) for k in RETURNED if k in answer.headers]
        status = answer.status
    await send({"type": "http.response.start", "status": status, "headers": returned})
    await send({"type": "http.response.body", "body": body})
