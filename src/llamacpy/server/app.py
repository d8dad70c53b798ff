"""The FastAPI application of `llamacpy serve`: routes, the gate in front of them, error shapes, the web page.

Owns: `create_app(state)`; the gate middleware (CORS as llama-server sets it, 503 "Loading model" until the
model is ready, `Authorization: Bearer KEY` checked in constant time on every route but the public ones, 413 for
bodies over the cap); turning every error -- ours, FastAPI's 404/405, unexpected exceptions -- into
{"error": {"code", "message", "type"}}; serving src/llamacpy/server/webui/ (index.html at `/`, the rest under
`/webui/`) unless --no-webui.
Must not: implement routes (routes.py) or load the model (state.py).
"""

from __future__ import annotations

import hmac
import json
import mimetypes
from pathlib import Path

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import FileResponse

from .errors import APIError, error_body
from .routes import build_router, json_response

WEBUI_DIR = Path(__file__).resolve().parent / "webui"
PUBLIC_PATHS = {"/health", "/v1/health", "/models", "/v1/models"}
DRAIN_LIMIT = 64 << 20  # an oversized body is read (and dropped) up to this much so the client sees the 413


def _send_json(send, status: int, body: dict, extra_headers=()):
    data = json.dumps(body).encode("utf-8")
    headers = [(b"content-type", b"application/json; charset=utf-8"), (b"content-length", str(len(data)).encode())]
    headers += list(extra_headers)

    async def go():
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    return go()


class Gate:
    """Pure ASGI middleware (no buffering, so streams and disconnects pass straight through)."""

    def __init__(self, app, state):
        self.app = app
        self.state = state
        self.keys = [k.encode("utf-8") for k in state.config.api_keys]
        self.max_body = state.config.max_body

    def _authorized(self, headers: dict) -> bool:
        if not self.keys:
            return True
        auth = headers.get(b"authorization", b"")
        if not auth.startswith(b"Bearer "):
            return False
        given = auth[len(b"Bearer "):]
        ok = False
        for k in self.keys:  # compare against every key, constant time each
            ok |= hmac.compare_digest(given, k)
        return ok

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        origin = headers.get(b"origin")
        cors = [(b"access-control-allow-origin", origin)] if origin else []

        async def send_cors(message):
            if cors and message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers") or []) + cors
            await send(message)

        path, method = scope.get("path", ""), scope.get("method", "GET")
        if method == "OPTIONS":  # preflight: browsers send no Authorization header
            await send_cors({"type": "http.response.start", "status": 200, "headers": [
                (b"access-control-allow-credentials", b"true"), (b"access-control-allow-methods", b"GET, POST"),
                (b"access-control-allow-headers", b"*"), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        static = path == "/" or path.startswith("/webui/")
        if not static and not self.state.ready:
            st = self.state
            if st.status == "failed":
                body = error_body(f"model failed to load: {st.error}", 500, "server_error")
                return await _send_json(send_cors, 500, body)
            code = 503
            return await _send_json(send_cors, code, error_body("Loading model", code, "unavailable_error"))
        if not static and path not in PUBLIC_PATHS and not self._authorized(headers):
            await _drain(receive, DRAIN_LIMIT)
            return await _send_json(send_cors, 401, error_body("Invalid API Key", 401, "authentication_error"))
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                n = -1
            if n < 0:
                return await _send_json(send_cors, 400, error_body("invalid Content-Length", 400,
                                                                   "invalid_request_error"))
            if n > self.max_body:
                await _drain(receive, DRAIN_LIMIT)
                msg = f"request body too large ({n} bytes; the limit is {self.max_body})"
                return await _send_json(send_cors, 413, error_body(msg, 413, "invalid_request_error"),
                                        [(b"connection", b"close")])
        await self.app(scope, receive, send_cors)


async def _drain(receive, limit: int) -> None:
    """Read and drop a request body (up to `limit` bytes), so the client gets our answer, not a reset."""
    seen = 0
    while seen <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def create_app(state) -> FastAPI:
    app = FastAPI(title="llamacpy", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(build_router(state))

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return json_response(exc.body(), exc.code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return json_response(error_body("File Not Found", 404, "not_found_error"), 404)
        if exc.status_code == 405:
            return json_response(error_body(f"method {request.method} not allowed on {request.url.path}", 405,
                                            "invalid_request_error"), 405)
        return json_response(error_body(str(exc.detail), exc.status_code, "invalid_request_error"), exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        state.log(f"error on {request.url.path}: {type(exc).__name__}: {exc}")
        return json_response(error_body(f"{type(exc).__name__}: {exc}", 500, "server_error"), 500)

    if state.config.webui and WEBUI_DIR.is_dir():
        mount_webui(app, WEBUI_DIR)
    return Gate(app, state)


def mount_webui(app: FastAPI, root: Path) -> None:
    """GET / -> webui/index.html; GET /webui/PATH -> that file (no directory escapes). No key needed: the page
    asks the user for it and sends it with its API calls."""
    root = root.resolve()

    @app.get("/")
    async def index():
        page = root / "index.html"
        if not page.is_file():
            return json_response(error_body("File Not Found", 404, "not_found_error"), 404)
        return FileResponse(page, media_type="text/html; charset=utf-8")

    @app.get("/webui/{path:path}")
    async def asset(path: str):
        target = (root / path).resolve()
        if root not in target.parents or not target.is_file():
            return json_response(error_body("File Not Found", 404, "not_found_error"), 404)
        media = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        return FileResponse(target, media_type=media)
