"""Engine metrics computed from real events.

Engines report what happens (a request arrives, is admitted, yields a token, finishes; a batch
step runs; time is spent in a phase) and this module turns those events into the spec's metric
types, over a sliding window (default 60 s) for rates and since start for totals. Nothing here
is estimated: a metric with no events behind it is 0.

The same measurements feed the server's Prometheus histograms: a ``TokenTimingObserver`` added
with ``observe`` receives each time to first token, inter-token gap and end-to-end latency as
this module measures it, so ``/metrics`` and ``/v1/status`` cannot disagree.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from ferrum.metrics import (
    BatchingMetrics,
    EngineMetrics,
    ErrorEvent,
    ErrorStats,
    LatencyMetrics,
    MemoryUsage,
    PerformanceBreakdown,
    QueueMetrics,
    ResourceMetrics,
    SchedulerStats,
    ThroughputMetrics,
)
from ferrum.serde import utc_now
from runtime.stats import mean, rate, summarize, utilization

PHASES = ("tokenization", "model_execution", "sampling", "scheduling", "memory_operations", "other_overhead")
MAX_SAMPLES = 100_000


class TokenTimingObserver(Protocol):
    """Receives the engine's token timing as it is measured (seconds)."""

    def first_token(self, seconds: float) -> None: ...

    def token_gap(self, seconds: float, n: int) -> None:
        """``n`` tokens arrived ``seconds`` after the previous ones (each gap is seconds / n)."""

    def finished(self, status: str, seconds: float, prompt_tokens: int, output_tokens: int) -> None: ...


@dataclass
class _Live:
    arrived: float
    admitted: float | None = None
    first_token: float | None = None
    last_token: float | None = None


@dataclass
class _Finished:
    at: float
    status: str
    latency: float
    ttft: float | None
    queue: float
    prompt_tokens: int
    output_tokens: int
    chars: int


def process_memory() -> tuple[int, int]:
    """(resident bytes of this process, total bytes of RAM)."""
    page = os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/proc/self/statm") as fh:
            rss = int(fh.read().split()[1]) * page
    except OSError:
        rss = 0
    total = os.sysconf("SC_PHYS_PAGES") * page
    return rss, total


