"""Host work of the continuous-batching engine per sequence per step, with a model that costs nothing.

The engine's ``ModelRunner`` is replaced by ``InstantRunner``: it keeps no KV cache and answers
every forward at once with token ids, as a CUDA artifact's on-device sampler does (only ids cross to
the host). What remains is exactly the engine's host path: scheduling, page accounting, KV
operations, sampler rows, output processing, detokenization, stop checks, streaming to asyncio and
telemetry. The artifact supplies only its tokenizer and config (``ModelRunner`` is never built, so
any LLM artifact serves, whatever its target).

For each concurrency C it submits C requests while the loop waits, so they run as one batch
(``--prompt-len`` random prompt tokens, ``--output-len`` tokens, EOS ignored, greedy), and reports
the loop thread's CPU (and wall) microseconds per sequence per decode step, over the steps where
every sequence decodes one token, and the whole process's CPU time per output token (the loop
and the asyncio consumers share one interpreter, as in the server). CPU time, not wall time, is
the figure to compare: this machine's cores are shared, and waiting for one is not host work.

    python bench/engine_overhead_bench.py artifacts/smollm2-135m-instruct-q0f32-llvm \
        --concurrency 64 128 256 --out bench/results/cpu_engine_overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import platform
import pstats
import subprocess
import sys
import threading
import time
from pathlib import Path
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ferrum.types import EngineConfig, InferenceRequest, SamplingParams  # noqa: E402
from runtime import batch_engine  # noqa: E402
from runtime.engine_requests import Query  # noqa: E402
from runtime.model_runner import KVCacheConfig  # noqa: E402

PAGE_BYTES_PER_TOKEN = 1024  # the fake cache's size per token; only the status pages read it


class InstantRunner:
    """The ``ModelRunner`` interface the engine uses, answering every forward immediately.

    The next token of a sequence is a fixed function of its fed token, drawn from ordinary text
    tokens so the detokenizer does real work."""

    device_kind = "cuda"
    samples_on_device = True
    step_s = 0.0  # a forward's GPU time: slept with the GIL released, as TVM's calls wait on the GPU

    def __init__(self, artifact, device: str = "auto", load_format: str = "auto"):
        self.config = artifact.config
        self.max_decode_batch = None
        self.total_pages = 0
        self.kv: KVCacheConfig | None = None
        rng = np.random.default_rng(0)
        self._next = rng.integers(100, min(self.config.vocab_size, 40_000), self.config.vocab_size).astype(np.int64)
        self.device = mock.Mock(index=0, total_global_memory=0, available_global_memory=0)

    def create_kv_cache(self, kv: KVCacheConfig) -> None:
        self.kv = kv
        self.total_pages = -(-kv.max_total_tokens // kv.page_size)

    def add_sequence(self, seq_id: int) -> None:
        pass

    def remove_sequence(self, seq_id: int) -> None:
        pass

    def fork_sequence(self, parent: int, child: int, fork_pos: int = -1) -> None:
        pass

    def popn(self, seq_id: int, n: int) -> None:
        pass

    def kv_bytes_per_token(self) -> int:
        return PAGE_BYTES_PER_TOKEN

    def decode_sample(self, seq_ids, tokens, params: np.ndarray) -> np.ndarray:
        if self.step_s:
            time.sleep(self.step_s)
        return self._next[np.asarray(tokens, dtype=np.int64)]

    def prefill_sample(self, seq_ids, chunks, params: np.ndarray) -> np.ndarray:
        if self.step_s:
            time.sleep(self.step_s)
        return self._next[np.array([c[-1] for c in chunks], dtype=np.int64)]


class StepTimer:
    """Wraps the engine's ``_step`` (loop thread): the loop thread's CPU seconds and the batch of
    every step, so contention from other processes on this machine does not count as host work."""

    def __init__(self, engine, profiler: cProfile.Profile | None = None):
        self.engine, self.profiler, self.steps = engine, profiler, []
        self._step = engine._step
        engine._step = self

    def __call__(self) -> None:
        cpu, wall = time.thread_time(), time.perf_counter()
        if self.profiler:
            self.profiler.runcall(self._step)
        else:
            self._step()
        _, batch, tokens, _, _ = self.engine.telemetry._steps[-1]
        self.steps.append((batch, tokens, time.thread_time() - cpu, time.perf_counter() - wall))

    def remove(self) -> None:
        del self.engine._step


async def stream_all(engine, prompts: list[list[int]], output_len: int) -> int:
    """Submit every request while the loop thread waits, so all of them run as one batch."""
    gate = threading.Event()
    engine._intake.put(Query(gate.wait))
    params = SamplingParams.greedy(max_tokens=output_len, ignore_eos=True)
    streams = [await engine.infer_stream(InferenceRequest(prompt_token_ids=p, sampling_params=params)) for p in prompts]
    gate.set()

    async def drain(stream) -> int:
        return sum([chunk.token is not None async for chunk in stream])
    return sum(await asyncio.gather(*(drain(s) for s in streams)))


def run_at(engine, concurrency: int, prompt_len: int, output_len: int, seed: int,
           profiler: cProfile.Profile | None = None) -> dict:
    rng = np.random.default_rng(seed)
    prompts = [[int(t) for t in rng.integers(100, 40_000, prompt_len)] for _ in range(concurrency)]
    timer = StepTimer(engine, profiler)
    cpu, start = time.process_time(), time.perf_counter()
    try:
        tokens = asyncio.run(stream_all(engine, prompts, output_len))
    finally:
        timer.remove()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    full = [s for s in timer.steps if s[0] == concurrency and s[1] == concurrency]  # every sequence decodes one
    seq_steps = max(sum(s[0] for s in full), 1)
    return {
        "concurrency": concurrency,
        "output_tokens": tokens,
        "wall_s": round(wall, 3),
        "full_decode_steps": len(full),
        "loop_cpu_us_per_seq_step": round(1e6 * sum(s[2] for s in full) / seq_steps, 2),
        "loop_wall_us_per_seq_step": round(1e6 * sum(s[3] for s in full) / seq_steps, 2),
        "process_cpu_us_per_token": round(1e6 * cpu / tokens, 2),
        "wall_us_per_token": round(1e6 * wall / tokens, 2),
        "host_bound_tokens_per_s": round(tokens / wall, 1),
        # with a simulated GPU step: output tokens/s over the rate of back-to-back steps
        "of_bare_step_rate": round(tokens / wall / (concurrency / InstantRunner.step_s), 3) if InstantRunner.step_s else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifact")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="runs per concurrency; the fastest is kept")
    parser.add_argument("--step-ms", type=float, default=0.0,
                        help="simulated GPU time per forward (a GIL-free sleep), to see how much host work overlaps it")
    parser.add_argument("--profile", type=Path, help="write the cProfile of the last concurrency's runs here")
    parser.add_argument("--label", default="", help="what this run measures; a report of the same label in --out is replaced")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    InstantRunner.step_s = args.step_ms / 1000
    with mock.patch.object(batch_engine, "ModelRunner", InstantRunner):
        engine = batch_engine.ContinuousBatchEngine(EngineConfig(
            artifact_path=args.artifact, max_model_len=args.prompt_len + args.output_len + 16,
            max_num_seqs=max(args.concurrency), max_num_batched_tokens=max(args.concurrency) * args.prompt_len,
            kv_cache_tokens=max(args.concurrency) * (args.prompt_len + args.output_len + 16),
            enable_prefix_caching=False))
    runs = []
    try:
        run_at(engine, 8, args.prompt_len, 16, 0)  # warm-up
        for c in args.concurrency:
            profiler = cProfile.Profile() if args.profile and c == args.concurrency[-1] else None
            best = min((run_at(engine, c, args.prompt_len, args.output_len, c + r, profiler) for r in range(args.repeats)),
                       key=lambda r: r["loop_cpu_us_per_seq_step"])
            if profiler:  # the loop thread's steps only (cProfile sees the thread it runs in)
                with open(args.profile, "w") as fh:
                    pstats.Stats(profiler, stream=fh).sort_stats("tottime").print_stats(40)
            runs.append(best)
            print(f"c={c:4d} loop {best['loop_cpu_us_per_seq_step']:7.2f} us CPU ({best['loop_wall_us_per_seq_step']:7.2f} "
                  f"wall)/seq/step  process {best['process_cpu_us_per_token']:7.2f} us CPU/token  "
                  f"({best['host_bound_tokens_per_s']:9.1f} tok/s host-bound)", flush=True)
    finally:
        asyncio.run(engine.shutdown())
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    report = {
        "command": " ".join(["python"] + sys.argv),
        "label": args.label,
        "commit": commit.stdout.strip(),
        "device": {"host": platform.node(), "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                   "python": platform.python_version()},
        "prompt_len": args.prompt_len, "output_len": args.output_len, "step_ms": args.step_ms,
        "runs": runs,
    }
    if args.out:  # one report per label: a before/after pair lives in one file
        reports = json.loads(args.out.read_text())["reports"] if args.out.exists() else []
        reports = [r for r in reports if r["label"] != args.label] + [report]
        args.out.write_text(json.dumps({"reports": reports}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
