"""HTTP client of the reasoning agent: POST, read server-sent events, cancel."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import structlog
from httpx_aiohttp import AiohttpTransport
from httpx_sse import EventSource, SSEError

from shared.config import Settings
from shared.protocols import TASK_ID_HEADER, agent_request

log = structlog.get_logger(__name__)

class AgentUnavailable(Exception):
    """The agent could not be reached, answered an error status, or broke the protocol."""


class AgentStream:
    """One running agent call: its task id and its decoded events."""

    def __init__(self, response: httpx.Response) -> None:
        self.task_id = response.headers.get(TASK_ID_HEADER, "")
        self._source = EventSource(response)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        try:
            # EventSource reassembles events split across network reads.
            async for sse in self._source.aiter_sse():
                if not sse.data:
                    continue
                try:
                    event = json.loads(sse.data)
                except json.JSONDecodeError:
                    log.warning("agent sent an event that is not JSON", data=sse.data[:200])
                    continue
                if isinstance(event, dict):
                    yield event
        except (httpx.HTTPError, SSEError) as err:
            raise AgentUnavailable(f"agent stream broke: {err}") from err


class AgentClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base_url = settings.agent_base_url
        t = settings.AGENT_TIMEOUT_S
        # One call per turn on the hot path: aiohttp's pool under httpx's API costs a fraction
        # of httpx's own transport per request, and stays flat as calls overlap.
        self._http = httpx.AsyncClient(base_url=self.base_url, transport=AiohttpTransport(),
                                       timeout=httpx.Timeout(t, connect=5.0))

    async def aclose(self) -> None:
        await self._http.aclose()

    @asynccontextmanager
    async def run(self, messages: list[dict[str, Any]], session: dict[str, Any],
                  action: dict[str, Any] | None) -> AsyncIterator[AgentStream]:
        """Start an agent call; leaving the block early aborts the HTTP request."""
        body = agent_request(messages, session, action)
        try:
            async with self._http.stream("POST", self.settings.AGENT_PATH, json=body,
                                         headers={"Accept": "text/event-stream"}) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise AgentUnavailable(
                        f"agent answered {response.status_code}: {response.text[:200]}")
                yield AgentStream(response)
        except httpx.HTTPError as err:
            raise AgentUnavailable(f"agent unreachable at {self.base_url}: {err}") from err

    async def cancel(self, task_id: str) -> None:
        if not task_id:
            return
        try:
            await self._http.post(f"{self.settings.AGENT_CANCEL_PATH}/{task_id}", timeout=3.0)
        except httpx.HTTPError as err:
            log.warning("agent cancel failed", task_id=task_id, error=str(err))
