"""Correctness checks of Ferrum's CUDA kernels on the GPU, against PyTorch in the same process.

Shared by ``bench/kernel_bench.py`` (which reports them and then tunes) and
``tests/test_gpu_kernels.py``. ``Kernels`` loads the standalone kernel library
(``python -m compile.kernels.build_shared`` output, the same source as the kernels linked into CUDA
artifacts) with ``tvm_ffi`` and calls it on torch tensors. Needs torch and a CUDA device.

- linear layers: every entry point (f16 / int4 linear, residual, fused RMSNorm, fused SwiGLU,
  float32 logits) at row counts on both sides of the GEMV/GEMM switch and across tile edges, against
  float32 torch math on the same inputs (outputs pre-filled with NaN so an unwritten element fails);
  relative error ||out - ref|| / ||ref||;
- sampler: greedy = argmax; draws equal the host sampler's ``runtime.sampling.draw`` (float64) given
  the same uniform numbers on most rows; draw frequencies follow the distribution;
- masked sampler: every id is one the row's grammar bitmask allows; greedy = argmax of the masked
  logits; draws equal ``draw`` on the masked row (``runtime.grammar.apply_mask``) on most rows; an
  all-ones row gives what the unmasked sampler gives;
- ragged prefill attention, paged decode attention and the RoPE split against torch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import tvm_ffi

from compile.kernels.constants import CONFIGS, KINDS
from ferrum.manifest import SAMPLE_PARAMS, mask_words
from runtime.grammar import apply_mask  # the host's masking, which the masked sampler must equal
from runtime.sampling import draw  # the host sampler's contract, float64

GEMV_CONFIGS = {kind: CONFIGS[kind] for kind in ("gemv_f16", "gemv_q4")}
GEMM_CONFIGS = CONFIGS["gemm_f16"]
EPS = 1e-5


class Kernels:
    def __init__(self, path: str):
        self.mod = tvm_ffi.load_module(path)

    def __call__(self, name: str, *args):
        conv = [tvm_ffi.from_dlpack(a) if isinstance(a, torch.Tensor) else a for a in args]
        self.mod[name](*conv)

    def force(self, kind: str, config: int) -> None:
        self.mod["ferrum_force_config"](KINDS[kind], config)


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
        size += m * k
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
        rows = (1, 3, 6, 8) if kind != "gemm_f16" else (1, 3, 9, 33, 200)
        kern.force("path_f16", 8 if kind == "gemv_f16" else 0)  # f16 ops: GEMV up to 8 rows / always GEMM
        for cfg in range(configs):
            kern.force(kind, cfg)
            for quant, op in ops:
                if quant != (kind == "gemv_q4") and kind != "gemm_f16":
                    continue
                for n, k in [(1000, 640), (1536, 576)]:
                    for m in rows:
                        case(op, quant, m, n, k, (kind, cfg))
        kern.force(kind, -1)
    kern.force("path_f16", -1)
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
    columns = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "min_p": min_p, "uniform": uniform}
    rows = np.stack([columns[name] for name in SAMPLE_PARAMS], 1)
    params = torch.tensor(rows, dtype=torch.float32, device="cuda")
    out = torch.full((b,), -1, dtype=torch.int32, device="cuda")
    kern("ferrum_sample_tokens", logits, params, out)
    got = out.cpu().numpy()
    lg = logits.cpu().double().numpy()
    expect = np.array([draw(lg[i], tuple(rows[i])) for i in range(b)])
    greedy = temperature == 0
    same = got == expect
    # frequencies: one row, many uniforms
    row = torch.randn(1, 1000, generator=gen, device="cuda").repeat(4096, 1)
    u = np.random.default_rng(1).random(4096)
    columns = {"temperature": np.ones(4096), "top_p": np.ones(4096), "top_k": np.zeros(4096), "min_p": np.zeros(4096),
               "uniform": u}
    p = torch.tensor(np.stack([columns[name] for name in SAMPLE_PARAMS], 1), dtype=torch.float32, device="cuda")
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


def check_masked_sampler(kern: Kernels) -> dict:
    """``ferrum_sample_tokens_masked`` against numpy: a vocabulary that is not a multiple of 32 (the
    last word's spare bits set, so reading them would show), rows that allow everything, half the
    tokens, a handful, one, or only tokens below the row's median (so the unmasked argmax is
    always excluded)."""
    gen = torch.Generator(device="cuda").manual_seed(11)
    b, v = 80, 50_000
    words = mask_words(v)
    logits = torch.randn(b, v, generator=gen, device="cuda") * 3
    lg = logits.cpu().numpy()
    rng = np.random.default_rng(2)
    allowed = np.zeros((b, words * 32), bool)
    allowed[:, v:] = True  # spare bits past the vocabulary: must never be read
    kinds = np.arange(b) % 5
    for i in range(b):
        if kinds[i] == 0:
            allowed[i, :v] = True
        elif kinds[i] == 1:
            allowed[i, :v] = rng.random(v) < 0.5
        elif kinds[i] == 2:
            allowed[i, rng.choice(v, rng.integers(1, 12), replace=False)] = True
        elif kinds[i] == 3:
            allowed[i, rng.integers(v)] = True
        else:
            allowed[i, :v] = lg[i] < np.median(lg[i])
    masks = np.packbits(allowed, axis=1, bitorder="little").view(np.int32).reshape(b, words)
    temperature = rng.choice([0.0, 0.7, 1.0, 1.3], b)
    columns = {"temperature": temperature, "top_p": rng.choice([1.0, 0.9, 0.5], b),
               "top_k": rng.choice([0, 1, 40, 1000], b), "min_p": rng.choice([0.0, 0.05], b), "uniform": rng.random(b)}
    rows = np.stack([columns[name] for name in SAMPLE_PARAMS], 1)
    params = torch.tensor(rows, dtype=torch.float32, device="cuda")
    out = torch.full((b,), -1, dtype=torch.int32, device="cuda")
    kern("ferrum_sample_tokens_masked", logits, params, torch.tensor(masks, device="cuda"), out)
    plain = torch.full((b,), -1, dtype=torch.int32, device="cuda")
    kern("ferrum_sample_tokens", logits, params, plain)
    got, plain = out.cpu().numpy(), plain.cpu().numpy()
    masked = [apply_mask(lg[i], masks[i]).astype(np.float64) for i in range(b)]
    in_vocab = (got >= 0) & (got < v)
    all_allowed = bool(in_vocab.all()) and all(allowed[i, got[i]] for i in range(b))
    greedy = temperature == 0
    argmax_equal = all(got[i] == int(np.argmax(masked[i])) for i in np.flatnonzero(greedy))
    same = np.array([got[i] == draw(masked[i], tuple(rows[i])) for i in range(b)])
    ones = kinds == 0
    return {"rows": b, "vocab": v, "all_allowed": all_allowed, "greedy_rows": int(greedy.sum()),
            "greedy_equal_masked_argmax": argmax_equal,
            "sampled_equal_to_host": int(same[~greedy].sum()), "sampled_rows": int((~greedy).sum()),
            "all_ones_rows_equal_unmasked": bool((got[ones] == plain[ones]).all()),
            "ok": all_allowed and argmax_equal and same[~greedy].mean() >= 0.9 and bool((got[ones] == plain[ones]).all())}


def attention_case(kern: Kernels, q_lens: list[int], kv_extra: list[int], h_q: int, h_kv: int, d: int, seed: int):
    """Ragged causal attention through the kernel: output, LSE (log2) and the float32 torch
    reference per sequence (query row r of a sequence sees keys <= r + kv_len - q_len)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    kv_lens = [n + e for n, e in zip(q_lens, kv_extra)]
    q = torch.randn(sum(q_lens), h_q, d, generator=gen, device="cuda").half()
    k = torch.randn(sum(kv_lens), h_kv, d, generator=gen, device="cuda").half()
    v = torch.randn(sum(kv_lens), h_kv, d, generator=gen, device="cuda").half()
    qo = torch.tensor([0, *np.cumsum(q_lens)], dtype=torch.int32, device="cuda")
    kvp = torch.tensor([0, *np.cumsum(kv_lens)], dtype=torch.int32, device="cuda")
    out = torch.full_like(q, float("nan"))
    lse = torch.full((q.shape[0], h_q), float("nan"), device="cuda")
    pos = torch.zeros(q.shape[0], dtype=torch.int32, device="cuda")
    offs = torch.zeros(len(q_lens), dtype=torch.int32, device="cuda")
    scale = d ** -0.5

    def run():
        kern("ferrum_attention_prefill_ragged", q, qo, k, v, kvp, pos, offs, out, lse, 1, 0, 1.0, 1e4, scale)

    return run, q, k, v, q_lens, kv_lens, out, lse, scale


