"""GPU speed of compiled artifacts against the memory roofline and a PyTorch peer, in one run.

For every artifact given (real weights, or a shape-only artifact from ``bench/compile_shape.py``
whose weights are generated here from a seed; speed does not depend on the values):

- decode tokens/s at batch 1, 8, 32, 64, 128 after a 128-token prompt per sequence: the median
  step time over ``--decode-steps`` steps, measured three ways: ``forward`` (the compiled
  ``batch_decode`` only, synchronized), ``sampled`` (decode + greedy sampling on the GPU, token
  ids to the host: what the engine does for requests without penalties/logprobs) and
  ``with_host_logits`` (the float32 logits copied to the host, the engine's fallback);
- prefill time of one 128/512/2048/8192-token prompt (median of repeats) and TTFT at batch 1
  (prefill + the first token sampled, on the GPU when the artifact can);
- the roofline: a device-to-device copy measures the bandwidth B; batch-1 decode must read every
  weight it uses (all but the embedding table, of which it reads one row, and of an expert
  model's experts only the ``num_experts_per_tok`` a token is routed to) and the KV of the
  context once per token, so its ideal step is ``(bytes read) / B``; reported as
  ``fraction_*`` = ideal / measured;
- the peer (q0f16 artifacts, ``--peer``): Hugging Face ``LlamaForCausalLM`` (``Qwen2ForCausalLM``
  for Qwen2, its q/k/v biases included; ``Qwen3ForCausalLM`` for Qwen3, its q/k norms included;
  other architectures have no peer here and say so) in float16
  holding the SAME weights (views of ours, Q/K/V and gate/up split back), greedy ``generate`` eager and
  with a static cache + ``torch.compile``; per-token decode time from the difference of two
  generation lengths; plus the largest |logit difference| against our model on one prompt.

Device memory in use (total − free, sampled after each phase) is recorded per artifact. Writes
one JSON file.

    python bench/gpu_bench.py ART [ART ...] --peer --out $OUT/h100_bench.json
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tvm  # noqa: E402

from checks.timing import timed  # noqa: E402
from runtime.artifact import LlmArtifact  # noqa: E402
from runtime.model_runner import KVCacheConfig, ModelRunner  # noqa: E402

BATCHES = (1, 8, 32, 64, 128)
PREFILLS = (128, 512, 2048, 8192)
PROMPT = 128


def torch_mod():
    import torch

    return torch


def device_memory_used() -> int:
    free, total = torch_mod().cuda.mem_get_info()
    return int(total - free)


def copy_bandwidth(nbytes: int = 1 << 30, iters: int = 20) -> float:
    """Bytes/s of a device-to-device copy (each byte read once and written once)."""
    torch = torch_mod()
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000
    del src, dst
    return 2 * nbytes * iters / seconds


def generated_params(manifest, seed: int, device: str = "cuda") -> tuple[list, dict]:
    """Weights for a shape-only artifact, made on the GPU: normal(0, 0.02) matrices, unit norms
    (every ``*norm.weight``: layer norms, the final norm, Qwen3's q/k norms), random int4 nibbles
    with scales/minimums that keep values in about ±0.05; each in the dtype the manifest lists."""
    torch = torch_mod()
    gen = torch.Generator(device=device).manual_seed(seed)
    shapes = manifest.extra.param_shapes
    params, torch_tensors = [], {}
    for name in manifest.extra.param_names:
        shape, dtype = shapes[name]
        if dtype == "uint32":
            t = torch.randint(-(2**31), 2**31 - 1, shape, dtype=torch.int32, device=device, generator=gen)
            params.append(tvm.runtime.from_dlpack(t)._create_view(shape, "uint32"))
        else:
            kind = getattr(torch, dtype)
            if name.endswith("norm.weight"):
                t = torch.ones(shape, dtype=kind, device=device)
            elif name.endswith("q_scale"):
                t = torch.full(shape, 0.1 / 15, dtype=kind, device=device)
            elif name.endswith("q_min"):
                t = torch.full(shape, -0.05, dtype=kind, device=device)
            else:
                t = torch.randn(shape, dtype=kind, device=device, generator=gen) * 0.02
            params.append(tvm.runtime.from_dlpack(t))
        torch_tensors[name] = t
    return params, torch_tensors


def weight_bytes(manifest) -> int:
    return sum(int(np.prod(s)) * np.dtype(d).itemsize for s, d in manifest.extra.param_shapes.values())


def expert_bytes(manifest) -> int:
    """Bytes of the stacked experts (Qwen3-MoE's ``experts_gate_up`` / ``experts_down``)."""
    shapes = manifest.extra.param_shapes or {}
    return sum(int(np.prod(s)) * np.dtype(d).itemsize for n, (s, d) in shapes.items() if ".experts_" in n)


def decode_read_bytes(weights: int, cfg, dtype_bytes: int, experts: int = 0) -> int:
    """Weight bytes one batch-1 decode step reads: an untied embedding table contributes one row,
    the ``experts`` bytes of an expert model only the share of the experts a token is routed to."""
    if cfg.num_experts and experts:
        weights -= experts - experts * cfg.num_experts_per_tok // cfg.num_experts
    if cfg.tie_word_embeddings:
        return weights
    return weights - (cfg.vocab_size - 1) * cfg.hidden_size * dtype_bytes


def profile_kernels(fn, steps: int) -> dict:
    """GPU kernels of ``steps`` calls of ``fn`` through torch's profiler (CUPTI sees every kernel
    in the process, TVM's and Ferrum's, inside CUDA graphs too): time per step by kernel, and the
    share of the wall time the GPU was busy."""
    torch = torch_mod()
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / steps
    kernels = []
    for e in prof.key_averages():
        busy = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if busy > 0:
            kernels.append({"kernel": e.key[:160], "calls_per_step": e.count / steps, "us_per_step": busy / steps})
    kernels.sort(key=lambda k: -k["us_per_step"])
    busy = sum(k["us_per_step"] for k in kernels)
    return {"wall_us_per_step": wall * 1e6, "gpu_busy_us_per_step": busy, "kernels": kernels[:40]}


class Bench:
    def __init__(self, runner: ModelRunner, seed: int):
        self.runner = runner
        self.rng = np.random.default_rng(seed)
        self.vocab = runner.config.vocab_size

    def tokens(self, n: int) -> list[int]:
        return [int(t) for t in self.rng.integers(10, self.vocab - 10, n)]

    def decode(self, batch: int, steps: int) -> dict:
        r = self.runner
        r.create_kv_cache(KVCacheConfig(batch, batch * (PROMPT + steps + 48) + 64, max(PROMPT * 4, 2048), 16))
        ids = list(range(batch))
        for s in ids:
            r.add_sequence(s)
        for i in range(0, batch, 8):  # prompts in chunks of at most 8 sequences
            r.prefill(ids[i:i + 8], [self.tokens(PROMPT) for _ in ids[i:i + 8]])
        tokens = self.tokens(batch)
        dev = r.device
        shape_tuple = tvm.runtime.ShapeTuple

        def forward_only():
            embeds = r._embed_tokens(np.asarray(tokens, np.int32))._create_view((batch, 1, r.config.hidden_size))
            r._begin(r.cache, shape_tuple(ids), shape_tuple([1] * batch))
            _, r.cache = r._decode(embeds, r.cache, r.params)
            r._end(r.cache)
            dev.sync()

        def with_logits():
            r.decode(ids, tokens)

        greedy = np.zeros((batch, 5), np.float32)
        greedy[:, 1] = 1.0

        def sampled():
            r.decode_sample(ids, tokens, greedy)

        third = max(steps // 3, 4)
        result = {"batch": batch, "context": PROMPT}
        ways = {"forward": forward_only, "with_host_logits": with_logits}
        if r.samples_on_device:
            ways["sampled"] = sampled
        for name, fn in ways.items():
            t = statistics.median([timed(fn, 1) for _ in range(third)])
            result[f"{name}_ms"] = t * 1000
            result[f"{name}_tok_s"] = batch / t
        for s in ids:
            r.remove_sequence(s)
        return result

    def prefill(self, length: int, repeats: int) -> dict:
        r = self.runner
        r.create_kv_cache(KVCacheConfig(1, length + 64, length, 16))
        prompt = self.tokens(length)
        greedy = np.array([[0.0, 1.0, 0.0, 0.0, 0.0]], np.float32)

        def forward():
            r.add_sequence(0)
            r._prefill_logits([0], [prompt])
            r.device.sync()
            r.remove_sequence(0)

        def first_token():
            r.add_sequence(0)
            if r.samples_on_device:
                int(r.prefill_sample([0], [prompt], greedy)[0])
            else:
                int(r.prefill([0], [prompt])[0].argmax())
            r.remove_sequence(0)

        p, t = timed(forward, repeats), timed(first_token, repeats)
        return {"tokens": length, "prefill_ms": p * 1000, "ttft_ms": t * 1000, "prefill_tok_s": length / p}

    def profiles(self) -> dict:
        """Per-kernel GPU time of a batch-1 decode step (sampled on the GPU) and of a 2048-token prefill."""
        r = self.runner
        r.create_kv_cache(KVCacheConfig(1, PROMPT + 2048 + 256, 2048, 16))
        r.add_sequence(0)
        r.prefill([0], [self.tokens(PROMPT)])
        greedy = np.array([[0.0, 1.0, 0.0, 0.0, 0.0]], np.float32)
        token = [self.tokens(1)[0]]
        step = (lambda: r.decode_sample([0], token, greedy)) if r.samples_on_device else (lambda: r.decode([0], token))
        result = {"decode_b1": profile_kernels(step, 20)}
        r.remove_sequence(0)
        prompt = self.tokens(2048)

        def prefill():
            r.add_sequence(1)
            r._prefill_logits([1], [prompt])
            r.device.sync()
            r.remove_sequence(1)

        result["prefill_2048"] = profile_kernels(prefill, 2)
        return result


PEER_ARCHITECTURES = ("llama", "qwen2", "qwen3")  # the networks hf_model builds in transformers


def peer_blocker(cfg) -> str | None:
    """Why ``--peer`` has no transformers model for this config, or None."""
    if cfg.architecture not in PEER_ARCHITECTURES:
        return f"no transformers peer for {cfg.architecture} here (only {', '.join(PEER_ARCHITECTURES)})"
    if cfg.qkv_bias != (cfg.architecture == "qwen2") or cfg.o_bias or cfg.mlp_bias or cfg.sliding_window:
        return "no transformers peer for these biases or a sliding window here (only Qwen2's q/k/v biases)"
    return None


def hf_model(cfg, ours: dict, quant_name: str, device: str = "cuda"):
    """transformers LlamaForCausalLM (Qwen2ForCausalLM for Qwen2: q/k/v biases; Qwen3ForCausalLM
    for Qwen3: q/k norms) in float16 whose weights are views of ours."""
    torch = torch_mod()
    if cfg.architecture == "qwen3":
        from transformers import Qwen3Config as HFConfig
        from transformers import Qwen3ForCausalLM as HFModel
    elif cfg.architecture == "qwen2":
        from transformers import Qwen2Config as HFConfig
        from transformers import Qwen2ForCausalLM as HFModel
    else:
        from transformers import LlamaConfig as HFConfig
        from transformers import LlamaForCausalLM as HFModel

    hf_cfg = HFConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                      num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                      num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps,
                      rope_theta=cfg.rope_theta, max_position_embeddings=cfg.context_length,
                      tie_word_embeddings=cfg.tie_word_embeddings, rope_scaling=cfg.rope_scaling or None,
                      torch_dtype=torch.float16)
    with torch.device("meta"):
        model = HFModel(hf_cfg)
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    state = {"model.embed_tokens.weight": ours["embed_tokens.weight"], "model.norm.weight": ours["norm.weight"]}
    state["lm_head.weight"] = ours["embed_tokens.weight"] if cfg.tie_word_embeddings else ours["lm_head.weight"]
    for i in range(cfg.num_hidden_layers):
        p, h = f"layers.{i}", f"model.layers.{i}"
        qkv = ours[f"{p}.self_attn.qkv_proj.weight"]
        gate_up = ours[f"{p}.mlp.gate_up_proj.weight"]
        state.update({
            f"{h}.self_attn.q_proj.weight": qkv[:q], f"{h}.self_attn.k_proj.weight": qkv[q:q + kv],
            f"{h}.self_attn.v_proj.weight": qkv[q + kv:], f"{h}.self_attn.o_proj.weight": ours[f"{p}.self_attn.o_proj.weight"],
            f"{h}.mlp.gate_proj.weight": gate_up[:cfg.intermediate_size],
            f"{h}.mlp.up_proj.weight": gate_up[cfg.intermediate_size:],
            f"{h}.mlp.down_proj.weight": ours[f"{p}.mlp.down_proj.weight"],
            f"{h}.input_layernorm.weight": ours[f"{p}.input_layernorm.weight"],
            f"{h}.post_attention_layernorm.weight": ours[f"{p}.post_attention_layernorm.weight"],
        })
        if cfg.qkv_bias:
            bias = ours[f"{p}.self_attn.qkv_proj.bias"]
            state.update({f"{h}.self_attn.q_proj.bias": bias[:q], f"{h}.self_attn.k_proj.bias": bias[q:q + kv],
                          f"{h}.self_attn.v_proj.bias": bias[q + kv:]})
        if cfg.qk_norm:
            for norm in ("q_norm", "k_norm"):
                state[f"{h}.self_attn.{norm}.weight"] = ours[f"{p}.self_attn.{norm}.weight"]
    model.load_state_dict(state, assign=True, strict=True)
    with torch.device(device):  # its inv_freq buffer, made on the device (no ``device=`` argument in newer transformers)
        model.model.rotary_emb = type(model.model.rotary_emb)(config=hf_cfg)
    return model.eval()


def peer(cfg, ours: dict, runner: ModelRunner, prompt: list[int], short: int, long: int,
         compile_timeout_s: float | None) -> dict:
    """transformers with our weights: logits on one prompt, then per-token greedy decode time
    eager (``generate``) and in its fastest setup, a static KV cache with the decode step under
    ``torch.compile(mode="reduce-overhead")`` (CUDA graphs), argmax inside the graph; that one is
    skipped when ``compile_timeout_s`` is None (its warm-up takes ~50 s on an 8B model)."""
    torch = torch_mod()
    model = hf_model(cfg, ours, "q0f16")
    ids = torch.tensor([prompt], device="cuda")
    result: dict = {"library": {"torch": torch.__version__, "transformers": __import__("transformers").__version__}}
    with torch.no_grad():
        hf_logits = model(ids).logits[0, -1].float().cpu().numpy()
    runner.create_kv_cache(KVCacheConfig(1, len(prompt) + 64, len(prompt), 16))
    runner.add_sequence(0)
    our_logits = runner.prefill([0], [prompt])[0]
    runner.remove_sequence(0)
    result["max_abs_logit_diff"] = float(np.abs(hf_logits - our_logits).max())
    result["logit_scale"] = float(np.abs(our_logits).max())
    result["same_argmax"] = bool(hf_logits.argmax() == our_logits.argmax())

    def per_token(generate) -> float:
        t_short = timed(lambda: generate(short), 2)
        t_long = timed(lambda: generate(long), 2)
        return (t_long - t_short) / (long - short)

    def eager(n: int) -> None:
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        torch.cuda.synchronize()

    result["eager_ms_per_token"] = per_token(eager) * 1000
    if compile_timeout_s is None:
        result["static_compiled_skipped"] = "--no-peer-compile"
    else:
        try:
            result.update(static_compiled(model, ids, short, long, per_token, compile_timeout_s))
        except Exception as exc:  # the peer's best mode is reported as unavailable, not guessed
            result["static_compiled_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    model = None  # drop the weights (the closures above share this variable, so no ``del``)
    gc.collect()
    torch.cuda.empty_cache()
    return result


def static_compiled(model, ids, short: int, long: int, per_token, timeout_s: float) -> dict:
    """gpt-fast's recipe on transformers: StaticCache, eager prefill, compiled one-token step."""
    torch = torch_mod()
    from transformers import StaticCache

    n_prompt = ids.shape[1]
    cache = StaticCache(config=model.config, max_cache_len=n_prompt + long + 8)

    def decode_one(token, position):
        logits = model(input_ids=token, cache_position=position, past_key_values=cache, use_cache=True).logits
        return logits[:, -1].argmax(-1, keepdim=True)

    step = torch.compile(decode_one, mode="reduce-overhead", fullgraph=True)
    positions = [torch.tensor([n_prompt + i], device="cuda") for i in range(long)]
    outputs: list[int] = []

    def generate(n: int, record: bool = False) -> None:
        cache.reset()
        with torch.no_grad():
            logits = model(input_ids=ids, cache_position=torch.arange(n_prompt, device="cuda"),
                           past_key_values=cache, use_cache=True).logits
            token = logits[:, -1].argmax(-1, keepdim=True)
            for i in range(n - 1):
                torch.compiler.cudagraph_mark_step_begin()
                token = step(token, positions[i]).clone()
                if record:
                    outputs.append(int(token))
        torch.cuda.synchronize()

    start = time.perf_counter()
    generate(short)
    generate(short)
    warmup = time.perf_counter() - start
    if warmup > timeout_s:
        raise TimeoutError(f"torch.compile warm-up took {warmup:.0f} s")
    generate(short, record=True)
    eager_tokens = model.generate(ids, max_new_tokens=short, min_new_tokens=short, do_sample=False)[0, n_prompt + 1:]
    return {"compile_warmup_s": warmup, "static_compiled_ms_per_token": per_token(generate) * 1000,
            "static_compiled_same_tokens_as_eager": outputs == [int(t) for t in eager_tokens]}


def ours_per_token(runner: ModelRunner, prompt: list[int], short: int, long: int) -> float:
    """Greedy batch-1 generation through the runner, like the peer's: the argmax on the GPU when
    the artifact samples there, else on the host."""
    runner.create_kv_cache(KVCacheConfig(1, len(prompt) + long + 64, len(prompt), 16))
    greedy = np.array([[0.0, 1.0, 0.0, 0.0, 0.0]], np.float32)

    def first(tokens: list[int]) -> int:
        if runner.samples_on_device:
            return int(runner.prefill_sample([0], [tokens], greedy)[0])
        return int(runner.prefill([0], [tokens])[0].argmax())

    def step(token: int) -> int:
        if runner.samples_on_device:
            return int(runner.decode_sample([0], [token], greedy)[0])
        return int(runner.decode([0], [token])[0].argmax())

    def generate(n: int) -> None:
        runner.add_sequence(0)
        token = first(prompt)
        for _ in range(n - 1):
            token = step(token)
        runner.remove_sequence(0)

    t_short = timed(lambda: generate(short), 2)
    t_long = timed(lambda: generate(long), 2)
    return (t_long - t_short) / (long - short)


def run_artifact(path: str, args, bandwidth: float, save=lambda entry: None) -> dict:
    torch = torch_mod()
    artifact = LlmArtifact.open(path)
    manifest = artifact.manifest
    memory = {"before_load": device_memory_used()}
    ours_torch: dict = {}
    if manifest.extra.param_shapes is not None:
        params, ours_torch = generated_params(manifest, args.seed)
        runner = ModelRunner(artifact, params=params)
        weights = weight_bytes(manifest)
    else:
        runner = ModelRunner(artifact)
        weights = sum(info["bytes"] for rel, info in manifest.files.items() if rel.startswith("weights/"))
        if args.peer and manifest.quantization["name"] == "q0f16":
            ours_torch = {n: torch.from_dlpack(p) for n, p in zip(manifest.extra.param_names, runner.params)}
    memory["after_load"] = device_memory_used()
    cfg = runner.config
    bench = Bench(runner, args.seed)
    entry = {"artifact": manifest.name, "model": cfg.to_dict(), "quantization": manifest.quantization["name"],
             "weight_bytes": weights, "weights": manifest.extra.weights or "from the artifact"}
    entry["decode"] = []
    for b in args.batches:
        entry["decode"].append(bench.decode(b, args.decode_steps))
        memory[f"decode_b{b}"] = device_memory_used()
        save(entry)  # each figure stays written if a later phase runs past a caller's timeout
        d = entry["decode"][-1]
        print(f"  {manifest.name} decode b={b}: {d['forward_tok_s']:.0f} tok/s forward, "
              f"{d.get('sampled_tok_s', float('nan')):.0f} sampled on GPU, "
              f"{d['with_host_logits_tok_s']:.0f} with host logits", flush=True)
    if args.profile:
        entry["profile"] = bench.profiles()
        top = entry["profile"]["decode_b1"]
        print(f"  {manifest.name} profile decode b=1: wall {top['wall_us_per_step']:.0f} us/step, GPU busy "
              f"{top['gpu_busy_us_per_step']:.0f} us; top: "
              + "; ".join(f"{k['kernel'][:50]} {k['us_per_step']:.0f}" for k in top["kernels"][:6]), flush=True)
    entry["prefill"] = []
    for n in args.prefills:
        if n > cfg.context_length:
            continue
        entry["prefill"].append(bench.prefill(n, args.repeats))
        memory[f"prefill_{n}"] = device_memory_used()
        save(entry)
        print(f"  {manifest.name} prefill {n}: {entry['prefill'][-1]['prefill_ms']:.1f} ms "
              f"(TTFT {entry['prefill'][-1]['ttft_ms']:.1f} ms)", flush=True)
    kv_read = PROMPT * cfg.kv_bytes_per_token(2)
    read = decode_read_bytes(weights, cfg, 2, expert_bytes(manifest)) + kv_read
    ideal = read / bandwidth
    b1 = entry["decode"][0]
    entry["roofline"] = {"bytes_per_token": read, "ideal_ms": ideal * 1000,
                         **{f"fraction_{way}": ideal / (b1[f"{way}_ms"] / 1000)
                            for way in ("forward", "sampled", "with_host_logits") if f"{way}_ms" in b1}}
    if args.peer and peer_blocker(cfg):
        entry["peer"] = {"skipped": peer_blocker(cfg)}
        print(f"  {manifest.name} peer skipped: {entry['peer']['skipped']}", flush=True)
    elif args.peer and ours_torch and manifest.quantization["name"] == "q0f16":
        save(entry)  # our figures stay written if the peer (torch.compile) runs past a caller's timeout
        prompt = bench.tokens(32)
        entry["peer"] = peer(cfg, ours_torch, runner, prompt, args.peer_short, args.peer_long,
                             None if args.no_peer_compile else args.compile_timeout)
        entry["peer"]["ours_ms_per_token"] = ours_per_token(runner, prompt, args.peer_short, args.peer_long) * 1000
        p = entry["peer"]
        p["speedup_vs_eager"] = p["eager_ms_per_token"] / p["ours_ms_per_token"]
        if "static_compiled_ms_per_token" in p:
            p["speedup_vs_static_compiled"] = p["static_compiled_ms_per_token"] / p["ours_ms_per_token"]
        print(f"  {manifest.name} peer: {json.dumps(p)}", flush=True)
        memory["after_peer"] = device_memory_used()
    entry["device_memory_used_bytes"] = memory
    entry["device_memory_peak_bytes"] = max(memory.values())
    del runner, bench, ours_torch
    gc.collect()
    torch.cuda.empty_cache()
    return entry


def device_info() -> dict:
    torch = torch_mod()
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                          "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    return {"gpu": torch.cuda.get_device_name(), "nvidia_smi": smi, "tvm": tvm.__version__,
            "torch": torch.__version__, "host": platform.node(), "python": platform.python_version()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifacts", nargs="+")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--prefills", type=int, nargs="+", default=list(PREFILLS))
    parser.add_argument("--decode-steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peer", action="store_true")
    parser.add_argument("--profile", action="store_true", help="per-kernel GPU time of decode and prefill")
    parser.add_argument("--peer-short", type=int, default=16)
    parser.add_argument("--peer-long", type=int, default=80)
    parser.add_argument("--compile-timeout", type=float, default=240)
    parser.add_argument("--no-peer-compile", action="store_true",
                        help="the peer's logits and eager speed only (no torch.compile warm-up)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    report = {"command": " ".join(sys.argv), "device": device_info(), "prompt_tokens_before_decode": PROMPT}
    report["copy_bandwidth_gb_s"] = copy_bandwidth() / 1e9
    print(f"copy bandwidth {report['copy_bandwidth_gb_s']:.0f} GB/s", flush=True)
    report["results"] = []

    def save(entry: dict) -> None:
        args.out.write_text(json.dumps({**report, "results": [*report["results"], {**entry, "partial": True}]}, indent=2))

    for path in args.artifacts:
        try:
            report["results"].append(run_artifact(path, args, report["copy_bandwidth_gb_s"] * 1e9, save))
        except Exception as exc:  # keep the other artifacts' figures
            import traceback

            traceback.print_exc()
            report["results"].append({"artifact": Path(path).name, "error": f"{type(exc).__name__}: {exc}"})
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
