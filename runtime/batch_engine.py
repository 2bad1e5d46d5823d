"""Continuous-batching LLM engine over the paged KV cache: the async API and the loop thread.

One loop thread owns the model, the KV cache, the scheduler and the request table. Async callers
hand it commands (``runtime/engine_requests.py``) through a thread-safe queue and receive
``StreamChunk``s through their own asyncio queue, so the event loop never waits on the model and
the model is only ever touched from one thread. Each step the loop applies the scheduler's KV
operations, runs one forward for the whole batch (``batch_decode`` when every sequence decodes one
token, ``batch_prefill`` for mixed prefill/decode steps, ``batch_verify`` when speculative drafts
are checked) and hands the results to the ``OutputProcessor`` (``runtime/output_processor.py``),
which samples, streams, stops and ends requests. Other threads read the engine's state only
through the snapshot the loop publishes (``runtime/engine_status.py``).

Every request ends exactly once: finished (stop/length/EOS), cancelled (its stream was closed or
the engine shut down; a final chunk says so when anyone still listens), or failed (the error is
raised in its stream); its pages are freed before its stream ends. A request that could never fit
(``n`` beyond the batch, ``n`` × (prompt + max_tokens) beyond the KV cache) is refused on arrival.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import queue
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import TypeVar

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
    RuntimeInfo,
    SchedulerStats,
    SpeculationConfig,
    SystemInfo,
    WarmupResult,
)
from ferrum.serde import to_json, utc_now
from ferrum.types import EngineConfig, InferenceRequest, InferenceResponse, SamplingParams, StreamChunk
from runtime.artifact import LlmArtifact
from runtime.engine_requests import (
    END_OF_STREAM,
    Cancel,
    EngineCommand,
    EngineRequest,
    Query,
    Reconfigure,
    Stop,
    Submit,
)
from runtime.engine_status import EngineSnapshot
from runtime.generation import collect, prepare_prompt
from runtime.grammar import GrammarCompiler, PendingMasks
from runtime.kv_pages import PagedKVModel
from runtime.model_runner import KVCacheConfig, ModelRunner
from runtime.output_processor import OutputProcessor
from runtime.scheduler import KVOp, Scheduler, SchedulerConfig, SchedulerOutput
from runtime.stats import mean, utilization
from runtime.stream_outbox import StreamOutbox
from runtime.telemetry import EngineTelemetry, process_memory
from runtime.tokenizer import ChatTokenizer
from runtime.tvm_env import describe_device, max_binding_bytes

log = logging.getLogger("ferrum.engine")
T = TypeVar("T")

# CPU: the KV cache may take this share of the machine's RAM (the weights and activations need the rest)
CPU_KV_RAM_SHARE = 0.1
# GPU: memory kept outside the KV cache beyond the largest step's logits and MLP activations
WORKSPACE_RESERVE_BYTES = 256 << 20
# bytes per batched token of a step's activations: float32 logits plus ~8 MLP-wide float32 buffers
ACTIVATION_WIDTHS = 8
# how often a reader waiting on the loop checks that the loop is still alive
QUERY_POLL_S = 0.5
# The loop thread gives up the GIL in every TVM call (each waits on the GPU) and must win it back
# from the event loop thread, which streams the tokens and by default keeps it for up to 5 ms: on
# the H200 (SmolLM2, in-process) 0.1 ms took c=128 from 24.5k to 29.2k tok/s and c=256 from 24.7k
# to 28.4k (bench/results/h200_smollm2_offline_switch_*.json)
GIL_SWITCH_INTERVAL_S = 1e-4


class ContinuousBatchEngine(AdvancedInferenceEngine):
    """InferenceEngine + LlmInferenceEngine + AdvancedInferenceEngine with continuous batching."""

    def __init__(self, config: EngineConfig):
        self._config = config
        self.artifact = LlmArtifact.open(config.artifact_path)
        self.model_id = config.model_id or self.artifact.manifest.name
        self.tokenizer = ChatTokenizer(self.artifact.tokenizer_path, self.artifact.generation)
        self.grammars = GrammarCompiler(self.tokenizer.tokenizer, self.artifact.config.vocab_size,
                                        self.artifact.generation.eos_token_ids)
        self.runner = ModelRunner(self.artifact, config.device, load_format=config.load_format)
        self.telemetry = EngineTelemetry()
        self._intake: queue.SimpleQueue[EngineCommand] = queue.SimpleQueue()
        self._outbox = StreamOutbox()  # stream items of the loop's current pass
        self._lock = threading.Lock()  # guards _in_flight
        self._in_flight = 0
        self._closing = False
        self._last_error: str | None = None
        self.outputs: OutputProcessor
        self._create_cache()
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
        self._thread = threading.Thread(target=self._loop, name="ferrum-engine", daemon=True)
        self._thread.start()

    # -- KV cache sizing ------------------------------------------------------------------------
    def _kv_tokens(self) -> int:
        cfg, page = self._config, self._config.kv_page_size
        per_token = self.runner.kv_bytes_per_token()
        binding = max_binding_bytes(self.runner.device_kind)
        # each layer's pages are one buffer, which must fit one kernel binding (WebGPU)
        most = None if binding is None else binding // (per_token // self.artifact.config.num_hidden_layers) - 4 * page
        if cfg.kv_cache_tokens:
            if most is not None and cfg.kv_cache_tokens > most:
                raise InvalidRequestError(f"kv_cache_tokens {cfg.kv_cache_tokens} exceeds the {most} tokens one "
                                          f"layer's KV pages may hold on this device", param="kv_cache_tokens")
            return max(cfg.kv_cache_tokens, page)
        if self.runner.device_kind == "cuda":
            budget = self.runner.device.available_global_memory * cfg.gpu_memory_utilization - self._workspace_bytes()
        else:
            budget = process_memory()[1] * CPU_KV_RAM_SHARE
        wanted = cfg.max_num_seqs * self.max_model_len
        if most is not None:
            wanted = min(wanted, most)
        return int(max(min(budget // per_token, wanted), self.max_model_len))

    def _workspace_bytes(self) -> int:
        """Activations and logits of the largest step, reserved outside the KV cache."""
        c = self.artifact.config
        tokens = self._config.max_num_batched_tokens
        return int(tokens * (c.vocab_size + ACTIVATION_WIDTHS * c.intermediate_size) * 4 + WORKSPACE_RESERVE_BYTES)

    def _create_cache(self) -> None:
        """(Re)build the KV cache, scheduler and output processor for the current config."""
        cfg = self._config
        if cfg.max_num_batched_tokens < 1 or cfg.max_num_seqs < 1:
            raise InvalidRequestError("max_num_seqs and max_num_batched_tokens must be positive")
        if not 0 < cfg.gpu_memory_utilization <= 1:
            raise InvalidRequestError("gpu_memory_utilization must be in (0, 1]", param="gpu_memory_utilization")
        limit = self.runner.max_decode_batch
        if limit is not None and cfg.max_num_seqs > limit:
            raise InvalidRequestError(f"max_num_seqs {cfg.max_num_seqs} exceeds this artifact's decode batch "
                                      f"limit of {limit}", param="max_num_seqs")
        context = self.artifact.config.context_length
        self.max_model_len = min(cfg.max_model_len or context, context)
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
        if hasattr(self, "outputs"):  # rebuilt while running: requests already ended, keep the counters
            self.outputs.scheduler, self.outputs.max_model_len = self.scheduler, self.max_model_len
        else:
            self.outputs = OutputProcessor(self.scheduler, self.telemetry, self.max_model_len, self._request_ended)
        self._publish()

    # -- async API --------------------------------------------------------------------------
    async def infer_stream(self, request: InferenceRequest,
                           speculation: SpeculationConfig | None = None) -> AsyncIterator[StreamChunk]:
        if self._closing:
            raise EngineShutdownError("the engine is shutting down")
        t0 = time.perf_counter()
        prompt_ids = prepare_prompt(request, self.tokenizer, self.max_model_len)
        self._check_fits(len(prompt_ids), request.sampling_params)
        params = request.sampling_params
        matchers = (await asyncio.to_thread(self.grammars.matchers, params.grammar, params.n) if params.grammar
                    else None)  # built off the event loop: a large grammar takes a while
        self.telemetry.add_phase_time("tokenization", time.perf_counter() - t0)
        with self._lock:
            queued = self._in_flight - self._snapshot.running
            if queued >= self._config.max_queue_size:
                self.telemetry.on_rejected()
                raise OverloadedError(f"the engine queue is full ({queued} requests waiting)", retry_after_s=1.0)
            self._in_flight += 1
        state = EngineRequest(request, prompt_ids, self.tokenizer, asyncio.get_running_loop(), speculation,
                              self._outbox)
        self.telemetry.on_arrival(state.rid)
        if matchers:
            state.matchers = matchers
        self._intake.put(Submit(state))
        return self._stream(state)

    def _check_fits(self, prompt_len: int, params: SamplingParams) -> None:
        """Refuse a request that could never run to completion: more completions than the batch
        holds, or more KV pages than the whole cache has when every completion reaches
        ``max_tokens`` (each may have to hold its prompt alone after a preemption)."""
        n, limit = params.n, self._config.max_num_seqs
        if n > limit:
            raise InvalidRequestError(f"n={n} completions exceed this engine's batch of {limit} sequences "
                                      "(max_num_seqs)", param="n")
        page = self.kv.page_size
        total = self._snapshot.total_pages
        per_seq = -(-(prompt_len + params.max_tokens) // page)
        if n * per_seq > total:
            raise InvalidRequestError(
                f"the request needs up to {n * per_seq * page} tokens of KV cache ({n} x ({prompt_len} prompt + "
                f"{params.max_tokens} max_tokens)) but the cache holds {total * page}; lower n or max_tokens",
                param="n" if n > 1 else "max_tokens")

    async def _stream(self, state: EngineRequest) -> AsyncIterator[StreamChunk]:
        try:
            while True:
                item = await state.queue.get()
                if item is END_OF_STREAM:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not state.done:  # the consumer stopped reading (a client hung up): cancel every sequence
                self._intake.put(Cancel(state))

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
        if config.load_format != self._config.load_format:
            raise InvalidRequestError("a running engine cannot change where its weights come from; start a new engine",
                                      param="load_format")
        sizes = ("max_num_seqs", "max_num_batched_tokens", "kv_page_size", "kv_cache_tokens", "max_model_len")
        resize = any(getattr(config, name) != getattr(self._config, name) for name in sizes)
        if resize and self._in_flight:
            raise InvalidRequestError("KV cache sizes can only change while the engine is idle")
        command = Reconfigure(replace(config, artifact_path=self._config.artifact_path), resize)
        self._intake.put(command)
        await asyncio.to_thread(command.done.wait)
        if command.error is not None:
            raise command.error

    def config(self) -> EngineConfig:
        return self._config

    async def shutdown(self, drain_timeout_s: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish (for at most ``drain_timeout_s``; by
        default until they end, which their ``max_tokens`` bounds, so the server's
        ``--shutdown-timeout`` governs), cancel the rest with a final chunk, and stop the loop."""
        self._closing = True
        deadline = time.monotonic() + (drain_timeout_s if drain_timeout_s is not None else float("inf"))
        while self._in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._intake.put(Stop())
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
                    if isinstance(command, Stop):
                        self.outputs.cancel_all()
                        self._publish()
                        self._outbox.flush()
                        return
                    self._run_command(command)
                    try:
                        command = self._intake.get_nowait()
                    except queue.Empty:
                        command = None
                if self.scheduler.running or self.scheduler.waiting:
                    self._step()
            except Exception as exc:  # a failed step must not kill the engine: fail its requests, go on
                log.exception("engine step failed")
                self._last_error = f"{type(exc).__name__}: {exc}"
                self.outputs.fail_all(exc)
                self._create_cache()
            self._publish()
            self._outbox.flush()

    def _run_command(self, command: EngineCommand) -> None:
        if isinstance(command, Submit):
            self.outputs.admit(command.request)
        elif isinstance(command, Cancel):
            if not command.request.done:
                self.outputs.end_request(command.request, "cancelled")
        elif isinstance(command, Query):
            command.run()
        elif isinstance(command, Reconfigure):
            self._reconfigure(command)

    def _reconfigure(self, command: Reconfigure) -> None:
        try:
            self._config = config = command.config
            if command.resize:
                self._create_cache()
            else:
                self.scheduler.config = SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens,
                                                        config.enable_prefix_caching)
                if not config.enable_prefix_caching:
                    while self.scheduler.evict_lru():
                        pass
                    self._apply_kv_ops(self.scheduler.take_ops())
        except Exception as exc:  # handed back to the caller of reconfigure
            command.error = exc
        finally:
            command.done.set()

    def _apply_kv_ops(self, ops: list[KVOp]) -> float:
        """Apply the scheduler's KV operations to TVM's cache, in order; the seconds it took."""
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
        seconds = time.perf_counter() - t0
        self.telemetry.add_phase_time("memory_operations", seconds)
        return seconds

    def _request_ended(self) -> None:
        """A request just ended (loop thread): free its pages in TVM and publish the engine's state
        before its final event, so a caller that saw the end finds the engine as it left it."""
        self._apply_kv_ops(self.scheduler.take_ops())
        with self._lock:
            self._in_flight -= 1
        self._publish()

    def _step(self) -> None:
        t0 = time.perf_counter()
        self.outputs.propose_drafts()
        out = self.scheduler.schedule()
        for seq in out.preempted:
            self.outputs.undraft(seq)
            self.telemetry.on_preempted()
        scheduling = time.perf_counter() - t0
        self.telemetry.add_phase_time("scheduling", scheduling)
        kv_ops = self._apply_kv_ops(out.ops)
        if not out.batch:
            if not out.preempted:
                self.outputs.reject_unfittable(self.runner.total_pages * self.kv.page_size)
            return
        for seq, _ in out.batch:
            if seq.prefilling:  # a request's first step always prefills its first sequence's prompt
                self.telemetry.on_admitted(seq.request_id)
        t1 = time.perf_counter()
        masks = self.outputs.grammar_masks(out.batch, self.grammars)  # computed while the forward runs
        segments, tokens = self._forward(out, masks)
        forward = time.perf_counter() - t1
        self.telemetry.add_phase_time("model_execution", forward)
        t2 = time.perf_counter()
        self.outputs.process(out.batch, segments, tokens, masks)
        t3 = time.perf_counter()
        self.telemetry.add_phase_time("sampling", t3 - t2)
        self.telemetry.add_phase_time("other_overhead", max(t3 - t0 - scheduling - kv_ops - forward - (t3 - t2), 0.0))
        self.telemetry.on_step(len(out.batch), out.num_tokens, t3 - t0, self._config.max_num_seqs)

    def _forward(self, out: SchedulerOutput, masks: PendingMasks | None) -> tuple[list[np.ndarray | None], np.ndarray | None]:
        """Run the step's batch: logits rows per batch entry, or the tokens the device sampled
        (under the grammar ``masks`` when the step has constrained rows and the artifact's sampler
        takes a bitmask: the runner waits for them once the forward is queued)."""
        batch = out.batch
        ids = [seq.seq_id for seq, _ in batch]
        decode = out.is_decode
        # a decode feeds each sequence's last token; only prefill and verify slice chunks
        fed = [seq.tokens[-1] for seq, _ in batch] if decode else None
        chunks = None if decode else [seq.tokens[seq.computed: seq.computed + n] for seq, n in batch]
        runner = self.runner
        if self.outputs.has_drafts(batch):
            rows = runner.verify(ids, chunks)  # drafted sequences feed several tokens: never a decode
            ends = np.cumsum([n for _, n in batch])
            return [rows[end - n: end] for (_, n), end in zip(batch, ends)], None
        if runner.samples_on_device and self.outputs.samples_on_device(batch, masked=runner.samples_masked):
            params = self.outputs.device_rows(batch)
            grid = None if masks is None else masks.result
            tokens = (runner.decode_sample(ids, fed, params, grid) if decode
                      else runner.prefill_sample(ids, chunks, params, grid))
            return [None] * len(ids), tokens
        logits = runner.decode(ids, fed) if decode else runner.prefill(ids, chunks)
        return [logits[i: i + 1] for i in range(len(ids))], None

    # -- state for other threads ----------------------------------------------------------------
    def _publish(self) -> None:
        """Replace the snapshot readers see (loop thread, or construction before the loop starts)."""
        self._snapshot = EngineSnapshot.of(self.scheduler, utc_now())

    def _on_loop(self, read: Callable[[], T]) -> T:
        """Run ``read`` on the loop thread between steps (or here once the loop has stopped)."""
        if not self._thread.is_alive():
            return read()
        command = Query(read)
        self._intake.put(command)
        while not command.done.wait(QUERY_POLL_S):
            if not self._thread.is_alive():
                return read()
        if command.error is not None:
            raise command.error
        return command.result

    @property
    def draft_tokens(self) -> dict[str, int]:
        """Prompt-lookup draft tokens proposed and accepted, all requests."""
        return dict(self.outputs.draft_tokens)

    # -- status, metrics, diagnostics (from the snapshot) ---------------------------------------
    def _cache_bytes(self) -> int:
        return self.runner.total_pages * self.kv.page_size * self.runner.kv_bytes_per_token()

    def cache_stats(self) -> CacheStats:
        return self._snapshot.cache_stats(self.runner.kv_bytes_per_token())

    def cache_metrics_snapshot(self) -> dict:
        snap = self._snapshot
        return {**to_json(snap.cache_stats(self.runner.kv_bytes_per_token())),
                "saved_prefill_tokens": snap.prefix_saved_tokens}

    def scheduler_stats(self) -> SchedulerStats:
        snap = self._snapshot
        return self.telemetry.scheduler_stats(snap.waiting, snap.running, snap.preemptions,
                                              self._config.max_queue_size)

    def metrics(self) -> EngineMetrics:
        return self.telemetry.engine_metrics(self._snapshot.waiting)

    def device_info(self) -> dict:
        """The device the model runs on as ``/v1/status`` reports it (name, driver, memory)."""
        return describe_device(self.runner.device_kind, self.runner.device)

    async def status(self) -> EngineStatus:
        snap = self._snapshot
        device = self.device_info()
        gpu = device.get("memory_used_bytes", device.get("memory_allocated_bytes"))
        return EngineStatus(
            is_ready=not self._closing and self._thread.is_alive(),
            loaded_models=[self.model_id],
            active_requests=snap.running,
            queued_requests=snap.waiting,
            memory_usage=self.telemetry.memory_usage(self._cache_bytes(), gpu),
            uptime_seconds=int(self.telemetry.uptime),
            last_heartbeat=snap.heartbeat,
            version=ferrum.__version__,
        )

    async def health_check(self) -> HealthStatus:
        snap = self._snapshot
        model = ComponentHealth.healthy("model")
        if self._last_error:
            model = ComponentHealth(HealthStatusType.Warning, f"last step failed: {self._last_error}")
        rss, total = process_memory()
        return HealthStatus.from_components(ComponentStatus(
            scheduler=snap.scheduler_health(self._thread.is_alive(), self._closing),
            model_executor=model, tokenizer=ComponentHealth.healthy("tokenizer"),
            kv_cache=snap.kv_health(), memory_manager=ComponentHealth.healthy("memory", utilization=utilization(rss, total)),
            backend=ComponentHealth.healthy(f"tvm {self.runner.device_kind}"),
        ))

    async def diagnostics(self) -> DiagnosticsReport:
        snap = self._snapshot
        metrics = self.metrics()
        weights = sum(info["bytes"] for rel, info in self.artifact.manifest.files.items() if rel.startswith("weights/"))
        latency = self.telemetry.latency_metrics()
        bottlenecks = snap.bottlenecks(metrics.queue_metrics.avg_queue_wait_time_ms, latency.avg_latency_ms)
        return DiagnosticsReport(
            config_snapshot=self._config,
            current_metrics=metrics,
            resource_usage=DetailedResourceUsage(memory_by_component={"weights": weights, "kv_cache": self._cache_bytes()}),
            performance_analysis=PerformanceAnalysis(bottlenecks=bottlenecks),
            component_diagnostics={"scheduler": to_json(self.scheduler_stats()), "cache": to_json(self.cache_stats()),
                                   "speculation": self.draft_tokens},
            system_info=SystemInfo(
                os=f"{platform.system()} {platform.release()}",
                cpu_info=platform.processor() or platform.machine(),
                total_memory=process_memory()[1],
                devices=[f"{self.runner.device_kind}:{self.runner.device.index}"],
                runtime_info=RuntimeInfo(engine_version=ferrum.__version__,
                                         feature_flags=["continuous_batching", "prefix_caching", "ngram_speculation"]),
            ),
        )

    def _active_requests(self) -> list[EngineRequestState]:
        """Progress of every request in flight (loop thread: reads the request table)."""
        now = time.monotonic()
        active = []
        for state in self.outputs.requests.values():
            produced = state.produced
            limit = state.request.sampling_params.max_tokens * len(state.outputs)
            phase = "prefill" if any(s.prefilling for s in state.seqs) else "decode"
            active.append(EngineRequestState(
                request_id=state.rid, current_phase=phase,
                progress=EngineRequestProgress(produced + len(state.prompt_ids), limit - produced,
                                               int((now - state.started) * 1000), None),
                allocated_resources={"sequences": [s.seq_id for s in state.seqs]},
            ))
        return active

    async def export_state(self) -> EngineState:
        active = await asyncio.to_thread(self._on_loop, self._active_requests)
        return EngineState(
            config=self._config, metrics=self.metrics(),
            component_states={"scheduler": to_json(self.scheduler_stats()), "cache": to_json(self.cache_stats()),
                              "pid": os.getpid()},
            active_requests=active,
        )

    async def import_state(self, state: EngineState) -> None:
        await self.reconfigure(state.config)
