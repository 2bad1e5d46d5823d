"""Check and tune Ferrum's CUDA kernels on the GPU, against PyTorch in the same process.

Loads the standalone kernel library (``python -m compile.kernels.build_shared`` output, the same
source as the kernels linked into CUDA artifacts) with ``tvm_ffi`` and calls it on torch tensors.

1. Correctness: every entry point (f16 / int4 linear, residual, fused RMSNorm, fused SwiGLU,
   float32 logits) at row counts on both sides of the GEMV/GEMM switch and across tile edges,
   against float32 torch math on the same inputs (fresh random inputs per case; outputs
   pre-filled with NaN so an unwritten element fails). Relative error ||out - ref|| / ||ref||.
2. Sampler: greedy = argmax; seeded draws equal a float64 reimplementation of the host sampler
   on most rows; draw frequencies follow the distribution.
3. Tuning: each tile configuration of each kernel kind, timed with CUDA events (median), on the
   Llama-3-8B and SmolLM2 layer shapes at several row counts, weights rotated through several
   buffers so L2 does not hold them; the fastest configuration per (kind, op, N, K, rows) becomes
   the tuning database (``--db``). cuBLAS (``torch.nn.functional.linear``) is timed beside it.

    python bench/kernel_bench.py LIB.so --out $OUT/kernels.json --db $OUT/sm_90a.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import tvm_ffi


GEMV_CONFIGS = {"gemv_f16": 3, "gemv_q4": 3}
GEMM_CONFIGS = 8
KIND_ID = {"gemv_f16": 0, "gemv_q4": 1, "gemm_f16": 2}
EPS = 1e-5

# (name, op, N out features, K) per model; "gated" N is the intermediate size (W has 2N rows)
SHAPES = {
    "llama3-8b": [("qkv", "norm", 6144, 4096), ("o_proj", "res", 4096, 4096), ("gate_up", "gated", 14336, 4096),
                  ("down", "res", 4096, 14336), ("lm_head", "logits", 128256, 4096)],
    "smollm2-135m": [("qkv", "norm", 960, 576), ("o_proj", "res", 576, 576), ("gate_up", "gated", 1536, 576),
                     ("down", "res", 576, 1536), ("lm_head", "logits", 49152, 576)],
}
GEMV_ROWS = (1, 2, 4, 8)
GEMM_ROWS = (16, 32, 64, 128, 256, 512, 2048, 8192)


class Kernels:
    def __init__(self, path: str):
        self.mod = tvm_ffi.load_module(path)

    def __call__(self, name: str, *args):
        conv = [tvm_ffi.from_dlpack(a) if isinstance(a, torch.Tensor) else a for a in args]
        self.mod[name](*conv)

    def force(self, kind: str, config: int) -> None:
        self.mod["ferrum_force_config"](KIND_ID[kind], config)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return math.inf
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def q4_weights(n: int, k: int, gen: torch.Generator):
    """Random packed int4 weights, scales and minimums, and their float32 dequantization."""
    nib = torch.randint(0, 16, (n, k), generator=gen, device="cuda", dtype=torch.int32)
    words = torch.zeros(n, k // 8, dtype=torch.int64, device="cuda")
    for i in range(8):
        words |= nib[:, i::8].long() << (4 * i)
    qw = torch.where(words >= 2**31, words - 2**32, words).int()  # the same 32 bits as int32
    scale = (torch.rand(n, k // 32, generator=gen, device="cuda") * 0.01 + 0.002).half()
    low = (-(torch.rand(n, k // 32, generator=gen, device="cuda") * 0.08)).half()
    w = nib.float() * scale.float().repeat_interleave(32, 1) + low.float().repeat_interleave(32, 1)
    return (qw, scale, low), w


def reference(op: str, x, g, w, res):
    """float32 torch math for one op; w is the float32 weight [N or 2N, K]."""
    x = x.float()
    if op in ("norm", "gated", "logits"):
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * g.float()
    y = x @ w.T
    if op == "gated":
        gate, up = y.chunk(2, dim=-1)
        y = torch.nn.functional.silu(gate) * up
    if op == "res":
        y = y + res.float()
    return y


def scratch_halves(op: str, quant: bool, m: int, n: int, k: int) -> int:
    rows = 2 * n if op == "gated" else n
    size = rows * k if quant else 0
    if op in ("norm", "logits"):
        size += m * k
    if op == "gated":
        size += m * (k + 2 * n)
    return max(size, 1)


def run_op(kern: Kernels, op: str, quant: bool, x, g, wq, res, out, scratch) -> None:
    if not quant:
        (w,) = wq
        if op == "plain":
            kern("ferrum_linear_f16", x, w, out)
        elif op == "res":
            kern("ferrum_linear_res_f16", x, w, res, out)
        elif op in ("norm", "logits"):
            kern("ferrum_norm_linear_f16" if op == "norm" else "ferrum_norm_logits_f16", x, g, w, EPS, out, scratch)
        else:
            kern("ferrum_norm_gate_up_f16", x, g, w, EPS, out, scratch)
        return
    if op == "plain":
        kern("ferrum_linear_q4", x, *wq, out, scratch)
    elif op == "res":
        kern("ferrum_linear_res_q4", x, *wq, res, out, scratch)
    elif op == "norm":
        kern("ferrum_norm_linear_q4", x, g, *wq, EPS, out, scratch)
    else:
        kern("ferrum_norm_gate_up_q4", x, g, *wq, EPS, out, scratch)


def make_case(op: str, quant: bool, m: int, n: int, k: int, seed: int):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    rows = 2 * n if op == "gated" else n
    x = torch.randn(m, k, generator=gen, device="cuda").half()
    g = (1 + 0.1 * torch.randn(k, generator=gen, device="cuda")).half()
    res = torch.randn(m, n, generator=gen, device="cuda").half()
    if quant:
        wq, wf = q4_weights(rows, k, gen)
    else:
        w = (torch.randn(rows, k, generator=gen, device="cuda") / math.sqrt(k)).half()
        wq, wf = (w,), w.float()
    out_dtype = torch.float32 if op == "logits" else torch.float16
    out = torch.full((m, n), float("nan"), device="cuda", dtype=out_dtype)
    scratch = torch.empty(scratch_halves(op, quant, m, n, k), device="cuda", dtype=torch.float16)
    return x, g, wq, wf, res, out, scratch


def check_linear(kern: Kernels) -> list[dict]:
    """Every op at many row counts with the configurations the table/heuristic picks, then every
    configuration of every kernel kind forced, on edge-heavy shapes."""
    results = []
    seed = [0]

    def case(op: str, quant: bool, m: int, n: int, k: int, forced: tuple | None) -> None:
        seed[0] += 1
        x, g, wq, wf, res, out, scratch = make_case(op, quant, m, n, k, seed[0])
        run_op(kern, op, quant, x, g, wq, res, out, scratch)
        torch.cuda.synchronize()
        err = rel_err(out, reference(op, x, g, wf, res))
        results.append({"quant": quant, "op": op, "m": m, "n": n, "k": k, "forced": forced, "rel_err": err,
                        "ok": err < 3e-3})

    ops = [(q, op) for q in (False, True) for op in ("plain", "res", "norm", "gated", "logits")
           if not (q and op == "logits")]
    for quant, op in ops:
        for n, k in [(960, 576), (576, 1536), (4096, 4096), (1000, 640)]:
            for m in (1, 2, 3, 5, 8, 9, 16, 17, 40, 64, 100, 128, 257, 1000):
                case(op, quant, m, n, k, None)
    for kind, configs in [("gemv_f16", GEMV_CONFIGS["gemv_f16"]), ("gemv_q4", GEMV_CONFIGS["gemv_q4"]),
                          ("gemm_f16", GEMM_CONFIGS)]:
        rows = (1, 3, 6, 8) if kind != "gemm_f16" else (9, 33, 200)
        for cfg in range(configs):
            kern.force(kind, cfg)
            for quant, op in ops:
                if quant != (kind == "gemv_q4") and kind != "gemm_f16":
                    continue
                for n, k in [(1000, 640), (1536, 576)]:
                    for m in rows:
                        case(op, quant, m, n, k, (kind, cfg))
        kern.force(kind, -1)
    return results


def check_sampler(kern: Kernels) -> dict:
    """Greedy rows, seeded draws vs a float64 host reimplementation, and draw frequencies."""
    gen = torch.Generator(device="cuda").manual_seed(7)
    b, v = 64, 49152
    logits = torch.randn(b, v, generator=gen, device="cuda") * 3
    rng = np.random.default_rng(0)
    temperature = rng.choice([0.0, 0.7, 1.0, 1.3], b)
    top_p = rng.choice([1.0, 0.9, 0.5], b)
    top_k = rng.choice([0, 1, 40, 1000], b)
    min_p = rng.choice([0.0, 0.05], b)
    uniform = rng.random(b)
    params = torch.tensor(np.stack([temperature, top_p, top_k, min_p, uniform], 1), dtype=torch.float32, device="cuda")
    out = torch.full((b,), -1, dtype=torch.int32, device="cuda")
    kern("ferrum_sample_tokens", logits, params, out)
    got = out.cpu().numpy()
    lg = logits.cpu().double().numpy()
    expect = np.array([host_draw(lg[i], temperature[i], top_p[i], int(top_k[i]), min_p[i], uniform[i])
                       for i in range(b)])
    greedy = temperature == 0
    same = got == expect
    # frequencies: one row, many uniforms
    row = torch.randn(1, 1000, generator=gen, device="cuda").repeat(4096, 1)
    u = np.random.default_rng(1).random(4096)
    p = torch.tensor(np.stack([np.ones(4096), np.ones(4096), np.zeros(4096), np.zeros(4096), u], 1),
                     dtype=torch.float32, device="cuda")
    draws = torch.empty(4096, dtype=torch.int32, device="cuda")
    kern("ferrum_sample_tokens", row, p, draws)
    probs = torch.softmax(row[0].double(), 0).cpu().numpy()
    counts = np.bincount(draws.cpu().numpy(), minlength=1000)
    expected = probs * 4096
    big = expected > 20
    chi2 = float((((counts - expected) ** 2) / expected)[big].sum())
    return {"rows": b, "greedy_rows": int(greedy.sum()), "greedy_equal": bool(same[greedy].all()),
            "sampled_equal_to_host": int(same[~greedy].sum()), "sampled_rows": int((~greedy).sum()),
            "chi2_frequent_tokens": chi2, "chi2_dof": int(big.sum()) - 1,
            "ok": bool(same[greedy].all()) and same[~greedy].mean() >= 0.9 and chi2 < 2 * max(int(big.sum()) - 1, 1)}


def host_draw(x, temperature, top_p, top_k, min_p, u) -> int:
    """runtime/sampling.py's order of operations, float64, with the given uniform number."""
    if temperature == 0:
        return int(np.argmax(x))
    x = x / temperature
    v = x.shape[0]
    if 0 < top_k < v:
        kth = np.partition(x, v - top_k)[v - top_k]
        x = np.where(x >= kth, x, -np.inf)
    probs = np.exp(x - x.max())
    probs /= probs.sum()
    if min_p:
        probs = np.where(probs >= min_p * probs.max(), probs, 0.0)
    if top_p < 1.0:
        cand = np.flatnonzero(probs > 0)
        order = cand[np.argsort(-probs[cand], kind="stable")]
        cum = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cum, top_p * cum[-1])) + 1]
        trimmed = np.zeros_like(probs)
        trimmed[keep] = probs[keep]
        probs = trimmed
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, u * cdf[-1], side="right"), v - 1))


