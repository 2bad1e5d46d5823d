"""What this CPU can do, and how close Ferrum's CPU artifacts and llama.cpp get to it, in one run.

1. Machine limits: a STREAM-like copy and triad (a tiny C program, gcc -O3 -march=native -fopenmp,
   1 and 2 threads; arrays far larger than the L3) and dense float32 GEMM GFLOP/s (numpy's BLAS).
2. Batch-1 decode: a fixed 32-token prompt, then 128 greedy tokens (EOS ignored), tokens/s
   between the first and the last streamed token, for each Ferrum artifact (the full engine:
   sampling, detokenization, streaming) and for llama.cpp on the GGUF they were compiled from,
   same thread count. Also the weight bytes each Ferrum step reads (``streamed_weight_bytes``), so
   tok/s x bytes can be read against the measured bandwidth.
3. Prefill: a 512-token prompt (the fixed text repeated), seconds to its first generated token
   (Ferrum: through the engine; llama.cpp: ``eval`` of the prompt and one sample).

The machine is shared and noisy, so every repeat runs each Ferrum artifact and llama.cpp back to
back and the ratio to llama.cpp is taken per repeat (``paired_ratios``); the row's figure is the
median of its repeats and ``ratio_to_llama_cpp`` the median of its paired ratios.

llama.cpp is a bench peer only, never a runtime dependency; install it where this bench sees it:

    CMAKE_BUILD_PARALLEL_LEVEL=2 .venv/bin/pip install --no-deps --target /tmp/llamacpp-pkg llama-cpp-python==0.3.36 diskcache  # builds, ~20 min on 2 busy cores
    PYTHONPATH=/tmp/llamacpp-pkg .venv/bin/python bench/cpu_bench.py \\
        artifacts/smollm2-135m-instruct-q0f32-llvm artifacts/smollm2-135m-instruct-q4f32-llvm \\
        --out bench/results/cpu_bench.json

Without llama-cpp-python importable the llama.cpp row is skipped with a note.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from checks.machine import cpu_name  # noqa: E402

import numpy as np  # noqa: E402

STREAM_C = r"""
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#define N (64L * 1024 * 1024)  /* 256 MiB per float array, 8x the L3 */
static double now(void) { return omp_get_wtime(); }
int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 5;
    float *a = aligned_alloc(64, N * 4), *b = aligned_alloc(64, N * 4), *c = aligned_alloc(64, N * 4);
    #pragma omp parallel for
    for (long i = 0; i < N; i++) { a[i] = 1; b[i] = 2; c[i] = 0; }
    double copy = 1e30, triad = 1e30;
    for (int r = 0; r < reps; r++) {
        double t = now();
        #pragma omp parallel for
        for (long i = 0; i < N; i++) c[i] = a[i];
        t = now() - t; if (t < copy) copy = t;
        t = now();
        #pragma omp parallel for
        for (long i = 0; i < N; i++) a[i] = b[i] + 3.0f * c[i];
        t = now() - t; if (t < triad) triad = t;
    }
    printf("{\"copy_GBps\": %.2f, \"triad_GBps\": %.2f, \"check\": %.1f}\n",
           2.0 * N * 4 / copy / 1e9, 3.0 * N * 4 / triad / 1e9, (double)a[N / 2]);
    return 0;
}
"""


def stream_bandwidth(threads: list[int]) -> dict[str, dict]:
    """Best-of-5 copy (2 x 4 bytes per element) and triad (3 x 4 bytes) bandwidth per thread count."""
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "stream.c", Path(tmp) / "stream"
        src.write_text(STREAM_C)
        subprocess.run(["gcc", "-O3", "-march=native", "-fopenmp", str(src), "-o", str(exe)], check=True)
        out = {}
        for n in threads:
            env = {**os.environ, "OMP_NUM_THREADS": str(n), "OMP_PROC_BIND": "true"}
            run = subprocess.run([str(exe)], env=env, check=True, capture_output=True, text=True)
            out[f"{n}_threads"] = json.loads(run.stdout)
        return out


def gemm_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Best float32 GFLOP/s of numpy's BLAS on a size x size x size matmul (its own thread count)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((size, size), np.float32), rng.standard_normal((size, size), np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def streamed_weight_bytes(artifact: Path) -> int:
    """Bytes of the weights one batch-1 decode step reads: every parameter except the embedding
    table when the artifact has its own LM head (then only one row of the table is gathered; a
    tied table is the LM head, so it is read whole)."""
    records = [t for shard in json.loads((artifact / "weights" / "tensor-cache.json").read_text())["records"]
               for t in shard["records"]]
    names = {t["name"] for t in records}
    own_head = any(n.startswith("lm_head.") for n in names)
    return sum(t["nbytes"] for t in records if not (own_head and t["name"].startswith("embed_tokens.")))


class FerrumPeer:
    """One Ferrum artifact behind the full engine: ``decode`` (tok/s, ids) and ``prefill`` (seconds)."""

    def __init__(self, artifact: Path):
        from ferrum.types import EngineConfig
        from runtime.batch_engine import ContinuousBatchEngine

        self.artifact = artifact
        self.engine = ContinuousBatchEngine(EngineConfig(artifact_path=str(artifact), max_model_len=2048))

    def _stamps(self, prompt_ids: list[int], tokens: int) -> tuple[float, list[float]]:
        """The request's start and the arrival time of each streamed chunk."""
        from ferrum.types import InferenceRequest, SamplingParams

        params = SamplingParams.greedy(max_tokens=tokens, ignore_eos=True)
        request = InferenceRequest(prompt_token_ids=prompt_ids, sampling_params=params)

        async def run() -> tuple[float, list[float]]:
            start = time.perf_counter()
            return start, [time.perf_counter() async for _ in await self.engine.infer_stream(request)]

        return asyncio.run(run())

    def decode(self, prompt_ids: list[int], tokens: int) -> tuple[float, list[int]]:
        from ferrum.types import InferenceRequest, SamplingParams

        _, stamps = self._stamps(prompt_ids, tokens)
        params = SamplingParams.greedy(max_tokens=tokens, ignore_eos=True)
        ids = asyncio.run(self.engine.infer(InferenceRequest(prompt_token_ids=prompt_ids, sampling_params=params))).tokens
        return (len(stamps) - 1) / (stamps[-1] - stamps[0]), ids

    def prefill(self, prompt_ids: list[int]) -> float:
        """Seconds to the first token; the caller varies the prompt's first token so the engine's
        prefix cache never holds it."""
        start, stamps = self._stamps(prompt_ids, 1)
        return stamps[0] - start

    def close(self) -> None:
        asyncio.run(self.engine.shutdown())


