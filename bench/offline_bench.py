"""Offline throughput and latency of the continuous-batching engine at several concurrencies.

For each concurrency C, ``C`` client tasks pull from a fixed list of requests (random prompt
tokens of a given length, a fixed number of output tokens with EOS ignored) and stream them
through ``ContinuousBatchEngine.infer_stream`` in this process. Per request it records TTFT
(submit → first token), TPOT ((E2E − TTFT) / (tokens − 1)), every inter-token gap (ITL) and E2E;
per run, requests/s and output tokens/s over the wall time of the run. One warm-up run precedes
the measurements. Writes JSON (and prints a table).

    python bench/offline_bench.py ARTIFACT --concurrency 1 4 16 64 --out bench/results/cpu_offline.json
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import json
import platform
import pstats
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ferrum.types import EngineConfig, InferenceRequest, SamplingParams  # noqa: E402
from runtime.batch_engine import ContinuousBatchEngine  # noqa: E402
from runtime.stats import summarize  # noqa: E402


def make_requests(n: int, prompt_len: int, output_len: int, vocab: int, special: set[int], seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    prompts = []
    for _ in range(n):
        ids = [int(t) for t in rng.integers(100, vocab, prompt_len * 2) if int(t) not in special]
        prompts.append(ids[:prompt_len])
    return prompts


async def one(engine: ContinuousBatchEngine, prompt: list[int], output_len: int) -> dict:
    params = SamplingParams.greedy(max_tokens=output_len, ignore_eos=True)
    start = time.perf_counter()
    stamps = []
    async for _ in await engine.infer_stream(InferenceRequest(prompt_token_ids=prompt, sampling_params=params)):
        stamps.append(time.perf_counter())
    return {"ttft": stamps[0] - start, "e2e": stamps[-1] - start, "tokens": len(stamps),
            "itl": list(np.diff(stamps)), "tpot": (stamps[-1] - stamps[0]) / max(len(stamps) - 1, 1)}


async def run_at(engine: ContinuousBatchEngine, prompts: list[list[int]], output_len: int, concurrency: int) -> dict:
    pending = list(prompts)
    results: list[dict] = []

    async def client() -> None:
        while pending:
            results.append(await one(engine, pending.pop(), output_len))

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    ms = lambda values: {k: round(v * 1000, 2) for k, v in vars(summarize(values)).items() if k != "count"}  # noqa: E731
    tokens = sum(r["tokens"] for r in results)
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(results) / wall, 3),
        "output_tokens_per_s": round(tokens / wall, 2),
        "ttft_ms": ms(r["ttft"] for r in results),
        "tpot_ms": ms(r["tpot"] for r in results),
        "itl_ms": ms(g for r in results for g in r["itl"]),
        "e2e_ms": ms(r["e2e"] for r in results),
    }


def phase_ms(engine: ContinuousBatchEngine) -> dict[str, float]:
    """The engine's cumulative time per phase (scheduling, model execution, sampling/output, ...)."""
    return dataclasses.asdict(engine.metrics().performance_breakdown)


def profile_steps(engine: ContinuousBatchEngine, profiler: cProfile.Profile) -> None:
    """Run every engine step under ``profiler`` (cProfile sees only the thread it runs in: the loop's)."""
    step = engine._step
    engine._step = lambda: profiler.runcall(step)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifact")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--requests-per-client", type=float, default=2.0)
    parser.add_argument("--min-requests", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--max-num-batched-tokens", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--load-format", choices=("auto", "dummy"), default="auto",
                        help="dummy: weights generated on the device (shape-only artifacts)")
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="sys.setswitchinterval for the run (how soon a thread waiting for the GIL gets it)")
    parser.add_argument("--profile", type=Path, help="write the cProfile of the loop thread's steps in one extra run "
                        "at the last concurrency")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)

    engine = ContinuousBatchEngine(EngineConfig(
        artifact_path=args.artifact, max_model_len=args.prompt_len + args.output_len + 16,
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        enable_prefix_caching=False, load_format=args.load_format))
    vocab = engine.artifact.config.vocab_size
    special = set(engine.tokenizer.eos_token_ids)
    runs = []
    try:
        warm = make_requests(4, args.prompt_len, args.output_len, vocab, special, args.seed + 1)
        asyncio.run(run_at(engine, warm, 8, 4))
        for c in args.concurrency:
            n = max(args.min_requests, int(c * args.requests_per_client))
            prompts = make_requests(n, args.prompt_len, args.output_len, vocab, special, args.seed + c)
            before = phase_ms(engine)
            runs.append(asyncio.run(run_at(engine, prompts, args.output_len, c)))
            r = runs[-1]
            r["phase_ms"] = {k: round(v - before[k], 1) for k, v in phase_ms(engine).items()}
            print(f"c={c:3d} n={r['requests']:3d} {r['requests_per_s']:7.2f} req/s {r['output_tokens_per_s']:8.1f} tok/s  "
                  f"TTFT p50 {r['ttft_ms']['p50']:8.1f} p99 {r['ttft_ms']['p99']:8.1f} ms  "
                  f"TPOT p50 {r['tpot_ms']['p50']:6.1f}  ITL p50 {r['itl_ms']['p50']:6.1f} p99 {r['itl_ms']['p99']:6.1f} ms",
                  flush=True)
            print("    phases (ms):", r["phase_ms"], flush=True)
        if args.profile:  # one more run at the last concurrency, under the profiler (not among the figures)
            profiler = cProfile.Profile()
            profile_steps(engine, profiler)
            asyncio.run(run_at(engine, prompts, args.output_len, args.concurrency[-1]))
            with open(args.profile, "w") as fh:
                pstats.Stats(profiler, stream=fh).sort_stats("tottime").print_stats(45)
    finally:
        asyncio.run(engine.shutdown())
    report = {
        "command": " ".join(sys.argv),
        "artifact": Path(args.artifact).name,
        "device": {"kind": engine.runner.device_kind, "host": platform.node(), "cpu": platform.processor(),
                   "cores": __import__("os").cpu_count()},
        "prompt_len": args.prompt_len, "output_len": args.output_len,
        "max_num_seqs": args.max_num_seqs, "max_num_batched_tokens": args.max_num_batched_tokens,
        "load_format": args.load_format, "switch_interval_s": sys.getswitchinterval(),
        "runs": runs,
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
