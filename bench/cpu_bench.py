"""What this CPU can do, and how close Ferrum's CPU artifacts and llama.cpp get to it, in one run.

1. Machine limits: a STREAM-like copy and triad (a tiny C program, gcc -O3 -march=native -fopenmp,
   1 and 2 threads; arrays far larger than the L3) and dense float32 GEMM GFLOP/s (numpy's BLAS).
2. Batch-1 decode: a fixed 32-token prompt, then 128 greedy tokens (EOS ignored), tokens/s
   between the first and the last streamed token (the median of ``--repeats`` runs), for each
   Ferrum artifact (the full engine: sampling, detokenization, streaming) and for llama.cpp on the
   GGUF they were compiled from, same thread count. Also the weight bytes each Ferrum step reads
   (``streamed_weight_bytes``), so tok/s x bytes can be read against the measured bandwidth.

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


def ferrum_decode(artifact: Path, prompt_ids: list[int], tokens: int, repeats: int) -> dict:
    from ferrum.types import EngineConfig, InferenceRequest, SamplingParams
    from runtime.batch_engine import ContinuousBatchEngine

    engine = ContinuousBatchEngine(EngineConfig(artifact_path=str(artifact), max_model_len=2048))
    params = SamplingParams.greedy(max_tokens=tokens, ignore_eos=True)

    async def one() -> float:
        request = InferenceRequest(prompt_token_ids=prompt_ids, sampling_params=params)
        stamps = [time.perf_counter() async for _ in await engine.infer_stream(request)]
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])

    try:
        asyncio.run(one())  # warm-up
        rates = [asyncio.run(one()) for _ in range(repeats)]
        greedy = asyncio.run(engine.infer(InferenceRequest(prompt_token_ids=prompt_ids, sampling_params=params))).tokens
    finally:
        asyncio.run(engine.shutdown())
    size = streamed_weight_bytes(artifact)
    rate = statistics.median(rates)
    return {"decode_tok_s": rate, "runs_tok_s": rates, "streamed_weight_bytes_per_token": size,
            "weight_GBps_at_that_rate": size * rate / 1e9, "tokens": greedy}


def llama_cpp_decode(gguf: Path, prompt_ids: list[int], tokens: int, repeats: int, threads: int) -> dict:
    from llama_cpp import Llama, __version__

    llm = Llama(model_path=str(gguf), n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)

    def one() -> tuple[float, list[int]]:
        llm.reset()
        stamps, ids = [], []
        for token in llm.generate(prompt_ids, temp=0.0, top_k=1, reset=True):
            stamps.append(time.perf_counter())
            ids.append(token)
            if len(ids) == tokens:
                break
        return (len(stamps) - 1) / (stamps[-1] - stamps[0]), ids

    one()
    runs = [one() for _ in range(repeats)]
    rates = [r for r, _ in runs]
    return {"version": __version__, "threads": threads, "decode_tok_s": statistics.median(rates), "runs_tok_s": rates,
            "tokens": runs[-1][1]}


def prompt_token_ids(gguf: Path, n: int) -> list[int]:
    """``n`` token ids of a fixed English text, tokenized by the GGUF's own vocabulary (BOS first)."""
    from tokenizers import Tokenizer

    from compile.sources import open_source

    text = ("The history of the printing press begins in the fifteenth century, when a goldsmith in Mainz "
            "combined movable metal type, oil-based ink and a wooden screw press into one working system.")
    tok = Tokenizer.from_str(open_source(gguf).tokenizer_json)
    ids = tok.encode(text).ids
    if len(ids) < n:
        raise SystemExit(f"the fixed prompt has only {len(ids)} tokens, fewer than {n}")
    return ids[:n]


def main() -> int:
    from compile.sources import packaged_model_path

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", nargs="*", type=Path, help="Ferrum CPU artifacts compiled from --gguf")
    parser.add_argument("--gguf", type=Path, help="default: the packaged SmolLM2-135M-Instruct Q4_1 GGUF")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-machine", action="store_true", help="skip the bandwidth and GEMM measurements")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    gguf = args.gguf or packaged_model_path("smollm2-135m-instruct")

    report: dict = {"command": " ".join(sys.argv), "host": platform.node(), "cpu": _cpu_name(),
                    "cores": os.cpu_count(), "load_average_at_start": os.getloadavg()}
    if not args.skip_machine:
        report["stream"] = stream_bandwidth(sorted({1, args.threads}))
        report["gemm_float32_gflops"] = gemm_gflops()
        print(f"stream {report['stream']}\ngemm {report['gemm_float32_gflops']:.1f} GFLOP/s", flush=True)
    ids = prompt_token_ids(gguf, args.prompt_tokens)
    report["decode"] = {"gguf": gguf.name, "prompt_tokens": len(ids), "generated_tokens": args.tokens, "rows": {}}
    rows = report["decode"]["rows"]
    for artifact in args.artifacts:
        key = artifact.name if [a.name for a in args.artifacts].count(artifact.name) == 1 else str(artifact)
        rows[key] = ferrum_decode(artifact, ids, args.tokens, args.repeats)
        print(f"{key}: {rows[key]['decode_tok_s']:.1f} tok/s", flush=True)
    try:
        rows["llama.cpp"] = llama_cpp_decode(gguf, ids, args.tokens, args.repeats, args.threads)
        print(f"llama.cpp: {rows['llama.cpp']['decode_tok_s']:.1f} tok/s", flush=True)
    except ImportError as exc:
        rows["llama.cpp"] = {"skipped": f"llama-cpp-python not importable ({exc})"}
    peer = rows["llama.cpp"].get("decode_tok_s")
    for name, row in rows.items():
        if peer and name != "llama.cpp":
            row["ratio_to_llama_cpp"] = row["decode_tok_s"] / peer
    report["load_average_at_end"] = os.getloadavg()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
