"""The demo reasoning agent's HTTP app (xRx agent protocol)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import structlog
import uvicorn
from prometheus_client import Counter
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.agent.tasks import TaskRegistry, TurnStreamResponse
from services.agent.turn import TurnRequest, run_turn
from shared.config import Settings
from shared.health import metrics
from shared.protocols import SESSION_GUID
from shared.startup import start

log = structlog.get_logger(__name__)


TURNS = Counter("xrx_demo_agent_turns_total", "Agent turns started", ["kind"])


def create_app(settings: Settings) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.tasks = TaskRegistry()
        # Only the LLM mode uses it; a long read timeout because models can be slow to start.
        app.state.http = httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=5.0))
        log.info("agent_started", llm=bool(settings.LLM_BASE_URL), model=settings.LLM_MODEL)
        try:
            yield
        finally:
            await app.state.tasks.aclose()
            await app.state.http.aclose()

    async def run_agent(request: Request) -> Response:
        try:
            body = await request.json()
            turn = TurnRequest.model_validate(body)
        except ValueError as exc:  # JSONDecodeError and ValidationError are both ValueErrors
            detail = _describe(exc)
            log.info("agent_bad_request", detail=detail)
            return JSONResponse({"detail": detail}, status_code=400)
        tasks: TaskRegistry = request.app.state.tasks
        task_id, body_iter = tasks.start(run_turn(turn, settings, request.app.state.http))
        TURNS.labels("action" if turn.action else "message").inc()
        log.info(
            "agent_turn_started",
            task_id=task_id,
            session_id=turn.session.get(SESSION_GUID),
            action=turn.action.type if turn.action else None,
        )
        return TurnStreamResponse(body_iter, task_id, tasks.finish)

    async def cancel_agent(request: Request) -> Response:
        task_id = request.path_params["task_id"]
        if not request.app.state.tasks.cancel(task_id):
            return JSONResponse({"detail": "task not found"}, status_code=404)
        return JSONResponse({"detail": f"task {task_id} cancelled"})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        return JSONResponse({"status": "ready"})

    routes = [
        Route(settings.AGENT_PATH, run_agent, methods=["POST"]),
        Route(settings.AGENT_CANCEL_PATH.rstrip("/") + "/{task_id}", cancel_agent,
              methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _describe(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return f"invalid request: {where}: {first['msg']}"
    return "invalid request: body must be a JSON object"


def run() -> None:
    settings = start("demo-agent")
    # log_config=None: logging is configured above, not by uvicorn.
    uvicorn.run(create_app(settings), host="0.0.0.0", port=settings.AGENT_PORT, log_config=None)