def time_ms(fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def tune(kern: Kernels, models: list[str], budget_s: float) -> tuple[list[dict], list[dict]]:
    """Time every configuration; return all timings and the best entry per key."""
    timings, best = [], []
    t_start = time.time()
    for model in models:
        for name, op, n, k in SHAPES[model]:
            for quant in (False, True):
                if quant and op == "logits":
                    continue
                for m in GEMV_ROWS + GEMM_ROWS:
                    if time.time() - t_start > budget_s:
                        return timings, best
                    if m > 2048 and model != "llama3-8b":
                        continue
                    kind = ("gemv_q4" if quant else "gemv_f16") if m <= 8 else "gemm_f16"
                    if quant and kind == "gemm_f16":
                        continue  # int4 GEMM = dequantize + the f16 GEMM, tuned with quant=False
                    copies = 3 if (2 * n if op == "gated" else n) * k * 2 < 150e6 else 1
                    cases = [make_case(op, quant, m, n, k, 1000 + i) for i in range(copies)]
                    idx = [0]

                    def run():
                        x, g, wq, _, res, out, scratch = cases[idx[0] % copies]
                        idx[0] += 1
                        run_op(kern, op, quant, x, g, wq, res, out, scratch)

                    configs = GEMM_CONFIGS if kind == "gemm_f16" else GEMV_CONFIGS[kind]
                    row = {"model": model, "layer": name, "op": op, "quant": quant, "m": m, "n": n, "k": k,
                           "kind": kind, "ms": {}}
                    for cfg in range(configs):
                        kern.force(kind, cfg)
                        row["ms"][cfg] = time_ms(run, 10 if m >= 2048 else 30)
                    kern.force(kind, -1)
                    row["auto_ms"] = time_ms(run, 10 if m >= 2048 else 30)
                    if not quant:
                        x0, _, wq0, _, _, _, _ = cases[0]
                        w0 = wq0[0][: 2 * n if op == "gated" else n]
                        row["cublas_ms"] = time_ms(lambda: torch.nn.functional.linear(x0, w0), 10 if m >= 2048 else 30)
                    wbytes = (2 * n if op == "gated" else n) * k * (0.5 + 4 / 32 if quant else 2)
                    cfg_best = min(row["ms"], key=row["ms"].get)
                    row["best_config"] = cfg_best
                    row["best_gb_s"] = wbytes / (row["ms"][cfg_best] * 1e-3) / 1e9
                    row["best_tflops"] = 2 * m * (2 * n if op == "gated" else n) * k / (row["ms"][cfg_best] * 1e-3) / 1e12
                    timings.append(row)
                    print(f"{model:13s} {name:8s} {'q4' if quant else 'f16'} m={m:5d} {kind:8s} best cfg {cfg_best} "
                          f"{row['ms'][cfg_best]:.4f} ms ({row['best_gb_s']:.0f} GB/s, {row['best_tflops']:.1f} TF)"
                          + (f" cuBLAS {row['cublas_ms']:.4f} ms" if "cublas_ms" in row else ""), flush=True)
                    db_op = {"logits": "norm", "gated": "gated"}.get(op, op) if kind != "gemm_f16" else \
                        ("res" if op == "res" else "plain")
                    db_n = n if kind != "gemm_f16" else (2 * n if op == "gated" else n)
                    best.append({"kind": kind, "op": db_op, "n": db_n, "k": k, "m_max": m, "config": int(cfg_best),
                                 "ms": row["ms"][cfg_best]})
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
    return 0 if not bad and report["sampler"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
