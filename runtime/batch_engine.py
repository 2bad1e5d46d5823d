"""Continuous-batching LLM engine over the paged KV cache.

One loop thread owns the model, the KV cache and the scheduler. Async callers hand requests to it
through a thread-safe queue and receive ``StreamChunk``s through their own asyncio queue, so the
event loop never waits on the model and the model is only ever touched from one thread. Every
step the loop applies the scheduler's KV operations, runs one forward for the whole batch
(``batch_decode`` when every sequence decodes one token, ``batch_prefill`` for mixed
prefill/decode steps, ``batch_verify`` when speculative drafts are checked), samples each finished
position with that sequence's own sampler, and streams the text out.

Every request ends exactly once: finished (stop/length/EOS), cancelled (its stream was closed or
the engine shut down; a final chunk says so when anyone still listens), or failed (the error is
raised in its stream); its pages are freed in the next step.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import platform
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import numpy as np

import ferrum
from ferrum.engine import AdvancedInferenceEngine
from ferrum.errors import (
    EngineShutdownError,
    FerrumError,
    InvalidRequestError,
    OverloadedError,
    UnsupportedFeatureError,
)
from ferrum.metrics import (
    CacheStats,
    ComponentHealth,
    ComponentStatus,
    DetailedResourceUsage,
    DiagnosticsReport,
    EngineMetrics,
    EngineRequestProgress,
    EngineRequestState,
    EngineState,
    EngineStatus,
    HealthStatus,
    HealthStatusType,
    PerformanceAnalysis,
    PerformanceBottleneck,
    PrefixCacheStats,
    RuntimeInfo,
    SchedulerStats,
    SpeculationConfig,
    SystemInfo,
    WarmupResult,
)
from ferrum.serde import to_json, utc_now
from ferrum.types import EngineConfig, FinishReason, InferenceRequest, InferenceResponse, StreamChunk
from runtime.artifact import LlmArtifact
from runtime.generation import SequenceOutput, collect, prepare_prompt
from runtime.kv_pages import PagedKVModel
from runtime.model_runner import KVCacheConfig, ModelRunner
from runtime.sampling import SequenceSampler
from runtime.scheduler import KVOp, Scheduler, SchedulerConfig, Sequence, SeqStatus
from runtime.speculative import accept_greedy, propose_ngram
from runtime.stats import mean, utilization
from runtime.telemetry import EngineTelemetry, process_memory
from runtime.tokenizer import ChatTokenizer

log = logging.getLogger("ferrum.engine")
_END = object()


class _Request:
    """A request inside the engine: its sequences, their samplers and outputs, its stream."""

    def __init__(self, request: InferenceRequest, prompt_ids: list[int], tokenizer: ChatTokenizer,
                 loop: asyncio.AbstractEventLoop, speculation: SpeculationConfig | None):
        self.request = request
        self.rid = request.id
        self.prompt_ids = prompt_ids
        params = request.sampling_params
        base = SequenceSampler(params, prompt_ids)
        self.samplers = [base] + [base.fork(i) for i in range(1, params.n)]
        self.outputs = [SequenceOutput(request, prompt_ids, tokenizer, index=i) for i in range(params.n)]
        self.seqs: list[Sequence] = []
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.speculation = speculation if params.is_greedy and not _penalized(params) else None
        self.spawned = params.n == 1
        self.done = False
        self.drafted = 0
        self.accepted = 0
        self.started = time.monotonic()

    def emit(self, item: object) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the caller's event loop is closed: nobody listens any more
            pass

    @property
    def finished(self) -> bool:
        return all(o.finished for o in self.outputs)


def _penalized(params) -> bool:
    return params.repetition_penalty != 1.0 or bool(params.presence_penalty or params.frequency_penalty or params.logit_bias)


class ContinuousBatchEngine(AdvancedInferenceEngine):
    """InferenceEngine + LlmInferenceEngine + AdvancedInferenceEngine with continuous batching."""

    def __init__(self, config: EngineConfig):
        self._config = config
        self.artifact = LlmArtifact.open(config.artifact_path)
        self.model_id = config.model_id or self.artifact.manifest.name
        self.tokenizer = ChatTokenizer(self.artifact.tokenizer_path, self.artifact.generation)
        self.runner = ModelRunner(self.artifact, config.device)
        self.max_model_len = min(config.max_model_len or self.artifact.config.context_length,
                                 self.artifact.config.context_length)
        self.telemetry = EngineTelemetry()
        self._intake: queue.SimpleQueue = queue.SimpleQueue()
        self._owner: dict[int, tuple[_Request, int]] = {}
        self._requests: dict[str, _Request] = {}
        self._seq_ids = itertools.count()
        self._drafts: dict[int, int] = {}
        self._lock = threading.Lock()
        self._in_flight = 0
        self._closing = False
        self._stopped = False
        self._last_error: str | None = None
        self._last_heartbeat = utc_now()
        self.draft_tokens = {"proposed": 0, "accepted": 0}  # prompt-lookup speculation, all requests
        self._create_cache()
        self._thread = threading.Thread(target=self._loop, name="ferrum-engine", daemon=True)
        self._thread.start()

    # -- KV cache sizing ------------------------------------------------------------------------
    def _kv_tokens(self) -> int:
        cfg, page = self._config, self._config.kv_page_size
        if cfg.kv_cache_tokens:
            return max(cfg.kv_cache_tokens, page)
        per_token = self.runner.kv_bytes_per_token()
        if self.runner.device_kind == "cuda":
            budget = self.runner.device.available_global_memory * cfg.gpu_memory_utilization - self._workspace_bytes()
        else:
            budget = process_memory()[1] * 0.1
        wanted = cfg.max_num_seqs * self.max_model_len
        return int(max(min(budget // per_token, wanted), self.max_model_len))

    def _workspace_bytes(self) -> int:
        """Activations and logits of the largest step, reserved outside the KV cache."""
        c = self.artifact.config
        tokens = self._config.max_num_batched_tokens
        return int(tokens * (c.vocab_size * 4 + 8 * c.intermediate_size * 4) + (256 << 20))

    def _create_cache(self) -> None:
        cfg = self._config
        if cfg.max_num_batched_tokens < 1 or cfg.max_num_seqs < 1:
            raise InvalidRequestError("max_num_seqs and max_num_batched_tokens must be positive")
        if not 0 < cfg.gpu_memory_utilization <= 1:
            raise InvalidRequestError("gpu_memory_utilization must be in (0, 1]", param="gpu_memory_utilization")
        limit = self.runner.max_decode_batch
        if limit is not None and cfg.max_num_seqs > limit:
            raise InvalidRequestError(f"max_num_seqs {cfg.max_num_seqs} exceeds this artifact's decode batch "
                                      f"limit of {limit}", param="max_num_seqs")
        self.kv = KVCacheConfig(
            max_batch_size=cfg.max_num_seqs,
            max_total_tokens=self._kv_tokens(),
            prefill_chunk_size=cfg.max_num_batched_tokens,
            page_size=cfg.kv_page_size,
        )
        self.runner.create_kv_cache(self.kv)
        self.scheduler = Scheduler(
            SchedulerConfig(cfg.max_num_seqs, cfg.max_num_batched_tokens, cfg.enable_prefix_caching),
            PagedKVModel(self.runner.total_pages, cfg.kv_page_size),
        )

    # -- async API --------------------------------------------------------------------------
    async def infer_stream(self, request: InferenceRequest,
                           speculation: SpeculationConfig | None = None) -> AsyncIterator[StreamChunk]:
        if self._closing:
            raise EngineShutdownError("the engine is shutting down")
        t0 = time.perf_counter()
        prompt_ids = prepare_prompt(request, self.tokenizer, self.max_model_len)
        self.telemetry.add_phase_time("tokenization", time.perf_counter() - t0)
        with self._lock:
            queued = self._in_flight - self.scheduler.num_running
            if queued >= self._config.max_queue_size:
                self.telemetry.on_rejected()
                raise OverloadedError(f"the engine queue is full ({queued} requests waiting)", retry_after_s=1.0)
            self._in_flight += 1
        state = _Request(request, prompt_ids, self.tokenizer, asyncio.get_running_loop(), speculation)
        self.telemetry.on_arrival(state.rid)
        self._intake.put(("submit", state))
        return self._stream(state)

    async def _stream(self, state: _Request) -> AsyncIterator[StreamChunk]:
        try:
            while True:
                item = await state.queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not state.done:
                self._intake.put(("cancel", state))

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        return await collect(request, await self.infer_stream(request))

    async def infer_batch(self, requests: list[InferenceRequest]) -> list[InferenceResponse | BaseException]:
        return list(await asyncio.gather(*(self.infer(r) for r in requests), return_exceptions=True))

    async def infer_speculative(self, request: InferenceRequest,
                                speculation_config: SpeculationConfig) -> InferenceResponse:
        draft = speculation_config.draft_model_config or {}
        if "artifact" in draft:
            raise UnsupportedFeatureError("draft-model speculation is not available; use prompt lookup (ngram)")
        if speculation_config.speculation_depth < 1:
            raise InvalidRequestError("speculation_depth must be at least 1", param="speculation_depth")
        return await collect(request, await self.infer_stream(request, speculation_config))

    async def warmup(self, warmup_requests: list[InferenceRequest]) -> WarmupResult:
        start = time.perf_counter()
        latencies, issues = [], []
        for request in warmup_requests:
            t0 = time.perf_counter()
            try:
                await self.infer(request)
                latencies.append((time.perf_counter() - t0) * 1000)
            except FerrumError as exc:
                issues.append(f"{request.id}: {exc.message}")
        return WarmupResult(
            requests_processed=len(latencies),
            total_time_ms=int((time.perf_counter() - start) * 1000),
            avg_latency_ms=mean(latencies),
            memory_allocated_bytes=self._cache_bytes(),
            success=not issues,
            issues=issues,
        )

    async def reconfigure(self, config: EngineConfig) -> None:
        if config.artifact_path and config.artifact_path != self._config.artifact_path:
            raise InvalidRequestError("a running engine cannot switch artifacts; start a new engine")
        resize = (config.max_num_seqs, config.max_num_batched_tokens, config.kv_page_size, config.kv_cache_tokens,
                  config.max_model_len) != (self._config.max_num_seqs, self._config.max_num_batched_tokens,
                                            self._config.kv_page_size, self._config.kv_cache_tokens,
                                            self._config.max_model_len)
        if resize and self._in_flight:
            raise InvalidRequestError("KV cache sizes can only change while the engine is idle")
        done = threading.Event()
        errors: list[BaseException] = []
        self._intake.put(("reconfigure", (replace(config, artifact_path=self._config.artifact_path), resize, done, errors)))
        await asyncio.to_thread(done.wait)
        if errors:
            raise errors[0]

    def config(self) -> EngineConfig:
        return self._config

    async def shutdown(self, drain_timeout_s: float = 30.0) -> None:
        """Stop accepting, let in-flight requests finish (up to ``drain_timeout_s``), cancel the
        rest with a final chunk, and stop the loop."""
        self._closing = True
        deadline = time.monotonic() + drain_timeout_s
        while self._in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._intake.put(("stop", None))
        await asyncio.to_thread(self._thread.join)

    # -- loop thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            idle = not self.scheduler.running and not self.scheduler.waiting
            try:
                command = self._intake.get(block=idle)
            except queue.Empty:
                command = None
            try:
                while command is not None:
                    if command[0] == "stop":
                        self._abort_all()
                        self._stopped = True
                        return
                    self._handle(command)
                    try:
                        command = self._intake.get_nowait()
                    except queue.Empty:
                        command = None
                if self.scheduler.running or self.scheduler.waiting:
                    self._step()
            except Exception as exc:  # a failed step must not kill the engine: fail its requests, go on
                log.exception("engine step failed")
                self._last_error = f"{type(exc).__name__}: {exc}"
                self._fail_all(exc)

    def _handle(self, command: tuple) -> None:
        kind, payload = command
        if kind == "submit":
            state: _Request = payload
            if state.done:
                return
            seq = Sequence(next(self._seq_ids), state.rid, list(state.prompt_ids), len(state.prompt_ids),
                           priority=int(state.request.priority))
            state.seqs.append(seq)
            self._owner[seq.seq_id] = (state, 0)
            self._requests[state.rid] = state
            self.scheduler.add(seq)
        elif kind == "cancel":
            state = payload
            if not state.done:
                self._end_request(state, "cancelled")
        elif kind == "reconfigure":
            config, resize, done, errors = payload
            try:
                self._config = config
                if resize:
                    self._create_cache()
                else:
                    self.scheduler.config = SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens,
                                                            config.enable_prefix_caching)
                    if not config.enable_prefix_caching:
                        while self.scheduler.evict_lru():
                            pass
                        self._apply(self.scheduler.take_ops())
            except Exception as exc:
                errors.append(exc)
            finally:
                done.set()

    def _apply(self, ops: list[KVOp]) -> None:
        t0 = time.perf_counter()
        for op in ops:
            if op.kind == "add":
                self.runner.add_sequence(op.seq_id)
            elif op.kind == "fork":
                self.runner.fork_sequence(op.parent, op.seq_id, op.pos)
            elif op.kind == "remove":
                self.runner.remove_sequence(op.seq_id)
            elif op.kind == "popn":
                self.runner.popn(op.seq_id, op.pos)
        self.telemetry.add_phase_time("memory_operations", time.perf_counter() - t0)

    def _propose_drafts(self) -> None:
        for seq in self.scheduler.running:
            state, index = self._owner[seq.seq_id]
            spec = state.speculation
            if spec is None or seq.prefilling or seq.pending != 1:
                continue
            output = state.outputs[index]
            room = min(state.request.sampling_params.max_tokens - len(output.tokens) - 1,
                       self.max_model_len - len(seq.tokens) - 1)
            ngram = int((spec.draft_model_config or {}).get("ngram", 3))
            draft = propose_ngram(seq.tokens, ngram, min(spec.speculation_depth, room)) if room > 0 else []
            if draft:
                seq.tokens.extend(draft)
                self._drafts[seq.seq_id] = len(draft)
                state.drafted += len(draft)

    def _step(self) -> None:
        t0 = time.perf_counter()
        self._propose_drafts()
        out = self.scheduler.schedule()
        for seq in out.preempted:
            self._undraft(seq)
            self.telemetry.on_preempted(seq.request_id)
        self.telemetry.add_phase_time("scheduling", time.perf_counter() - t0)
        self._apply(out.ops)
        if not out.batch:
            if not out.preempted:
                self._reject_unfittable()
            return
        for seq, _ in out.batch:
            self.telemetry.on_admitted(seq.request_id)
        ids = [seq.seq_id for seq, _ in out.batch]
        chunks = [seq.tokens[seq.computed: seq.computed + n] for seq, n in out.batch]
        t1 = time.perf_counter()
        segments: list = [None] * len(ids)
        tokens = None
        if any(seq.seq_id in self._drafts for seq, _ in out.batch):
            rows = self.runner.verify(ids, chunks)
            ends = np.cumsum([n for _, n in out.batch])
            segments = [rows[end - n: end] for (_, n), end in zip(out.batch, ends)]
        elif self._samples_on_device(out.batch):
            params = np.array([self._device_row(seq, n) for seq, n in out.batch], dtype=np.float32)
            tokens = (self.runner.decode_sample(ids, [c[0] for c in chunks], params) if out.is_decode
                      else self.runner.prefill_sample(ids, chunks, params))
        else:
            logits = self.runner.decode(ids, [c[0] for c in chunks]) if out.is_decode else self.runner.prefill(ids, chunks)
            segments = [logits[i: i + 1] for i in range(len(ids))]
        forward = time.perf_counter() - t1
        self.telemetry.add_phase_time("model_execution", forward)
        t2 = time.perf_counter()
        for i, ((seq, n), rows) in enumerate(zip(out.batch, segments)):
            self.scheduler.commit(seq, n)
            if seq.seq_id in self._drafts:
                self._resolve_draft(seq, n, rows)
            elif seq.pending == 0 and tokens is not None:
                state, index = self._owner[seq.seq_id]
                state.samplers[index].record(int(tokens[i]))
                self._take(seq, int(tokens[i]), None)
            elif seq.pending == 0:
                self._sample(seq, rows[-1])
        self.telemetry.add_phase_time("sampling", time.perf_counter() - t2)
        self.telemetry.on_step(len(out.batch), out.num_tokens, time.perf_counter() - t0, self._config.max_num_seqs)
        self._last_heartbeat = utc_now()

    def _undraft(self, seq: Sequence) -> None:
        k = self._drafts.pop(seq.seq_id, 0)
        if k:
            del seq.tokens[-k:]

    def _resolve_draft(self, seq: Sequence, fed: int, rows: np.ndarray) -> None:
        k = self._drafts.pop(seq.seq_id)
        draft = seq.tokens[len(seq.tokens) - k:]
        fed_drafts = fed - 1
        accepted, bonus = accept_greedy(draft[:fed_drafts], rows[: fed_drafts + 1])
        del seq.tokens[len(seq.tokens) - k + accepted:]
        rejected = fed_drafts - accepted
        if rejected:
            seq.computed -= rejected
            self.scheduler.rollback(seq, rejected)
        state, index = self._owner[seq.seq_id]
        state.accepted += accepted
        output = state.outputs[index]
        for token in draft[:accepted]:
            self._deliver(state, seq, output.append(token))
            if output.finished:
                return
        seq.tokens.append(bonus)
        self._deliver(state, seq, output.append(bonus))

    def _samples_on_device(self, batch: list[tuple[Sequence, int]]) -> bool:
        """Sample this step on the GPU when the artifact can and no row that samples needs the host:
        logit bias, penalties or logprobs, or the first token of an ``n`` > 1 request (its siblings
        start from the same logits row)."""
        if not self.runner.samples_on_device:
            return False
        for seq, n in batch:
            if seq.pending != n:
                continue  # a prompt chunk that does not finish the prompt: nothing is sampled
            state, index = self._owner[seq.seq_id]
            if not state.samplers[index].device_capable or (not state.spawned and index == 0):
                return False
        return True

    def _device_row(self, seq: Sequence, n: int) -> tuple[float, ...]:
        if seq.pending != n:
            return 0.0, 1.0, 0.0, 0.0, 0.0  # sampled and ignored; uses no random number
        state, index = self._owner[seq.seq_id]
        return state.samplers[index].device_row()

    def _sample(self, seq: Sequence, row: np.ndarray) -> None:
        state, index = self._owner[seq.seq_id]
        token, logprob = state.samplers[index].sample(row)
        self._take(seq, token, logprob, row)

    def _take(self, seq: Sequence, token: int, logprob, row: np.ndarray | None = None) -> None:
        """Append a sampled token to ``seq`` and stream it; the first token of an ``n`` > 1 request
        also starts its siblings from the same ``row`` of logits."""
        state, index = self._owner[seq.seq_id]
        seq.tokens.append(token)
        first = not state.spawned and index == 0
        self._deliver(state, seq, state.outputs[index].append(token, logprob))
        if first:
            state.spawned = True
            self._spawn_siblings(state, seq, row)

    def _spawn_siblings(self, state: _Request, parent: Sequence, row: np.ndarray) -> None:
        """``n`` > 1: the other completions start from the same prompt logits, each with its own
        sampler, and share the prompt's pages through forks."""
        children = []
        for index in range(1, len(state.outputs)):
            token, logprob = state.samplers[index].sample(row)
            child = Sequence(next(self._seq_ids), state.rid, parent.tokens[: parent.prompt_len] + [token],
                             parent.prompt_len, computed=parent.prompt_len)
            state.seqs.append(child)
            self._owner[child.seq_id] = (state, index)
            chunk = state.outputs[index].append(token, logprob)
            if state.outputs[index].finished:
                child.status = SeqStatus.FINISHED
                self._deliver(state, child, chunk, release=False)
            else:
                children.append(child)
                self._deliver(state, child, chunk, release=False)
        if parent.status is SeqStatus.FINISHED:  # the parent already ended: children start fresh
            for child in children:
                child.computed = 0
                self.scheduler.add(child)
        else:
            self.scheduler.spawn(parent, children)
        if state.finished and not state.done:
            self._end_request(state, "completed")

    def _deliver(self, state: _Request, seq: Sequence, chunk: StreamChunk, release: bool = True) -> None:
        self.telemetry.on_tokens(state.rid)
        state.emit(chunk)
        if chunk.finish_reason is not None and release and seq.status is SeqStatus.RUNNING:
            self.scheduler.finish(seq)
        if state.finished and state.spawned and not state.done:
            self._end_request(state, "completed")

    def _end_request(self, state: _Request, status: str, error: BaseException | None = None) -> None:
        for seq in state.seqs:
            if seq.status is not SeqStatus.FINISHED:
                self.scheduler.abort(seq)
            self._owner.pop(seq.seq_id, None)
            self._drafts.pop(seq.seq_id, None)
        state.done = True
        self._requests.pop(state.rid, None)
        self.draft_tokens["proposed"] += state.drafted
        self.draft_tokens["accepted"] += state.accepted
        self._apply(self.scheduler.take_ops())  # the pages are free in TVM before the stream ends
        with self._lock:  # before the final event, so a caller that saw it finds the engine idle
            self._in_flight -= 1
        if status == "cancelled":
            for output in state.outputs:
                if not output.finished:
                    state.emit(output.abort(FinishReason.Cancelled))
        if error is not None:
            state.emit(error)
        state.emit(_END)
        outputs = state.outputs
        self.telemetry.on_finish(state.rid, status, len(state.prompt_ids), sum(len(o.tokens) for o in outputs),
                                 sum(len(o.text) for o in outputs), error)

    def _reject_unfittable(self) -> None:
        """Nothing could run: the head of the queue needs more KV pages than the whole cache has."""
        if self.scheduler.running or not self.scheduler.waiting:
            return
        seq = self.scheduler.waiting[0]
        state, _ = self._owner[seq.seq_id]
        self._end_request(state, "failed", InvalidRequestError(
            f"the request needs {len(seq.tokens)} tokens of KV cache but the cache holds "
            f"{self.runner.total_pages * self.kv.page_size}; lower max_tokens or start the engine with a larger cache"))

    def _fail_all(self, exc: Exception) -> None:
        error = exc if isinstance(exc, FerrumError) else FerrumError(f"internal engine error: {exc}")
        for state in list(self._requests.values()):
            self._end_request(state, "failed", error)
        self._drafts.clear()
        self._create_cache()

    def _abort_all(self) -> None:
        for state in list(self._requests.values()):
            self._end_request(state, "cancelled")

    # -- status, metrics, diagnostics ---------------------------------------------------------
    def _cache_bytes(self) -> int:
        return self.runner.total_pages * self.kv.page_size * self.runner.kv_bytes_per_token()

    def cache_stats(self) -> CacheStats:
        pages = self.scheduler.pages
        cache = self.scheduler.prefix_cache
        lookups = cache.hits + cache.misses
        stored = sum(pages.length(s) for s in pages.sequences())
        used = pages.used_pages
        return CacheStats(
            total_blocks=pages.total_pages,
            used_blocks=used,
            free_blocks=pages.free_pages,
            cache_hit_rate=utilization(cache.hits, lookups),
            cache_hits=cache.hits,
            cache_misses=cache.misses,
            eviction_count=cache.evictions,
            avg_block_utilization=utilization(stored, used * pages.page_size),
            prefix_cache_stats=PrefixCacheStats(
                cached_prefixes=len(cache),
                prefix_hit_rate=utilization(cache.hits, lookups),
                avg_prefix_length=mean(cache.matched_lengths),
                memory_saved_bytes=cache.saved_tokens * self.runner.kv_bytes_per_token(),
            ),
        )

    def cache_metrics_snapshot(self) -> dict:
        return {**to_json(self.cache_stats()), "saved_prefill_tokens": self.scheduler.prefix_cache.saved_tokens}

    def scheduler_stats(self) -> SchedulerStats:
        return self.telemetry.scheduler_stats(
            self.scheduler.num_waiting, self.scheduler.num_running, self.scheduler.preemptions,
            self._config.max_queue_size,
        )

    def metrics(self) -> EngineMetrics:
        return self.telemetry.engine_metrics(self.scheduler.num_waiting)

    async def status(self) -> EngineStatus:
        gpu = None
        if self.runner.device_kind == "cuda":
            dev = self.runner.device
            gpu = dev.total_global_memory - dev.available_global_memory
        return EngineStatus(
            is_ready=not self._closing and self._thread.is_alive(),
            loaded_models=[self.model_id],
            active_requests=self.scheduler.num_running,
            queued_requests=self.scheduler.num_waiting,
            memory_usage=self.telemetry.memory_usage(self._cache_bytes(), gpu),
            uptime_seconds=int(self.telemetry.uptime),
            last_heartbeat=self._last_heartbeat,
            version=ferrum.__version__,
        )

    async def health_check(self) -> HealthStatus:
        pages = self.scheduler.pages
        loop_alive = self._thread.is_alive()
        scheduler = ComponentHealth.healthy("scheduler", waiting=float(self.scheduler.num_waiting),
                                            running=float(self.scheduler.num_running))
        if not loop_alive or self._closing:
            scheduler = ComponentHealth(HealthStatusType.Unhealthy, "engine loop stopped" if not loop_alive
                                        else "engine is shutting down")
        model = ComponentHealth.healthy("model")
        if self._last_error:
            model = ComponentHealth(HealthStatusType.Warning, f"last step failed: {self._last_error}")
        kv = ComponentHealth.healthy("kv_cache", free_pages=float(pages.free_pages), total_pages=float(pages.total_pages))
        rss, total = process_memory()
        memory = ComponentHealth.healthy("memory", utilization=utilization(rss, total))
        return HealthStatus.from_components(ComponentStatus(
            scheduler=scheduler, model_executor=model, tokenizer=ComponentHealth.healthy("tokenizer"),
            kv_cache=kv, memory_manager=memory, backend=ComponentHealth.healthy(f"tvm {self.runner.device_kind}"),
        ))

    async def diagnostics(self) -> DiagnosticsReport:
        metrics = self.metrics()
        weights = sum(info["bytes"] for rel, info in self.artifact.manifest.files.items() if rel.startswith("weights/"))
        latency = self.telemetry.latency_metrics()
        bottlenecks = []
        queue_wait = metrics.queue_metrics.avg_queue_wait_time_ms
        if queue_wait > latency.avg_latency_ms / 2 > 0:
            bottlenecks.append(PerformanceBottleneck("queueing", utilization(queue_wait, latency.avg_latency_ms),
                                                     f"requests wait {queue_wait:.0f} ms on average before running",
                                                     utilization(queue_wait, latency.avg_latency_ms)))
        if self.scheduler.preemptions:
            bottlenecks.append(PerformanceBottleneck("kv_cache_pressure", 0.5,
                                                     f"{self.scheduler.preemptions} preemptions: the KV cache is too small",
                                                     0.0))
        return DiagnosticsReport(
            config_snapshot=self._config,
            current_metrics=metrics,
            resource_usage=DetailedResourceUsage(memory_by_component={"weights": weights, "kv_cache": self._cache_bytes()}),
            performance_analysis=PerformanceAnalysis(bottlenecks=bottlenecks),
            component_diagnostics={"scheduler": to_json(self.scheduler_stats()), "cache": to_json(self.cache_stats()),
                                   "speculation": dict(self.draft_tokens)},
            system_info=SystemInfo(
                os=f"{platform.system()} {platform.release()}",
                cpu_info=platform.processor() or platform.machine(),
                total_memory=process_memory()[1],
                devices=[f"{self.runner.device_kind}:{self.runner.device.index}"],
                runtime_info=RuntimeInfo(engine_version=ferrum.__version__,
                                         feature_flags=["continuous_batching", "prefix_caching", "ngram_speculation"]),
            ),
        )

    async def export_state(self) -> EngineState:
        now = time.monotonic()
        active = []
        for state in list(self._requests.values()):
            produced = sum(len(o.tokens) for o in state.outputs)
            limit = state.request.sampling_params.max_tokens * len(state.outputs)
            phase = "prefill" if any(s.prefilling for s in state.seqs) else "decode"
            active.append(EngineRequestState(
                request_id=state.rid, current_phase=phase,
                progress=EngineRequestProgress(produced + len(state.prompt_ids), limit - produced,
                                               int((now - state.started) * 1000), None),
                allocated_resources={"sequences": [s.seq_id for s in state.seqs]},
            ))
        return EngineState(
            config=self._config, metrics=self.metrics(),
            component_states={"scheduler": to_json(self.scheduler_stats()), "cache": to_json(self.cache_stats()),
                              "pid": os.getpid()},
            active_requests=active,
        )

    async def import_state(self, state: EngineState) -> None:
        await self.reconfigure(state.config)
