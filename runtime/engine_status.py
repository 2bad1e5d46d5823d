"""The LLM engine's state as other threads may see it: an immutable snapshot the loop publishes.

The scheduler, page model, prefix cache and request table belong to the loop thread; reading them
from an HTTP handler while the loop mutates them raises ("dictionary changed size during
iteration") or reads a half-updated state. So the loop copies the numbers status, health,
metrics and diagnostics need into an ``EngineSnapshot`` after every step and every request end,
and publishes it by replacing one reference; readers only ever touch a snapshot. Building the
reports from a snapshot is pure and lives here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ferrum.metrics import (
    CacheStats,
    ComponentHealth,
    HealthStatusType,
    PerformanceBottleneck,
    PrefixCacheStats,
)
from runtime.scheduler import Scheduler
from runtime.stats import utilization

# diagnostics: queueing is a bottleneck once requests wait longer than this share of their latency
QUEUEING_LATENCY_SHARE = 0.5
# diagnostics: how severe (0..1) a KV cache that preempts requests is reported
KV_PRESSURE_SEVERITY = 0.5


@dataclass(frozen=True)
class EngineSnapshot:
    """What the loop thread last published about its scheduler, KV pages and prefix cache."""

    waiting: int
    running: int
    preemptions: int
    total_pages: int
    free_pages: int
    page_size: int
    stored_tokens: int
    prefix_hits: int
    prefix_misses: int
    prefix_evictions: int
    prefix_entries: int
    prefix_saved_tokens: int
    avg_prefix_length: float
    heartbeat: str

    @classmethod
    def of(cls, scheduler: Scheduler, heartbeat: str) -> EngineSnapshot:
        """Copy the numbers out of ``scheduler`` (call on the loop thread only)."""
        pages, cache = scheduler.pages, scheduler.prefix_cache
        return cls(
            waiting=scheduler.num_waiting,
            running=scheduler.num_running,
            preemptions=scheduler.preemptions,
            total_pages=pages.total_pages,
            free_pages=pages.free_pages,
            page_size=pages.page_size,
            stored_tokens=pages.stored_tokens,
            prefix_hits=cache.hits,
            prefix_misses=cache.misses,
            prefix_evictions=cache.evictions,
            prefix_entries=len(cache),
            prefix_saved_tokens=cache.saved_tokens,
            avg_prefix_length=cache.avg_matched_length,
            heartbeat=heartbeat,
        )

    @property
    def used_pages(self) -> int:
        return self.total_pages - self.free_pages

    def cache_stats(self, kv_bytes_per_token: int) -> CacheStats:
        lookups = self.prefix_hits + self.prefix_misses
        hit_rate = utilization(self.prefix_hits, lookups)
        return CacheStats(
            total_blocks=self.total_pages,
            used_blocks=self.used_pages,
            free_blocks=self.free_pages,
            cache_hit_rate=hit_rate,
            cache_hits=self.prefix_hits,
            cache_misses=self.prefix_misses,
            eviction_count=self.prefix_evictions,
            avg_block_utilization=utilization(self.stored_tokens, self.used_pages * self.page_size),
            prefix_cache_stats=PrefixCacheStats(
                cached_prefixes=self.prefix_entries,
                prefix_hit_rate=hit_rate,
                avg_prefix_length=self.avg_prefix_length,
                memory_saved_bytes=self.prefix_saved_tokens * kv_bytes_per_token,
            ),
        )

    def kv_health(self) -> ComponentHealth:
        return ComponentHealth.healthy("kv_cache", free_pages=float(self.free_pages),
                                       total_pages=float(self.total_pages))

    def scheduler_health(self, loop_alive: bool, closing: bool) -> ComponentHealth:
        if not loop_alive:
            return ComponentHealth(HealthStatusType.Unhealthy, "engine loop stopped")
        if closing:
            return ComponentHealth(HealthStatusType.Unhealthy, "engine is shutting down")
        return ComponentHealth.healthy("scheduler", waiting=float(self.waiting), running=float(self.running))

    def bottlenecks(self, avg_queue_wait_ms: float, avg_latency_ms: float) -> list[PerformanceBottleneck]:
        found = []
        share = utilization(avg_queue_wait_ms, avg_latency_ms)
        if avg_latency_ms > 0 and share > QUEUEING_LATENCY_SHARE:
            found.append(PerformanceBottleneck("queueing", share,
                                               f"requests wait {avg_queue_wait_ms:.0f} ms on average before running",
                                               share))
        if self.preemptions:
            found.append(PerformanceBottleneck("kv_cache_pressure", KV_PRESSURE_SEVERITY,
                                               f"{self.preemptions} preemptions: the KV cache is too small", 0.0))
        return found
