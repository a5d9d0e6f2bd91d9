"""The floor under a Python gateway: Uvicorn and one pooled HTTP client forwarding each request, nothing else.

    UPSTREAM=http://127.0.0.1:8001 BARE_PROXY_CLIENT=httptools python -m uvicorn --app-dir scripts/peers \
        bare_proxy:app --loop uvloop --http httptools --no-access-log --port 8110

It forwards the method, path, query, body and the two content headers (Content-Type and the Open
Inference Protocol's Inference-Header-Content-Length) to UPSTREAM and sends the answer back. No keys,
rate limits, request IDs, logs, metrics, timings, breakers or error mapping: what ModelGate's gateway
costs above this proxy is what its features cost, and what this proxy costs is what the server and the
HTTP client cost before any feature (`make bench` measures both side by side). The client is the
gateway's own (`httptools`: gateway.http1, behind httpx's transport API, the default) or aiohttp's
(`aiohttp`: one ClientSession).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import httpx

from gateway.http1 import Http1Transport

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

UPSTREAM = os.environ.get("UPSTREAM", "http://127.0.0.1:8001").rstrip("/")
FORWARDED = (b"content-type", b"inference-header-content-length")
RETURNED = ("Content-Type", "Inference-Header-Content-Length")

CLIENT = os.environ.get("BARE_PROXY_CLIENT", "httptools")

_session: aiohttp.ClientSession | None = None
_transport = Http1Transport(max_connections=100, keepalive_seconds=4.0)


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
            await _transport.aclose()
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
    body = b"".join(chunks)
    if CLIENT == "httptools":
        request = httpx.Request(scope["method"], url, content=body, headers=headers)
        response = await _transport.handle_async_request(request)
        status, content, answer_headers = response.status_code, response.content, dict(response.headers)
    else:
        async with _session.request(scope["method"], url, data=body, headers=headers) as answer:
            status, content, answer_headers = answer.status, await answer.read(), dict(answer.headers)
    found = {k.lower(): v for k, v in answer_headers.items()}
    returned = [(k.lower().encode(), found[k.lower()].encode()) for k in RETURNED if k.lower() in found]
    await send({"type": "http.response.start", "status": status, "headers": returned})
    await send({"type": "http.response.body", "body": content})
