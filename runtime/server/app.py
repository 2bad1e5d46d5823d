"""The aiohttp application: routes, auth, CORS and the middleware order.

Middleware, outermost first: metrics (sees the final status of everything), CORS (adds its
headers to errors too, answers preflights), errors (OpenAI-shaped bodies), auth (``/v1/*`` only;
``/health``, ``/metrics`` and the docs stay open).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from ferrum.engine import LlmInferenceEngine
from ferrum.metrics import HealthStatusType
from ferrum.serde import to_json
from runtime.server import completions, media
from runtime.server.errors import error_middleware, error_response
from runtime.server.limits import RequestLimits
from runtime.server.models import ServedModels, modality_of
from runtime.server.openai_schema import parse_chat, parse_completion, parse_json_object
from runtime.server.openapi import openapi_document
from runtime.server.prom_metrics import CONTENT_TYPE, ServerMetrics

MODELS = web.AppKey("models", ServedModels)
METRICS = web.AppKey("metrics", ServerMetrics)
LIMITS = web.AppKey("limits", RequestLimits)


@dataclass
class ServerOptions:
    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    limits: RequestLimits = field(default_factory=RequestLimits)


def _auth_middleware(api_key: str):
    expected = f"Bearer {api_key}".encode()

    @web.middleware
    async def auth(request: web.Request, handler):
        if request.path.startswith("/v1/"):
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return error_response(401, "invalid or missing API key: send 'Authorization: Bearer <key>'",
                                      "authentication_error", code="invalid_api_key",
                                      headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return auth


def _cors_middleware(origins: list[str]):
    allow_any = "*" in origins

    @web.middleware
    async def cors(request: web.Request, handler):
        origin = request.headers.get("Origin")
        allowed = origin is not None and (allow_any or origin in origins)
        if allowed and request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response = web.Response(status=204, headers={
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": request.headers.get("Access-Control-Request-Headers",
                                                                    "Authorization, Content-Type"),
                "Access-Control-Max-Age": "600",
            })
        else:
            response = await handler(request)
        if allowed and not response.prepared:
            response.headers["Access-Control-Allow-Origin"] = "*" if allow_any else origin
            response.headers["Vary"] = "Origin"
        return response

    return cors


# -- handlers -------------------------------------------------------------------------------------
async def chat_completions(request: web.Request) -> web.StreamResponse:
    parsed = parse_chat(parse_json_object(await request.read()), request.app[LIMITS])
    engine = request.app[MODELS].get(parsed.model, LlmInferenceEngine)
    return await completions.generate(request, engine, parsed)


async def text_completions(request: web.Request) -> web.StreamResponse:
    parsed = parse_completion(parse_json_object(await request.read()), request.app[LIMITS])
    engine = request.app[MODELS].get(parsed.model, LlmInferenceEngine)
    return await completions.generate(request, engine, parsed)


async def embeddings(request: web.Request) -> web.Response:
    return await media.embeddings(request, request.app[MODELS], request.app[LIMITS])


async def transcriptions(request: web.Request) -> web.Response:
    return await media.transcriptions(request, request.app[MODELS], request.app[LIMITS])


async def speech(request: web.Request) -> web.Response:
    return await media.speech(request, request.app[MODELS], request.app[LIMITS])


async def list_models(request: web.Request) -> web.Response:
    return web.json_response(request.app[MODELS].openai_list())


_ORDER = [HealthStatusType.Healthy, HealthStatusType.Warning, HealthStatusType.Unhealthy]


async def health(request: web.Request) -> web.Response:
    """The worst model's ``HealthStatus`` JSON, plus every model's under ``models``; 503 when unhealthy."""
    reports = {name: await engine.health_check() for name, engine in request.app[MODELS].engines.items()}
    worst = max(reports.values(), key=lambda h: _ORDER.index(h.status))
    body = {**to_json(worst), "models": {name: to_json(h) for name, h in reports.items()}}
    return web.json_response(body, status=503 if worst.status is HealthStatusType.Unhealthy else 200)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE})


async def status(request: web.Request) -> web.Response:
    """EngineStatus, EngineMetrics and (LLM engines) CacheStats / SchedulerStats and the device
    (name, driver, memory: ``runtime.tvm_env.describe_device``) of every model."""
    out = {}
    for name, engine in request.app[MODELS].engines.items():
        cache = getattr(engine, "cache_stats", None)
        scheduler = getattr(engine, "scheduler_stats", None)
        device = getattr(engine, "device_info", None)
        out[name] = {
            "modality": modality_of(engine),
            "status": to_json(await engine.status()),
            "metrics": to_json(engine.metrics()),
            "cache": to_json(cache()) if callable(cache) else None,
            "scheduler": to_json(scheduler()) if callable(scheduler) else None,
            "device": device() if callable(device) else None,
        }
    return web.json_response({"models": out})


_CHAT_PAGE = Path(__file__).with_name("chat_page.html")


async def chat_page(request: web.Request) -> web.Response:
    """A one-file chat UI that streams from /v1/chat/completions with fetch."""
    return web.Response(body=_CHAT_PAGE.read_bytes(), content_type="text/html", charset="utf-8")


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(request.app[MODELS], request.app[LIMITS]))


def build_app(models: ServedModels, options: ServerOptions | None = None) -> web.Application:
    options = options or ServerOptions()
    server_metrics = ServerMetrics(models.engines)
    middlewares = [server_metrics.middleware]
    if options.cors_origins:
        middlewares.append(_cors_middleware(options.cors_origins))
    middlewares.append(error_middleware)
    if options.api_key:
        middlewares.append(_auth_middleware(options.api_key))
    app = web.Application(middlewares=middlewares, client_max_size=options.limits.max_body_bytes)
    app[MODELS] = models
    app[METRICS] = server_metrics
    app[LIMITS] = options.limits
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", text_completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    app.router.add_post("/v1/audio/speech", speech)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/", chat_page)
    return app
