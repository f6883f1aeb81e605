"""Streaming HTTP forwarding to the agent, without buffering responses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

# Hop-by-hop headers (RFC 9110 7.6.1) describe one connection, not the message.
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade",
})
# httpx and uvicorn set these for the connection they make.
_REQUEST_DROP = _HOP_BY_HOP | {"host", "content-length"}
# uvicorn adds its own; forwarding the agent's too would send each twice.
_RESPONSE_DROP = _HOP_BY_HOP | {"date", "server"}


def request_headers(request: Request) -> list[tuple[str, str]]:
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _REQUEST_DROP]
    if "accept-encoding" not in request.headers:
        # Otherwise httpx asks for gzip on the client's behalf, and the raw bytes passed back
        # would be compressed for a client that never said it could decode them.
        headers.append(("accept-encoding", "identity"))
    return headers


def response_headers(upstream: httpx.Response) -> list[tuple[bytes, bytes]]:
    # aiter_raw() passes bytes through undecoded, so content-encoding and content-length
    # still describe them; only connection-level headers go. multi_items() keeps repeats.
    return [
        (k.lower().encode("latin-1"), v.encode("latin-1"))
        for k, v in upstream.headers.multi_items()
        if k.lower() not in _RESPONSE_DROP
    ]


class UpstreamResponse(StreamingResponse):
    """Streams an upstream response chunk by chunk and always closes it, including when the
    client goes away mid-stream (which is how the agent learns to stop the turn)."""

    def __init__(self, upstream: httpx.Response) -> None:
        super().__init__(upstream.aiter_raw(), status_code=upstream.status_code)
        # Set after init: init_headers() would otherwise add its own content-type.
        self.raw_headers = response_headers(upstream)
        self._close: Callable[[], Awaitable[None]] = upstream.aclose

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._close()


async def forward(
    client: httpx.AsyncClient, base_url: str, request: Request, body: bytes
) -> UpstreamResponse:
    """Send ``request`` (with ``body`` already read) to ``base_url``; raises httpx errors."""
    # raw_path keeps the client's percent-encoding exactly.
    raw_path: bytes = request.scope.get("raw_path") or request.url.path.encode()
    url = base_url + raw_path.decode("latin-1")
    if request.url.query:
        url += "?" + request.url.query
    upstream_request = client.build_request(
        request.method, url, headers=request_headers(request), content=body
    )
    upstream = await client.send(upstream_request, stream=True)
    return UpstreamResponse(upstream)
