"""Check and tune Ferrum's CUDA kernels on the GPU, against PyTorch in the same process.

1. Correctness: the checks of ``checks/cuda_kernels.py`` (linear layers, sampler, prefill and decode
   attention, RoPE), reported with their errors.
2. Tuning: each tile configuration of each kernel kind, timed with CUDA events around CUDA-graph
   replays of back-to-back calls (median), on the Llama-3-8B and SmolLM2 layer shapes at several
   row counts, weights rotated through several buffers so L2 does not hold them; the fastest configuration per (kind, op, N, K, rows) becomes
   the tuning database (``--db``). cuBLAS (``torch.nn.functional.linear``) is timed beside it.

    python bench/kernel_bench.py LIB.so --out $OUT/kernels.json --db $OUT/sm_90a.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import tvm_ffi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from checks.cuda_kernels import (  # noqa: E402
    GEMM_CONFIGS,
    GEMV_CONFIGS,
    Kernels,
    attention_case,
    check_attention,
    check_decode_attention,
    check_linear,
    check_rope,
    check_masked_sampler,
    check_sampler,
    make_case,
    paged_decode_case,
    run_op,
)

# (name, op, N out features, K) per model; "gated" N is the intermediate size (W has 2N rows)
SHAPES = {
    "llama3-8b": [("qkv", "norm", 6144, 4096), ("o_proj", "res", 4096, 4096), ("gate_up", "gated", 14336, 4096),
                  ("down", "res", 4096, 14336), ("lm_head", "logits", 128256, 4096)],
    "smollm2-135m": [("qkv", "norm", 960, 576), ("o_proj", "res", 576, 576), ("gate_up", "gated", 1536, 576),
                     ("down", "res", 576, 1536), ("lm_head", "logits", 49152, 576)],
}
GEMV_ROWS = (1, 2, 4, 8)
GEMM_ROWS = (16, 32, 64, 128, 256, 512, 2048, 8192)


def time_decode_attention(kern: Kernels) -> list[dict]:
    rows = []
    for b, ctx, h_q, h_kv, d in [(1, 128, 32, 8, 128), (1, 4096, 32, 8, 128), (64, 128, 32, 8, 128), (1, 128, 9, 3, 64)]:
        run, *_ = paged_decode_case(kern, [ctx] * b, h_q, h_kv, d, 16, 5)
        us = time_ms(run, 20) * 1000
        rows.append({"batch": b, "context": ctx, "h_q": h_q, "h_kv": h_kv, "d": d, "us": us})
        print(f"decode attention b={b} ctx={ctx} h={h_q}/{h_kv} d={d}: {us:.1f} us", flush=True)
    return rows


def time_attention(kern: Kernels) -> list[dict]:
    """Causal prefill attention of one sequence: ours vs torch SDPA (FlashAttention) on the same data."""
    rows = []
    for n, h_q, h_kv, d in [(2048, 32, 8, 128), (8192, 32, 8, 128), (2048, 9, 3, 64), (8192, 9, 3, 64)]:
        run, q, k, v, *_ = attention_case(kern, [n], [0], h_q, h_kv, d, 7)
        ms = time_ms(run, 10)
        qt, kt, vt = (t.transpose(0, 1)[None] for t in (q, k, v))
        kt, vt = kt.repeat_interleave(h_q // h_kv, 1), vt.repeat_interleave(h_q // h_kv, 1)
        sdpa = time_ms(lambda qt=qt, kt=kt, vt=vt: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True),
                       10)
        flops = 4 * n * n * d * h_q / 2
        rows.append({"tokens": n, "h_q": h_q, "h_kv": h_kv, "d": d, "ms": ms, "tflops": flops / ms / 1e9,
                     "torch_sdpa_ms": sdpa})
        print(f"attention n={n} h={h_q}/{h_kv} d={d}: {ms:.3f} ms ({flops / ms / 1e9:.0f} TF), torch SDPA {sdpa:.3f} ms",
              flush=True)
    return rows


def _events_ms(fn) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def time_ms(fn, reps: int) -> float:
    """Median GPU time of one ``fn()``: calls are captured back to back in a CUDA graph (as decode
    runs them) so that host launch overhead, ~25 us per call from Python, is not measured; as many
    calls per graph as fit in about a millisecond."""
    fn()
    torch.cuda.synchronize()
    per_graph = max(1, min(20, round(1.0 / max(_events_ms(fn), 1e-3))))
    graph = torch.cuda.CUDAGraph()
    with tvm_ffi.use_torch_stream(torch.cuda.graph(graph)):
        for _ in range(per_graph):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    return statistics.median(_events_ms(graph.replay) / per_graph for _ in range(reps))


def tune(kern: Kernels, models: list[str], budget_s: float) -> tuple[list[dict], list[dict]]:
    """Time every configuration; return all timings and the database entries (the fastest
    configuration per kind, op, N, K and row count; for f16 ops at <= 8 rows also whether the GEMV
    or the tensor-core GEMM path is faster)."""
    timings, best = [], []
    t_start = time.time()
    for model in models:
        for name, op, n, k in SHAPES[model]:
            gemv_op = {"logits": "norm"}.get(op, op)
            gemm_op = {"res": "res", "gated": "gated"}.get(op, "plain")  # gated: the fused SwiGLU GEMM
            for quant in (False, True):
                if quant and op == "logits":
                    continue
                path_faster_gemv = []
                for m in GEMV_ROWS + GEMM_ROWS:
                    if time.time() - t_start > budget_s:
                        return timings, best
                    if (m > 2048 and model != "llama3-8b") or (quant and m > 8):
                        continue  # int4 above 8 rows = dequantize + the f16 GEMM, tuned with quant=False
                    rows_w = 2 * n if op == "gated" else n
                    copies = 3 if rows_w * k * 2 < 150e6 else 1
                    cases = [make_case(op, quant, m, n, k, 1000 + i) for i in range(copies)]
                    idx = [0]

                    def run(cases=cases, idx=idx, copies=copies, op=op, quant=quant):
                        x, g, wq, _, res, out, scratch = cases[idx[0] % copies]
                        idx[0] += 1
                        run_op(kern, op, quant, x, g, wq, res, out, scratch)

                    if m > 8:
                        kinds = [("gemm_f16", GEMM_CONFIGS, None)]
                    elif quant:
                        kinds = [("gemv_q4", GEMV_CONFIGS["gemv_q4"], None)]
                    else:  # both paths: the GEMV up to 8 rows, or the GEMM from 1 row
                        kinds = [("gemv_f16", GEMV_CONFIGS["gemv_f16"], 8), ("gemm_f16", GEMM_CONFIGS, 0)]
                    reps = 10 if m >= 2048 else 30
                    row = {"model": model, "layer": name, "op": op, "quant": quant, "m": m, "n": n, "k": k, "ms": {}}
                    for kind, configs, path in kinds:
                        if path is not None:
                            kern.force("path_f16", path)
                        for cfg in range(configs):
                            kern.force(kind, cfg)
                            row["ms"][f"{kind}:{cfg}"] = time_ms(run, reps)
                        kern.force(kind, -1)
                        kern.force("path_f16", -1)
                        cfg_best = min(range(configs), key=lambda c: row["ms"][f"{kind}:{c}"])
                        best.append({"kind": kind, "op": gemv_op if kind != "gemm_f16" else gemm_op,
                                     "n": n, "k": k, "m_max": m,
                                     "config": int(cfg_best), "ms": row["ms"][f"{kind}:{cfg_best}"]})
                    if not quant and m <= 8:
                        gemv = min(v for key, v in row["ms"].items() if key.startswith("gemv"))
                        gemm = min(v for key, v in row["ms"].items() if key.startswith("gemm"))
                        path_faster_gemv.append((m, gemv < gemm))
                    row["auto_ms"] = time_ms(run, reps)
                    if not quant:
                        x0, _, wq0, _, _, _, _ = cases[0]
                        row["cublas_ms"] = time_ms(lambda x0=x0, w=wq0[0][:rows_w]: torch.nn.functional.linear(x0, w), reps)
                    key_best = min(row["ms"], key=row["ms"].get)
                    wbytes = rows_w * k * (0.5 + 4 / 32 if quant else 2)
                    row["best"] = key_best
                    row["best_gb_s"] = wbytes / (row["ms"][key_best] * 1e-3) / 1e9
                    row["best_tflops"] = 2 * m * rows_w * k / (row["ms"][key_best] * 1e-3) / 1e12
                    timings.append(row)
                    print(f"{model:13s} {name:8s} {'q4' if quant else 'f16'} m={m:5d} best {key_best:10s} "
                          f"{row['ms'][key_best]:.4f} ms ({row['best_gb_s']:.0f} GB/s, {row['best_tflops']:.1f} TF)"
                          + (f" cuBLAS {row['cublas_ms']:.4f} ms" if "cublas_ms" in row else ""), flush=True)
                if path_faster_gemv:
                    limit = max([m for m, faster in path_faster_gemv if faster], default=0)
                    best.append({"kind": "path_f16", "op": gemv_op, "n": n, "k": k, "m_max": 1 << 30,
                                 "config": limit})
    return timings, best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("library")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--db", type=Path)
    parser.add_argument("--models", nargs="+", default=list(SHAPES))
    parser.add_argument("--tune-budget-s", type=float, default=240)
    args = parser.parse_args()
    kern = Kernels(args.library)
    report = {"command": " ".join(sys.argv), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    linear = check_linear(kern)
    bad = [r for r in linear if not r["ok"]]
    report["linear_checks"] = {"cases": len(linear), "failed": bad,
                               "max_rel_err": max(r["rel_err"] for r in linear)}
    print(f"linear checks: {len(linear) - len(bad)}/{len(linear)} ok, max rel err "
          f"{report['linear_checks']['max_rel_err']:.2e}", flush=True)
    for r in bad[:20]:
        print("  FAILED", r, flush=True)
    report["sampler"] = check_sampler(kern)
    print("sampler:", report["sampler"], flush=True)
    report["masked_sampler"] = check_masked_sampler(kern)
    print("masked sampler:", report["masked_sampler"], flush=True)
    report["attention_checks"] = check_attention(kern)
    for r in report["attention_checks"]:
        print("attention:", r, flush=True)
    report["attention_timing"] = time_attention(kern)
    report["decode_attention_checks"] = check_decode_attention(kern)
    for r in report["decode_attention_checks"]:
        print("decode attention:", r, flush=True)
    report["decode_attention_timing"] = time_decode_attention(kern)
    report["rope_check"] = check_rope(kern)
    print("rope:", report["rope_check"], flush=True)
    args.out.write_text(json.dumps(report, indent=1))
    if args.db:
        timings, best = tune(kern, args.models, args.tune_budget_s)
        report["tuning"] = timings
        args.out.write_text(json.dumps(report, indent=1))
        largest: dict[tuple, dict] = {}
        for entry in best:  # the largest measured row count also covers everything above it
            key = (entry["kind"], entry["op"], entry["n"], entry["k"])
            if key not in largest or entry["m_max"] > largest[key]["m_max"]:
                largest[key] = entry
        for entry in largest.values():
            if entry["kind"] == "gemm_f16":
                entry["m_max"] = 1 << 30
        db = {"device": torch.cuda.get_device_name(), "command": report["command"], "entries": best}
        args.db.write_text(json.dumps(db, indent=1))
    ok = (not bad and report["sampler"]["ok"] and report["masked_sampler"]["ok"] and report["rope_check"]["ok"]
          and all(r["ok"] for r in report["attention_checks"] + report["decode_attention_checks"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