class LlamaCppPeer:
    """llama.cpp (llama-cpp-python) on the GGUF, same interface as ``FerrumPeer``."""

    def __init__(self, gguf: Path, threads: int):
        from llama_cpp import Llama, __version__

        self.version, self.threads = __version__, threads
        self.llm = Llama(model_path=str(gguf), n_ctx=1024, n_batch=512, n_threads=threads, n_threads_batch=threads,
                         verbose=False)

    def decode(self, prompt_ids: list[int], tokens: int) -> tuple[float, list[int]]:
        self.llm.reset()
        stamps, ids = [], []
        for token in self.llm.generate(prompt_ids, temp=0.0, top_k=1, reset=True):
            stamps.append(time.perf_counter())
            ids.append(token)
            if len(ids) == tokens:
                break
        return (len(stamps) - 1) / (stamps[-1] - stamps[0]), ids

    def prefill(self, prompt_ids: list[int]) -> float:
        self.llm.reset()
        start = time.perf_counter()
        next(iter(self.llm.generate(prompt_ids, temp=0.0, top_k=1, reset=True)))
        return time.perf_counter() - start

    def close(self) -> None:
        self.llm.close()


def paired_runs(peers: dict, decode_ids: list[int], prefill_ids: list[int], tokens: int, repeats: int) -> dict:
    """Every peer back to back in each repeat (after one warm-up each), so a ratio compares runs
    that saw the same load."""
    runs: dict[str, dict[str, list]] = {name: {"decode": [], "prefill": [], "tokens": []} for name in peers}
    for peer in peers.values():
        peer.decode(decode_ids, 8)
        peer.prefill([prefill_ids[0] + 1, *prefill_ids[1:]])
    for r in range(repeats):
        fresh = [prefill_ids[0] + 2 + r, *prefill_ids[1:]]  # a new first token: no prefix-cache hit
        for name, peer in peers.items():
            rate, ids = peer.decode(decode_ids, tokens)
            runs[name]["decode"].append(rate)
            runs[name]["tokens"] = ids
            runs[name]["prefill"].append(peer.prefill(fresh))
            print(f"{name}: {rate:.1f} tok/s, prefill {runs[name]['prefill'][-1]:.2f} s", flush=True)
    return runs


