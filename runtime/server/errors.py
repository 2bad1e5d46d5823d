"""OpenAI-shaped error bodies and the middleware that produces them for every failure.

Every error a client sees has the body ``{"error": {"message", "type", "param", "code"}}``:
``FerrumError`` subclasses carry their own status/type/code, aiohttp's HTTP exceptions (unknown
route, wrong method, body over the size limit) are re-shaped, and anything else is an internal
error: logged with its traceback and answered with a 500 that names the request id, so one bad
request never takes the server down.
"""

from __future__ import annotations

import logging
import uuid

from aiohttp import web

from ferrum.errors import FerrumError, OverloadedError

log = logging.getLogger("ferrum.server")

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID = web.RequestKey("request_id", str)


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def ferrum_error_body(exc: FerrumError) -> dict:
    return error_body(exc.message, exc.error_type, exc.param, exc.code)


def error_response(status: int, message: str, error_type: str, param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(error_body(message, error_type, param, code), status=status, headers=headers)


def ferrum_error_response(exc: FerrumError) -> web.Response:
    headers = {}
    if isinstance(exc, OverloadedError):
        headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    return web.json_response(ferrum_error_body(exc), status=exc.status, headers=headers)


_HTTP_TYPES = {
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
}


def http_exception_response(request: web.Request, exc: web.HTTPException) -> web.StreamResponse:
    """Re-shape aiohttp's own HTTP errors; successes and redirects pass through untouched."""
    if exc.status < 400:
        return exc
    message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
    if exc.status == 413:
        message = f"request body too large: {exc.text}"
    elif exc.status == 404:
        message = f"no route for {request.method} {request.path}"
    elif exc.status == 405:
        message = f"method {request.method} not allowed for {request.path}"
    headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate", "retry-after")}
    return error_response(exc.status, message, _HTTP_TYPES.get(exc.status, "invalid_request_error"),
                          code=str(exc.status), headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Tag the request with an id and turn every exception into an OpenAI-shaped response."""
    request_id = uuid.uuid4().hex  # never the client's: engines key their requests by it
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except FerrumError as exc:
        response = ferrum_error_response(exc)
    except web.HTTPException as exc:
        response = http_exception_response(request, exc)
    except Exception:
        log.exception("internal error in %s %s (request %s)", request.method, request.path, request_id)
        response = error_response(500, f"internal server error (request id {request_id})", "internal_error",
                                  code="internal_error")
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response