def attention_reference(q, k, v, q_lens, kv_lens, scale):
    outs, lses = [], []
    qi = ki = 0
    group = q.shape[1] // k.shape[1]
    for n, m in zip(q_lens, kv_lens):
        qs = q[qi:qi + n].float().transpose(0, 1)
        ks = k[ki:ki + m].float().repeat_interleave(group, 1).transpose(0, 1)
        vs = v[ki:ki + m].float().repeat_interleave(group, 1).transpose(0, 1)
        s = qs @ ks.transpose(1, 2) * scale
        mask = torch.arange(m, device="cuda")[None, :] <= torch.arange(n, device="cuda")[:, None] + (m - n)
        s = s.masked_fill(~mask, float("-inf"))
        outs.append((torch.softmax(s, -1) @ vs).transpose(0, 1))
        lses.append((torch.logsumexp(s, -1) / math.log(2)).transpose(0, 1))
        qi, ki = qi + n, ki + m
    return torch.cat(outs), torch.cat(lses)


def check_attention(kern: Kernels) -> list[dict]:
    results = []
    cases = [([1, 17, 64, 65, 200], [0, 0, 0, 0, 0], 9, 3, 64), ([300, 5, 1000], [0, 0, 0], 32, 8, 128),
             ([40, 130], [7, 100], 32, 8, 128), ([2048], [0], 32, 8, 128), ([129, 64], [0, 0], 12, 12, 64)]
    for i, (q_lens, extra, h_q, h_kv, d) in enumerate(cases):
        run, q, k, v, ql, kl, out, lse, scale = attention_case(kern, q_lens, extra, h_q, h_kv, d, 50 + i)
        run()
        torch.cuda.synchronize()
        ref_out, ref_lse = attention_reference(q, k, v, ql, kl, scale)
        e_out, e_lse = rel_err(out, ref_out), rel_err(lse, ref_lse)
        results.append({"q_lens": q_lens, "kv_extra": extra, "h_q": h_q, "h_kv": h_kv, "d": d,
                        "rel_err_out": e_out, "rel_err_lse": e_lse, "ok": e_out < 3e-3 and e_lse < 1e-3})
    return results