def prompt_token_ids(gguf: Path, n: int) -> list[int]:
    """``n`` token ids of a fixed English text (repeated as needed), tokenized by the GGUF's own vocabulary."""
    from tokenizers import Tokenizer

    from compile.sources import open_source

    text = ("The history of the printing press begins in the fifteenth century, when a goldsmith in Mainz "
            "combined movable metal type, oil-based ink and a wooden screw press into one working system.")
    tok = Tokenizer.from_str(open_source(gguf).tokenizer_json)
    ids = tok.encode(" ".join([text] * (n // 20 + 1))).ids
    return ids[:n]


def main() -> int:
    from compile.sources import packaged_model_path

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", nargs="*", type=Path, help="Ferrum CPU artifacts compiled from --gguf")
    parser.add_argument("--gguf", type=Path, help="default: the packaged SmolLM2-135M-Instruct Q4_1 GGUF")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--prefill-tokens", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp's threads and TVM's (TVM_NUM_THREADS)")
    parser.add_argument("--skip-machine", action="store_true", help="skip the bandwidth and GEMM measurements")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM's thread pool starts
    args.artifacts_by_key = {(a.name if [b.name for b in args.artifacts].count(a.name) == 1 else str(a)): a
                             for a in args.artifacts}
    gguf = args.gguf or packaged_model_path("smollm2-135m-instruct")

    report: dict = {"command": " ".join(sys.argv), "host": platform.node(), "cpu": cpu_name(),
                    "cores": os.cpu_count(), "load_average_at_start": os.getloadavg()}
    if not args.skip_machine:
        report["stream"] = stream_bandwidth(sorted({1, args.threads}))
        report["gemm_float32_gflops"] = gemm_gflops()
        print(f"stream {report['stream']}\ngemm {report['gemm_float32_gflops']:.1f} GFLOP/s", flush=True)
    ids = prompt_token_ids(gguf, args.prompt_tokens)
    long_ids = prompt_token_ids(gguf, args.prefill_tokens)
    report["decode"] = {"gguf": gguf.name, "prompt_tokens": len(ids), "generated_tokens": args.tokens,
                        "prefill_prompt_tokens": len(long_ids), "threads": args.threads, "rows": {}}
    rows = report["decode"]["rows"]
    peers: dict = {}
    for artifact in args.artifacts:
        key = artifact.name if [a.name for a in args.artifacts].count(artifact.name) == 1 else str(artifact)
        peers[key] = FerrumPeer(artifact)
    try:
        peers["llama.cpp"] = LlamaCppPeer(gguf, args.threads)
    except ImportError as exc:
        rows["llama.cpp"] = {"skipped": f"llama-cpp-python not importable ({exc})"}
    try:
        runs = paired_runs(peers, ids, long_ids, args.tokens, args.repeats)
    finally:
        for peer in peers.values():
            peer.close()
    for name, run in runs.items():
        rows[name] = {"decode_tok_s": statistics.median(run["decode"]), "runs_tok_s": run["decode"],
                      "prefill_s": statistics.median(run["prefill"]), "runs_prefill_s": run["prefill"],
                      "tokens": run["tokens"]}
        if name in args.artifacts_by_key:
            size = streamed_weight_bytes(args.artifacts_by_key[name])
            rows[name]["streamed_weight_bytes_per_token"] = size
            rows[name]["weight_GBps_at_that_rate"] = size * rows[name]["decode_tok_s"] / 1e9
    if "llama.cpp" in runs:
        peer = runs["llama.cpp"]
        for name, run in runs.items():
            if name == "llama.cpp":
                continue
            decode = [a / b for a, b in zip(run["decode"], peer["decode"], strict=True)]
            prefill = [b / a for a, b in zip(run["prefill"], peer["prefill"], strict=True)]  # speed ratio
            rows[name]["paired_ratios"] = {"decode": decode, "prefill": prefill}
            rows[name]["ratio_to_llama_cpp"] = statistics.median(decode)
            rows[name]["prefill_ratio_to_llama_cpp"] = statistics.median(prefill)
            same = next((i for i, (a, b) in enumerate(zip(run["tokens"], peer["tokens"])) if a != b), len(run["tokens"]))
            rows[name]["greedy_tokens_equal_to_llama_cpp"] = same
    report["load_average_at_end"] = os.getloadavg()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0



if __name__ == "__main__":
    sys.exit(main())
