"""Greedy correctness and batch-1 decode speed of compiled artifacts, on CPU or GPU.

For each artifact: greedy completions of fixed chat prompts through the engine, compared with the
independent numpy reference (``checks/reference_llama.py``, float64) on the same GGUF weights and,
with ``--baseline``, with another artifact's tokens (e.g. q4f16 against q0f16); then batch-1
decode tokens/s, the median of repeated runs, measured two ways: the full engine (sampling,
detokenization, streaming) and the bare model runner (decode + argmax).

    python bench/greedy_check.py ART [ART...] --gguf MODEL.gguf [--baseline ART] --out result.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from ferrum.types import EngineConfig, InferenceRequest, SamplingParams  # noqa: E402
from runtime.batch_engine import ContinuousBatchEngine  # noqa: E402

PROMPTS = [
    "What is the capital of France?",
    "Tell me a short story about a robot who learns to paint.",
    "Explain in two sentences why the sky is blue.",
]


def greedy_tokens(engine: ContinuousBatchEngine, text: str, n: int) -> tuple[list[int], list[int], str]:
    prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": text}])
    ids = engine.tokenizer.encode(prompt)
    response = asyncio.run(engine.infer(InferenceRequest(prompt=prompt, sampling_params=SamplingParams.greedy(max_tokens=n))))
    return ids, response.tokens, response.text


def engine_decode_rate(engine: ContinuousBatchEngine, tokens: int) -> float:
    """Tokens/s between the first and the last streamed token of one greedy request."""
    prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[1]}])
    params = SamplingParams.greedy(max_tokens=tokens, ignore_eos=True)

    async def run() -> float:
        stamps = []
        async for _ in await engine.infer_stream(InferenceRequest(prompt=prompt, sampling_params=params)):
            stamps.append(time.perf_counter())
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])

    return asyncio.run(run())

BENCH_SEQ = 1_000_000  # far from the engine's own sequence ids; used only while the engine is idle


def runner_decode_rate(engine: ContinuousBatchEngine, tokens: int) -> float:
    """Tokens/s of the bare decode loop: one batch_decode + argmax per token (on the GPU when the
    artifact samples there, else on the host)."""
    runner = engine.runner
    greedy = np.array([[0.0, 1.0, 0.0, 0.0, 0.0]], np.float32)
    runner.add_sequence(BENCH_SEQ)
    try:
        logits = runner.prefill([BENCH_SEQ], [[1, 4093, 198, 19556, 17]])
        token = int(logits[0].argmax())
        start = time.perf_counter()
        for _ in range(tokens):
            if runner.samples_on_device:
                token = int(runner.decode_sample([BENCH_SEQ], [token], greedy)[0])
            else:
                token = int(runner.decode([BENCH_SEQ], [token])[0].argmax())
        return tokens / (time.perf_counter() - start)
    finally:
        runner.remove_sequence(BENCH_SEQ)


def sampled_device_vs_host(engine: ContinuousBatchEngine, tokens: int) -> dict:
    """Seeded top-k/top-p/min-p sampling through the engine, drawn on the GPU and on the host
    (asking for logprobs keeps sampling on the host): the same random stream, so the tokens agree
    except where float32 and float64 land on different sides of a draw."""
    prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[1]}])
    agree, total = 0, 0
    for seed in range(4):
        runs = []
        for logprobs in (False, True):
            params = SamplingParams(max_tokens=tokens, temperature=0.8, top_p=0.9, top_k=50, min_p=0.02, seed=seed,
                                    logprobs=logprobs, ignore_eos=True)
            runs.append(asyncio.run(engine.infer(InferenceRequest(prompt=prompt, sampling_params=params))).tokens)
        first_diff = next((i for i, (a, b) in enumerate(zip(*runs)) if a != b), len(runs[0]))
        agree += first_diff
        total += len(runs[0])
    return {"seeds": 4, "tokens_per_seed": tokens, "tokens_before_first_difference": agree, "tokens": total}


def device_info(engine: ContinuousBatchEngine) -> dict:
    dev = engine.runner.device
    info = {"device_kind": engine.runner.device_kind, "host": platform.node(), "cpu": platform.processor()}
    if engine.runner.device_kind == "cuda":
        info.update(gpu=dev.device_name, compute=dev.compute_version, driver=dev.driver_version)
    return info


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("artifacts", nargs="+")
    parser.add_argument("--gguf", help="model source for the numpy reference")
    parser.add_argument("--baseline", help="artifact whose greedy tokens the others are compared with")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    reference = None
    if args.gguf:
        from checks import reference_llama

        cfg, weights = reference_llama.load_gguf(args.gguf)
        cache: dict[tuple[int, ...], list[int]] = {}

        def reference(ids: list[int], eos: set[int]) -> list[int]:
            if tuple(ids) not in cache:
                cache[tuple(ids)] = reference_llama.greedy(cfg, weights, ids, args.tokens, eos)
            return cache[tuple(ids)]

    baseline_tokens = None
    results = []
    for path in ([args.baseline] if args.baseline else []) + args.artifacts:
        engine = ContinuousBatchEngine(EngineConfig(artifact_path=path, max_model_len=2048))
        entry = {"artifact": Path(path).name, **device_info(engine), "prompts": []}
        for i, text in enumerate(PROMPTS):
            ids, tokens, completion = greedy_tokens(engine, text, args.tokens)
            item = {"prompt": text, "tokens": tokens, "text": completion}
            if reference:
                expected = reference(ids, set(engine.tokenizer.eos_token_ids))
                match = next((k for k, (a, b) in enumerate(zip(tokens, expected)) if a != b), min(len(tokens), len(expected)))
                item.update(reference_tokens=expected, equal_to_reference=tokens == expected, first_divergence=match)
            if baseline_tokens is not None:
                base = baseline_tokens[i]
                item["same_first_16_as_baseline"] = tokens[:16] == base[:16]
            entry["prompts"].append(item)
        if path == args.baseline:
            baseline_tokens = [p["tokens"] for p in entry["prompts"]]
        if engine.runner.samples_on_device:
            entry["sampled_device_vs_host"] = sampled_device_vs_host(engine, 64)
        engine_decode_rate(engine, 16)  # warm-up
        entry["engine_decode_tok_s"] = statistics.median(engine_decode_rate(engine, args.decode_tokens) for _ in range(args.repeats))
        entry["runner_decode_tok_s"] = statistics.median(runner_decode_rate(engine, args.decode_tokens) for _ in range(args.repeats))
        asyncio.run(engine.shutdown())
        results.append(entry)

    report = {"command": " ".join(sys.argv), "results": results}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    for r in results:
        eq = [p.get("equal_to_reference") for p in r["prompts"]]
        same = [p.get("same_first_16_as_baseline") for p in r["prompts"]]
        print(f"{r['artifact']:45s} {r.get('gpu', r['device_kind'])}: ref-equal {eq} baseline16 {same} "
              f"engine {r['engine_decode_tok_s']:.1f} tok/s, runner {r['runner_decode_tok_s']:.1f} tok/s")
        print("   ", repr(r["prompts"][0]["text"][:100]))
    ok = all(p.get("equal_to_reference", True) and p.get("same_first_16_as_baseline", True)
             for r in results for p in r["prompts"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
