"""``xrx agent-bridge``: the agent stage worker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis

from agent_bridge.agent_client import AgentClient
from agent_bridge.session import AgentSession
from shared.config import Settings
from shared.keys import Stage
from shared.ownership import Acker, HandlerFactory, SessionHandler
from shared.worker import run_stage_worker


@asynccontextmanager
async def setup(settings: Settings, r: Redis) -> AsyncIterator[HandlerFactory]:
    agent = AgentClient(settings)

    async def open_session(sid: str, acker: Acker) -> SessionHandler:
        return AgentSession(r, settings, agent, sid, acker)

    try:
        yield open_session
    finally:
        await agent.aclose()


def run() -> None:
    run_stage_worker(Stage.AGENT_BRIDGE, "agent-bridge", setup)
