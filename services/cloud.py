"""What every cloud provider adapter shares: failures worded for a person, retries with
backoff for idempotent calls only, and the mapping of HTTP and WebSocket failures onto them.

The services turn a :class:`ProviderError` into a WebSocket close with code 1011 and the
error as its reason; the bridges see a closed connection, tell the user the service is
unavailable (``STT_DOWN_REPLY`` / ``TTS_DOWN_REPLY``) and simply try again next turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from typing import TypeVar

import websockets
from websockets.asyncio.client import ClientConnection

T = TypeVar("T")

RETRIES = 2  # after the first attempt: three in all, about 0.6 s of backoff at most
BACKOFF_S = 0.2
CLOSE_PROVIDER_FAILED = 1011
MAX_CLOSE_REASON = 120  # a close reason must fit in 123 bytes


class ProviderError(Exception):
    """A provider call failed; ``str()`` names the provider and says why."""

    def __init__(self, provider: str, what: str, status: int | None = None) -> None:
        self.provider, self.status = provider, status
        super().__init__(f"{provider}: {what}")

    @property
    def retryable(self) -> bool:
        """Worth another try: the provider was unreachable or failed itself. A rejected key,
        an exhausted quota or a bad request will not get better within a turn."""
        return self.status is None or self.status >= 500

    def close_reason(self) -> str:
        return str(self).encode()[:MAX_CLOSE_REASON].decode(errors="ignore")


def describe_status(status: int) -> str:
    if status in (401, 403):
        return f"the API key was rejected (HTTP {status})"
    if status == 402 or status == 429:
        return f"quota or rate limit exceeded (HTTP {status})"
    if status >= 500:
        return f"provider outage (HTTP {status})"
    return f"request refused (HTTP {status})"


def status_error(provider: str, status: int, body: str = "") -> ProviderError:
    detail = f": {body.strip()[:200]}" if body.strip() else ""
    return ProviderError(provider, describe_status(status) + detail, status)


def ws_error(provider: str, err: BaseException) -> ProviderError:
    """A WebSocket failure (refused handshake, dropped or closed connection, timeout)."""
    if isinstance(err, websockets.InvalidStatus):
        return status_error(provider, err.response.status_code,
                            err.response.body.decode(errors="replace") if err.response.body
                            else "")
    if isinstance(err, websockets.ConnectionClosed):
        code = err.rcvd.code if err.rcvd else None
        reason = err.rcvd.reason if err.rcvd else ""
        if code == 1008:  # policy violation: how WebSocket providers refuse a key in-band
            return ProviderError(provider, f"the API key was rejected ({reason or 'code 1008'})",
                                 401)
        return ProviderError(provider, f"connection dropped (code {code}) {reason}".strip())
    if isinstance(err, TimeoutError):
        return ProviderError(provider, "no answer in time")
    return ProviderError(provider, f"unreachable ({err!r})")


def ws_url(base_url: str, path: str) -> str:
    """The WebSocket URL of ``path`` on an https:// (or http:// for local fakes) base."""
    base = base_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base.removeprefix("https://")
    elif base.startswith("http://"):
        base = "ws://" + base.removeprefix("http://")
    return base + path


async def backoff(attempt: int) -> None:
    await asyncio.sleep(BACKOFF_S * 2 ** attempt)


async def with_retries(call: Callable[[], Awaitable[T]]) -> T:
    """``call()`` again after a retryable failure: only for idempotent calls."""
    for attempt in range(RETRIES + 1):
        try:
            return await call()
        except ProviderError as err:
            if not err.retryable or attempt == RETRIES:
                raise
        await backoff(attempt)
    raise AssertionError("unreachable")


async def retry_until_output(open_stream: Callable[[], AsyncGenerator[bytes, None]]
                             ) -> AsyncGenerator[bytes, None]:
    """A synthesis stream, started again after a retryable failure as long as it has yielded
    nothing: before any audio a request is idempotent, after it a retry would repeat words."""
    attempt = 0
    while True:
        started = False
        try:
            async with aclosing(open_stream()) as stream:
                async for block in stream:
                    started = True
                    yield block
            return
        except ProviderError as err:
            if started or not err.retryable or attempt == RETRIES:
                raise
        await backoff(attempt)
        attempt += 1


async def ws_connect(provider: str, url: str, headers: dict[str, str],
                     timeout_s: float) -> ClientConnection:
    """A new connection for one conversation or one synthesis, never shared between them."""
    try:
        return await asyncio.wait_for(
            websockets.connect(url, additional_headers=headers, max_size=None), timeout_s)
    except (OSError, TimeoutError, websockets.InvalidHandshake) as err:
        raise ws_error(provider, err) from err


async def ws_recv(provider: str, ws: ClientConnection, timeout_s: float) -> str | bytes:
    """The next message; a stall, a drop or a close before the provider said it was done
    are all failures."""
    try:
        return await asyncio.wait_for(ws.recv(), timeout_s)
    except (websockets.ConnectionClosed, TimeoutError) as err:
        raise ws_error(provider, err) from err