class EngineTelemetry:
    def __init__(self, window_s: float = 60.0):
        self.window_s = window_s
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._live: dict[str, _Live] = {}
        self._finished: deque[_Finished] = deque()
        self._latency_all: deque[float] = deque(maxlen=MAX_SAMPLES)
        self._ttft_all: deque[float] = deque(maxlen=MAX_SAMPLES)
        self._itl_all: deque[float] = deque(maxlen=MAX_SAMPLES)
        self._queue_all: deque[float] = deque(maxlen=MAX_SAMPLES)
        self._exec_all: deque[float] = deque(maxlen=MAX_SAMPLES)
        self._steps: deque[tuple[float, int, int, float, int]] = deque()
        self._tokens_window: deque[tuple[float, int]] = deque()
        self._phase = dict.fromkeys(PHASES, 0.0)
        self.counts = {"submitted": 0, "completed": 0, "failed": 0, "cancelled": 0, "rejected": 0, "preempted": 0}
        self.steps_total = 0
        self.peak_tokens_per_second = 0.0
        self._errors: deque[ErrorEvent] = deque(maxlen=20)
        self._errors_by_type: dict[str, int] = {}
        self._cpu_mark = (time.monotonic(), time.process_time())
        self._observers: list[TokenTimingObserver] = []

    def observe(self, observer: TokenTimingObserver) -> None:
        self._observers.append(observer)

    # -- events -----------------------------------------------------------------------------
    def on_arrival(self, rid: str) -> None:
        with self._lock:
            self.counts["submitted"] += 1
            self._live[rid] = _Live(arrived=time.monotonic())

    def on_rejected(self) -> None:
        with self._lock:
            self.counts["rejected"] += 1

    def on_admitted(self, rid: str) -> None:
        with self._lock:
            live = self._live.get(rid)
            if live is not None and live.admitted is None:
                live.admitted = time.monotonic()

    def on_preempted(self) -> None:
        with self._lock:
            self.counts["preempted"] += 1

    def on_tokens(self, rid: str, n: int = 1) -> None:
        now = time.monotonic()
        ttft = span = None
        with self._lock:
            live = self._live.get(rid)
            if live is None or n <= 0:
                return
            if live.first_token is None:
                live.first_token = now
                ttft = now - live.arrived
            elif live.last_token is not None:
                span = now - live.last_token
                self._itl_all.extend([span / n] * n)
            live.last_token = now
            self._tokens_window.append((now, n))
            self._prune(now)
        for observer in self._observers:
            if ttft is not None:
                observer.first_token(ttft)
            if span is not None:
                observer.token_gap(span, n)

    def on_each_token(self, rids: list[str]) -> None:
        """One token for each entry of ``rids``, all at this instant: ``on_tokens(rid)`` per entry
        under one lock and one clock read (the batch engine reports a whole step at once)."""
        now = time.monotonic()
        firsts: list[float] = []
        gaps: list[float] = []
        counted = 0
        with self._lock:
            live_by_rid = self._live
            for rid in rids:
                live = live_by_rid.get(rid)
                if live is None:
                    continue
                counted += 1
                if live.first_token is None:
                    live.first_token = now
                    firsts.append(now - live.arrived)
                elif live.last_token is not None:
                    gaps.append(now - live.last_token)
                live.last_token = now
            if counted:
                self._itl_all.extend(gaps)
                self._tokens_window.append((now, counted))
            self._prune(now)
        for observer in self._observers:
            for ttft in firsts:
                observer.first_token(ttft)
            for span in gaps:
                observer.token_gap(span, 1)

    def on_finish(self, rid: str, status: str, prompt_tokens: int, output_tokens: int, chars: int = 0,
                  error: BaseException | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            live = self._live.pop(rid, None) or _Live(arrived=now)
            self.counts[status] += 1
            latency = now - live.arrived
            admitted = live.admitted if live.admitted is not None else now
            ttft = None if live.first_token is None else live.first_token - live.arrived
            self._finished.append(
                _Finished(now, status, latency, ttft, admitted - live.arrived, prompt_tokens, output_tokens, chars)
            )
            if status == "completed":
                self._latency_all.append(latency)
                self._exec_all.append(now - admitted)
                if ttft is not None:
                    self._ttft_all.append(ttft)
            self._queue_all.append(admitted - live.arrived)
            if error is not None:
                kind = type(error).__name__
                self._errors_by_type[kind] = self._errors_by_type.get(kind, 0) + 1
                self._errors.append(ErrorEvent(utc_now(), kind, str(error), rid))
            self._prune(now)
        for observer in self._observers:
            observer.finished(status, latency, prompt_tokens, output_tokens)

    def on_step(self, batch_size: int, num_tokens: int, seconds: float, capacity: int) -> None:
        now = time.monotonic()
        with self._lock:
            self.steps_total += 1
            self._steps.append((now, batch_size, num_tokens, seconds, capacity))
            self.peak_tokens_per_second = max(self.peak_tokens_per_second, rate(num_tokens, seconds))
            self._prune(now)

    def add_phase_time(self, phase: str, seconds: float) -> None:
        with self._lock:
            self._phase[phase] += seconds

    def _prune(self, now: float) -> None:
        """Drop events older than the window (callers hold the lock). Snapshots prune too: with no
        event for a while, the window's rates must still forget what happened before it."""
        horizon = now - self.window_s
        while self._finished and self._finished[0].at <= horizon:
            self._finished.popleft()
        while self._steps and self._steps[0][0] <= horizon:
            self._steps.popleft()
        while self._tokens_window and self._tokens_window[0][0] <= horizon:
            self._tokens_window.popleft()

    # -- snapshots --------------------------------------------------------------------------
    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started

    def _window_seconds(self) -> float:
        return min(self.window_s, self.uptime)

    def active_requests(self) -> int:
        with self._lock:
            return len(self._live)

    def latency_metrics(self) -> LatencyMetrics:
        with self._lock:
            lat = summarize(v * 1000 for v in self._latency_all)
            ttft = mean([v * 1000 for v in self._ttft_all])
            itl = mean([v * 1000 for v in self._itl_all])
        return LatencyMetrics(lat.mean, lat.p50, lat.p90, lat.p95, lat.p99, lat.p999, ttft, itl)

    def throughput_metrics(self) -> ThroughputMetrics:
        span = self._window_seconds()
        with self._lock:
            self._prune(time.monotonic())
            done = [f for f in self._finished if f.status == "completed"]
            tokens = sum(n for _, n in self._tokens_window)
            steps = len(self._steps)
            chars = sum(f.chars for f in done)
            peak = self.peak_tokens_per_second
        return ThroughputMetrics(rate(len(done), span), rate(tokens, span), rate(chars, span), rate(steps, span), peak)

    def batching_metrics(self) -> BatchingMetrics:
        span = self._window_seconds()
        with self._lock:
            self._prune(time.monotonic())
            steps = list(self._steps)
            total = self.steps_total
        sizes = [s[1] for s in steps]
        util = mean([utilization(s[1], s[4]) for s in steps])
        tokens = sum(s[2] for s in steps)
        return BatchingMetrics(mean(sizes), util, total, total, mean([s[3] * 1000 for s in steps]), rate(tokens, span))

    def scheduler_stats(self, waiting: int, running: int, preempted: int, queue_capacity: int) -> SchedulerStats:
        span = self._window_seconds()
        with self._lock:
            self._prune(time.monotonic())
            done = sum(1 for f in self._finished if f.status == "completed")
            wait = mean([v * 1000 for v in self._queue_all])
            execution = mean([v * 1000 for v in self._exec_all])
            counts = dict(self.counts)
        return SchedulerStats(
            waiting_requests=waiting,
            running_requests=running,
            preempted_requests=preempted,
            completed_requests=counts["completed"],
            failed_requests=counts["failed"],
            cancelled_requests=counts["cancelled"],
            avg_wait_time_ms=wait,
            avg_execution_time_ms=execution,
            throughput_rps=rate(done, span),
            queue_utilization=utilization(waiting, queue_capacity) * 100.0,
        )

    def _resources(self) -> ResourceMetrics:
        now, cpu = time.monotonic(), time.process_time()
        with self._lock:
            wall0, cpu0 = self._cpu_mark
            self._cpu_mark = (now, cpu)
        cores = os.cpu_count() or 1
        rss, total = process_memory()
        return ResourceMetrics(
            cpu_utilization=utilization(cpu - cpu0, (now - wall0) * cores) * 100.0,
            memory_utilization=utilization(rss, total) * 100.0,
            gpu_utilization=None,
            network_utilization=0.0,
            disk_utilization=0.0,
        )

    def engine_metrics(self, queue_length: int) -> EngineMetrics:
        span = self._window_seconds()
        latency = self.latency_metrics()
        throughput = self.throughput_metrics()
        with self._lock:
            self._prune(time.monotonic())
            counts = dict(self.counts)
            finished_total = counts["completed"] + counts["failed"] + counts["cancelled"]
            errors = ErrorStats(
                total_errors=counts["failed"],
                errors_by_type=dict(self._errors_by_type),
                error_rate=utilization(counts["failed"], finished_total),
                recent_errors=list(self._errors),
            )
            waits = [f.queue * 1000 for f in self._finished]
            arrivals = sum(1 for f in self._finished)
            phases = {k: v * 1000 for k, v in self._phase.items()}
        offered = counts["submitted"] + counts["rejected"]
        return EngineMetrics(
            total_requests=counts["submitted"],
            successful_requests=counts["completed"],
            failed_requests=counts["failed"],
            avg_request_latency_ms=latency.avg_latency_ms,
            p95_request_latency_ms=latency.p95_latency_ms,
            p99_request_latency_ms=latency.p99_latency_ms,
            throughput_rps=throughput.requests_per_second,
            tokens_per_second=throughput.tokens_per_second,
            queue_metrics=QueueMetrics(
                current_queue_length=queue_length,
                avg_queue_wait_time_ms=mean(waits),
                queue_throughput_rps=rate(arrivals, span),
                queue_rejection_rate=utilization(counts["rejected"], offered),
            ),
            resource_utilization=self._resources(),
            error_stats=errors,
            performance_breakdown=PerformanceBreakdown(
                tokenization_time_ms=phases["tokenization"],
                model_execution_time_ms=phases["model_execution"],
                sampling_time_ms=phases["sampling"],
                scheduling_time_ms=phases["scheduling"],
                memory_operations_time_ms=phases["memory_operations"],
                other_overhead_time_ms=phases["other_overhead"],
            ),
        )

    def memory_usage(self, cache_bytes: int, gpu_bytes: int | None = None) -> MemoryUsage:
        rss, total = process_memory()
        usage = MemoryUsage(
            total_bytes=total,
            used_bytes=rss,
            free_bytes=max(total - rss, 0),
            gpu_memory_bytes=gpu_bytes,
            cpu_memory_bytes=rss,
            cache_memory_bytes=cache_bytes,
        )
        usage.calculate_utilization()
        return usage
