"""API-key check done before the WebSocket is accepted."""

from __future__ import annotations

import hmac

from starlette.websockets import WebSocket

HEADER = "x-api-key"
# Browsers cannot set headers on a WebSocket; the xRx React client can only change its URL.
QUERY_PARAM = "api_key"


class AuthResult:
    OK = 0
    MISSING = 401
    WRONG = 403


def check_api_key(ws: WebSocket, expected: str) -> int:
    presented = ws.headers.get(HEADER) or ws.query_params.get(QUERY_PARAM)
    if not presented:
        return AuthResult.MISSING
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        return AuthResult.WRONG
    return AuthResult.OK
