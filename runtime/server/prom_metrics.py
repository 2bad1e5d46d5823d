"""Prometheus metrics for ``GET /metrics``, in the server's own ``CollectorRegistry``.

HTTP requests by route and status are counted by the server's middleware. Token timing (time to
first token, the gaps between tokens, end-to-end latency of completed requests) and token counts
come from each engine's own telemetry events (``EngineTelemetry.observe``), the same measurements
``/v1/status`` reports, so the two cannot disagree. What the engines hold (running/waiting
requests, KV pages, prefix-cache hits) is read from each engine's published snapshot when scraped.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ferrum.engine import InferenceEngine

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class EngineCollector:
    """Reads each engine's live counters at scrape time (a prometheus_client custom collector)."""

    def __init__(self, engines: dict[str, InferenceEngine]):
        self.engines = engines

    def collect(self):
        running = GaugeMetricFamily("ferrum_requests_running", "Requests being generated", labels=["model"])
        waiting = GaugeMetricFamily("ferrum_requests_waiting", "Requests queued for the engine", labels=["model"])
        used = GaugeMetricFamily("ferrum_kv_cache_pages_used", "KV cache pages in use", labels=["model"])
        free = GaugeMetricFamily("ferrum_kv_cache_pages_free", "KV cache pages free", labels=["model"])
        hits = CounterMetricFamily("ferrum_prefix_cache_hits", "Prefix-cache lookups that matched", labels=["model"])
        misses = CounterMetricFamily("ferrum_prefix_cache_misses", "Prefix-cache lookups that missed",
                                     labels=["model"])
        for name, engine in self.engines.items():
            stats = _scheduler_stats(engine)
            if stats is not None:
                running.add_metric([name], stats.running_requests)
                waiting.add_metric([name], stats.waiting_requests)
            cache = engine.cache_metrics_snapshot()
            if cache:
                used.add_metric([name], cache["used_blocks"])
                free.add_metric([name], cache["free_blocks"])
                hits.add_metric([name], cache["cache_hits"])
                misses.add_metric([name], cache["cache_misses"])
        yield from (running, waiting, used, free, hits, misses)


def _scheduler_stats(engine: InferenceEngine) -> Any:
    stats = getattr(engine, "scheduler_stats", None)
    return stats() if callable(stats) else None


class ServerMetrics:
    """All metrics of one server; ``render`` is the body of ``GET /metrics``."""

    def __init__(self, engines: dict[str, InferenceEngine]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter("ferrum_http_requests", "HTTP requests by route, method and status",
                                     ["route", "method", "status"], registry=r)
        self.ttft = Histogram("ferrum_time_to_first_token_seconds", "Time from request arrival to its first token",
                              ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("ferrum_inter_token_latency_seconds", "Time between consecutive output tokens",
                             ["model"], buckets=_ITL_BUCKETS, registry=r)
        self.e2e = Histogram("ferrum_e2e_request_latency_seconds", "Time from request arrival to its last token",
                             ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("ferrum_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.generation_tokens = Counter("ferrum_generation_tokens", "Tokens generated", ["model"], registry=r)
        r.register(EngineCollector(engines))
        for name, engine in engines.items():
            telemetry = getattr(engine, "telemetry", None)
            if telemetry is not None:
                telemetry.observe(EngineTiming(self, name))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    @web.middleware
    async def middleware(self, request: web.Request, handler) -> web.StreamResponse:
        """Count every request by its route template (not its raw path) and final status."""
        response = await handler(request)
        info = request.match_info.route.resource
        route = info.canonical if info is not None else "unmatched"
        self.http_requests.labels(route, request.method, str(response.status)).inc()
        return response


class EngineTiming:
    """One engine's token timing into the server's histograms (a ``TokenTimingObserver``)."""

    def __init__(self, metrics: ServerMetrics, model: str):
        self.metrics, self.model = metrics, model

    def first_token(self, seconds: float) -> None:
        self.metrics.ttft.labels(self.model).observe(seconds)

    def token_gap(self, seconds: float, n: int) -> None:
        itl = self.metrics.itl.labels(self.model)
        for _ in range(n):
            itl.observe(seconds / n)

    def finished(self, status: str, seconds: float, prompt_tokens: int, output_tokens: int) -> None:
        if status == "completed":
            self.metrics.e2e.labels(self.model).observe(seconds)
        self.metrics.prompt_tokens.labels(self.model).inc(prompt_tokens)
        self.metrics.generation_tokens.labels(self.model).inc(output_tokens)