def paged_decode_case(kern: Kernels, ctx_lens: list[int], h_q: int, h_kv: int, d: int, page_size: int, seed: int):
    """One new token per sequence attending to its paged cache: the kernel call and the float32
    torch reference. Pages of all sequences are shuffled through one pool, like the cache's."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    n_pages = [(n + page_size - 1) // page_size for n in ctx_lens]
    pool = sum(n_pages) + 3
    pages = torch.randn(pool, 2, h_kv, page_size, d, generator=gen, device="cuda").half()
    order = torch.randperm(pool, generator=gen, device="cuda")[: sum(n_pages)].int()
    indptr = torch.tensor([0, *np.cumsum(n_pages)], dtype=torch.int32, device="cuda")
    last = torch.tensor([n - (p - 1) * page_size for n, p in zip(ctx_lens, n_pages)], dtype=torch.int32, device="cuda")
    q = torch.randn(len(ctx_lens), h_q, d, generator=gen, device="cuda").half()
    out = torch.full_like(q, float("nan"))
    lse = torch.full((len(ctx_lens), h_q), float("nan"), device="cuda")
    zeros = torch.zeros(len(ctx_lens), dtype=torch.int32, device="cuda")
    scale = d ** -0.5

    def run():
        kern("ferrum_attention_decode_paged", q, pages, indptr, order, last, zeros, zeros, out, lse, 0, 1.0, 1e4, scale)

    def reference():
        outs, lses = [], []
        for b, n in enumerate(ctx_lens):
            ids = order[indptr[b]: indptr[b + 1]].long()
            kv = pages[ids].float()  # [p, 2, h_kv, page, d]
            k = kv[:, 0].permute(1, 0, 2, 3).reshape(h_kv, -1, d)[:, :n].repeat_interleave(h_q // h_kv, 0)
            v = kv[:, 1].permute(1, 0, 2, 3).reshape(h_kv, -1, d)[:, :n].repeat_interleave(h_q // h_kv, 0)
            sc = torch.einsum("hd,hnd->hn", q[b].float(), k) * scale
            outs.append(torch.einsum("hn,hnd->hd", torch.softmax(sc, -1), v))
            lses.append(torch.logsumexp(sc, -1) / math.log(2))
        return torch.stack(outs), torch.stack(lses)

    return run, reference, out, lse


def check_decode_attention(kern: Kernels) -> list[dict]:
    results = []
    for i, (lens, h_q, h_kv, d, page) in enumerate([([1, 16, 17, 130, 700], 9, 3, 64, 16), ([128, 5, 2049], 32, 8, 128, 16),
                                                    ([33, 64], 32, 8, 128, 32)]):
        run, reference, out, lse = paged_decode_case(kern, lens, h_q, h_kv, d, page, 80 + i)
        run()
        torch.cuda.synchronize()
        ref_out, ref_lse = reference()
        e_out, e_lse = rel_err(out, ref_out), rel_err(lse, ref_lse)
        results.append({"ctx_lens": lens, "h_q": h_q, "h_kv": h_kv, "d": d, "page_size": page,
                        "rel_err_out": e_out, "rel_err_lse": e_lse, "ok": e_out < 3e-3 and e_lse < 1e-3})
    return results


def check_rope(kern: Kernels) -> dict:
    """Split + RoPE against torch with TVM's formula (freq = pos * scale / theta^(2i/d), rotate-half)."""
    gen = torch.Generator(device="cuda").manual_seed(3)
    n, h_q, h_kv, d, theta = 300, 9, 3, 64, 100000.0
    qkv = torch.randn(n, h_q + 2 * h_kv, d, generator=gen, device="cuda").half()
    pos = torch.randint(0, 8000, (n,), generator=gen, device="cuda", dtype=torch.int32)
    q, k, v = (torch.full((n, h, d), float("nan"), device="cuda").half() for h in (h_q, h_kv, h_kv))
    kern("ferrum_split_rotary_with", qkv, pos, q, k, v, 1, theta, 1.0)
    torch.cuda.synchronize()
    i = torch.arange(d // 2, device="cuda", dtype=torch.float64)
    freq = pos.double()[:, None] / theta ** (2 * i / d)
    cos, sin = freq.cos()[:, None], freq.sin()[:, None]
    x = qkv.double()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    rot = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
    errs = {"q": rel_err(q, rot[:, :h_q]), "k": rel_err(k, rot[:, h_q:h_q + h_kv]),
            "v": rel_err(v, x[:, h_q + h_kv:])}
    return {**errs, "ok": max(errs.values()) < 2e-3}
