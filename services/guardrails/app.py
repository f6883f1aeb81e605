"""The guardrails proxy: forwards everything to the agent, refusing agent turns whose latest
user message breaks a rule."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import structlog
import uvicorn
from prometheus_client import Counter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.guardrails.proxy import forward
from services.guardrails.rules import DenyList, Violation, deny_list, last_user_text
from shared.config import Settings
from shared.health import metrics
from shared.protocols import TASK_ID_HEADER, AgentField, session_id_of, sse_event
from shared.startup import start

log = structlog.get_logger(__name__)

_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _parsed(body: bytes) -> object:
    try:
        return json.loads(body)
    except ValueError:
        return None  # not JSON: the agent rejects it with its own 400


def _violation(rules: DenyList, parsed: object) -> Violation | None:
    if parsed is None:
        return None
    # A widget action carries no new user words; re-checking the old message would block
    # every button press after a refused turn.
    if isinstance(parsed, dict) and parsed.get(AgentField.ACTION):
        return None
    text = last_user_text(parsed)
    return rules.check(text) if text else None


REFUSALS = Counter("xrx_guardrails_refusals_total", "Agent calls refused", ["rule"])


def _refusal(violation: Violation) -> Response:
    return Response(
        sse_event({AgentField.GUARDRAILS: [violation.as_dict()]}),
        media_type="text/event-stream",
        # The orchestrator expects a task id on every agent stream; nothing runs under it.
        headers={TASK_ID_HEADER: str(uuid.uuid4()), "Cache-Control": "no-cache"},
    )


def create_app(settings: Settings) -> Starlette:
    agent_url = f"http://{settings.AGENT_HOST}:{settings.AGENT_PORT}"
    rules = deny_list(settings.guardrails_deny_list)
    agent_path = settings.AGENT_PATH.rstrip("/")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # No read timeout: agent turns may pause for long; the caller decides when to give up
        # and its disconnect closes the upstream request.
        timeout = httpx.Timeout(None, connect=5.0)
        app.state.http = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        log.info("guardrails_started", agent=agent_url, deny_words=len(rules.words))
        try:
            yield
        finally:
            await app.state.http.aclose()

    async def proxy(request: Request) -> Response:
        body = await request.body()
        sid = None
        if request.method == "POST" and request.url.path.rstrip("/") == agent_path:
            parsed = _parsed(body)
            sid = session_id_of(parsed)
            violation = _violation(rules, parsed)
            if violation is not None:
                log.info("guardrails_refused", rule=violation.rule, match=violation.match,
                         session_id=sid)
                REFUSALS.labels(violation.rule).inc()
                return _refusal(violation)
        try:
            return await forward(request.app.state.http, agent_url, request, body)
        except httpx.HTTPError as exc:
            log.warning("agent_unreachable", agent=agent_url, error=repr(exc), session_id=sid)
            return JSONResponse({"detail": "agent unavailable"}, status_code=502)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            resp = await request.app.state.http.get(f"{agent_url}/healthz", timeout=2.0)
        except httpx.HTTPError:
            return JSONResponse({"status": "agent unavailable"}, status_code=503)
        if resp.status_code != 200:
            return JSONResponse({"status": "agent not healthy"}, status_code=503)
        return JSONResponse({"status": "ready"})

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/{path:path}", proxy, methods=_METHODS),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def run() -> None:
    settings = start("guardrails")
    # log_config=None: logging is configured above, not by uvicorn.
    uvicorn.run(
        create_app(settings), host="0.0.0.0", port=settings.GUARDRAILS_AGENT_PORT, log_config=None
    )
