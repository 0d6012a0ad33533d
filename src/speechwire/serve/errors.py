"""OpenAI-shaped JSON errors and the upload-size limit.

Every failure answers `{"error": {"message", "type", "param", "code"}}` with a 4xx/5xx status,
never a traceback: bad requests are `invalid_request_error` (400, 404, 405, 413), a full queue is
`server_busy` (503), anything unexpected is `server_error` (500, the traceback goes to the log).

`BodyLimit` is an ASGI middleware that refuses bodies over the limit before they are parsed: by
their Content-Length at once, or while they stream (chunked uploads). It reads and discards the
rest of an oversize body (up to DRAIN_FACTOR x the limit), so a client still sending gets the 413
answer instead of a broken pipe.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

DRAIN_FACTOR = 8  # an oversize body is read (and dropped) up to this many times the limit
ECHO_CHARS = 80  # most characters of a client's value an error message repeats


def clip(value: str, limit: int = ECHO_CHARS) -> str:
    """A client's value as an error message may repeat it: at most `limit` characters, then how long it was."""
    value = str(value)
    return value if len(value) <= limit else f"{value[:limit]}... ({len(value)} characters)"


def shown(value: str, limit: int = ECHO_CHARS) -> str:
    """`repr` of a client's value, clipped: `'abc'`, or `'abcd...' (100000 characters)`."""
    value = str(value)
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} characters)"


async def drain_body(receive, limit: int, already: int = 0) -> None:
    """Read and drop the rest of a request body, up to `limit` bytes in all, so that a client still
    sending gets to read the answer (413, 401) instead of a reset connection."""
    total = already
    while total <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        total += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class APIError(Exception):
    """An error answered to the client as OpenAI's JSON error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type


class UploadTooLarge(Exception):
    """Raised from the request body stream once more than the limit has arrived."""


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


async def send_json(send, status: int, content: dict, *headers: tuple[bytes, bytes]) -> None:
    """Answer an ASGI request with `content` as JSON, from a middleware (no Response object there)."""
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type, param, code), status_code=status)


def too_large_message(limit_bytes: int) -> str:
    return (f"the upload is larger than the server's limit of {limit_bytes / 2**20:g} MB; send a shorter or "
            f"compressed recording (flac, mp3, ogg), or start the server with a larger --max-upload-mb")


def install_error_handlers(app: FastAPI) -> None:
    """Answer framework errors (404, 405, malformed forms, validation) in OpenAI's shape."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.type, exc.param, exc.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(exc.status_code, str(exc.detail), kind, None, code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        param = str(first.get("loc", ["", None])[-1]) if first else None
        return error_response(400, f"invalid request: {first.get('msg', 'bad parameters')}", param=param)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, f"internal error ({type(exc).__name__}); the server log has the details",
                              "server_error", None, "internal_error")


class BodyLimit:
    """ASGI middleware: request bodies larger than `max_bytes` get a 413 JSON error."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"-1"))
        except ValueError:
            declared = -1
        if declared > self.max_bytes:
            await drain_body(receive, DRAIN_FACTOR * self.max_bytes)
            await send_json(send, 413, error_body(too_large_message(self.max_bytes), param="file", code="upload_too_large"),
                            (b"connection", b"close"))
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if message.get("more_body", False):
                        await drain_body(receive, DRAIN_FACTOR * self.max_bytes, received)
                    raise UploadTooLarge(too_large_message(self.max_bytes))
            return message

        await self.app(scope, limited_receive, send)
