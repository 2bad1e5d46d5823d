"""Cost of constrained decoding: output tok/s of C concurrent json_schema requests against C
unconstrained ones, in the same engine and run, and the grammar mask time per step.

Both sides decode the same chat prompts greedily for exactly ``--output-len`` tokens: the plain
requests ignore EOS, and the schema (an object holding an array of at least 64 short strings)
cannot close before that many tokens, so both batches keep the same shape to the end. The runs
alternate (plain, constrained, plain, constrained, ...) so drift on a shared machine hits both.
Mask time is what llguidance's executor spent filling the masks (on its own threads, while the
forward runs), per step that had constrained rows, and mask wait what of it the step waited for
after its forward was queued (near 0: the forward hides the mask; where the artifact's GPU sampler
takes a bitmask, constrained rows sample on the device and only ids come back, else their logits
come to the host, ``constrained_rows_sample_on`` says which); the slowdown ratio is the figure to watch,
over all rounds together (total tokens / total wall time per side) and as the median of the
rounds', since other work on the machine moves single rounds by tens of percent.

    python bench/structured_bench.py ARTIFACT --concurrency 16 --out bench/results/cpu_smollm2_structured.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ferrum.types import EngineConfig, InferenceRequest, SamplingParams  # noqa: E402
from runtime.batch_engine import ContinuousBatchEngine  # noqa: E402
from runtime.grammar import MaskComputer, choice_grammar, json_schema_grammar, regex_grammar  # noqa: E402

SCHEMA = {"type": "object", "properties": {"items": {"type": "array", "minItems": 64,
                                                     "items": {"type": "string", "maxLength": 12}}},
          "required": ["items"], "additionalProperties": False}
TOPICS = ["fruits", "animals", "cities", "colors", "tools", "planets", "rivers", "songs", "trees", "games",
          "cars", "flowers", "metals", "sports", "dances", "birds"]


async def run(engine: ContinuousBatchEngine, prompts: list[str], output_len: int, grammar: str | None) -> dict:
    async def one(prompt: str) -> int:
        params = SamplingParams.greedy(max_tokens=output_len, ignore_eos=grammar is None, grammar=grammar)
        response = await engine.infer(InferenceRequest(prompt=prompt, sampling_params=params))
        return len(response.tokens)

    masks = engine.grammars.masks
    seconds, steps, waited = masks.seconds, masks.steps, masks.waited
    start = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(p) for p in prompts)))
    wall = time.perf_counter() - start
    out = {"tokens": tokens, "wall_s": round(wall, 3), "output_tokens_per_s": round(tokens / wall, 2),
           "ms_per_step": round(wall / (tokens / len(prompts)) * 1000, 3)}  # one token per request a step
    if grammar is not None:
        n = max(masks.steps - steps, 1)
        out["mask_steps"] = masks.steps - steps
        out["mask_ms_per_step"] = round((masks.seconds - seconds) / n * 1000, 3)
        out["mask_wait_ms_per_step"] = round((masks.waited - waited) / n * 1000, 3)
    return out


@contextmanager
def host_masks(engine: ContinuousBatchEngine) -> Iterator[None]:
    """Constrained steps as an artifact without ``sample_tokens_masked`` runs them (logits to the
    host, the mask applied there): the peer of the device-masked side, in the same engine and run.
    Switched only while the engine is idle."""
    runner = engine.runner
    saved, runner._sample_masked = runner._sample_masked, None
    try:
        yield
    finally:
        runner._sample_masked = saved


async def checks(engine: ContinuousBatchEngine, prompts: list[str]) -> dict:
    """The outputs a grammar must force whatever the weights (random ones included): a choice, a
    regular expression, and plain greedy requests beside constrained ones equal to themselves alone."""
    def greedy(prompt: str, grammar: str | None, max_tokens: int = 24) -> InferenceRequest:
        return InferenceRequest(prompt=prompt, sampling_params=SamplingParams.greedy(max_tokens=max_tokens,
                                                                                     grammar=grammar))
    choices = ["apple", "banana split", "cherry"]
    alone = [(await engine.infer(greedy(p, None))).tokens for p in prompts[:4]]
    mixed = await asyncio.gather(*(engine.infer(greedy(p, None)) for p in prompts[:4]),
                                 *(engine.infer(greedy(p, choice_grammar(choices))) for p in prompts[:4]),
                                 *(engine.infer(greedy(p, regex_grammar(r"[0-9]{3}-[a-z]{2}"))) for p in prompts[:4]))
    plain, chosen, matched = mixed[:4], mixed[4:8], mixed[8:]
    report = {"plain_beside_constrained_equals_alone": all(r.tokens == a for r, a in zip(plain, alone, strict=True)),
              "choice_outputs_are_choices": all(r.text in choices for r in chosen),
              "regex_outputs_match": all(re.fullmatch(r"[0-9]{3}-[a-z]{2}", r.text) is not None for r in matched),
              "examples": [chosen[0].text, matched[0].text]}
    if engine.runner.samples_masked:  # greedy under the mask on the GPU = argmax of the masked logits on the host
        schema = json_schema_grammar(SCHEMA)
        device = [(await engine.infer(greedy(p, schema, 48))).tokens for p in prompts[:4]]
        with host_masks(engine):
            host = [(await engine.infer(greedy(p, schema, 48))).tokens for p in prompts[:4]]
        report["device_masked_equals_host_masked"] = device == host
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifact")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--load-format", choices=("auto", "dummy"), default="auto",
                        help="dummy: weights generated on the device (a shape-only artifact with a real tokenizer)")
    parser.add_argument("--mask-threads", type=int, default=None,
                        help="threads of llguidance's mask pool (default: its own, 80 %% of the cores)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    engine = ContinuousBatchEngine(EngineConfig(artifact_path=args.artifact, max_model_len=512,
                                                max_num_seqs=max(args.concurrency, 16), kv_cache_tokens=16384,
                                                load_format=args.load_format))
    if args.mask_threads is not None:  # before the first constrained request starts the default pool
        engine.grammars._masks = MaskComputer(engine.artifact.config.vocab_size, args.mask_threads)
    topics = (TOPICS * (args.concurrency // len(TOPICS) + 1))[: args.concurrency]
    prompts = [engine.tokenizer.apply_chat_template([{"role": "user", "content": f"List as many {t} as you can, "
                                                      "as JSON."}]) for t in topics]
    grammar = json_schema_grammar(SCHEMA)
    rounds, peer = [], False
    try:
        report_checks = asyncio.run(checks(engine, prompts))
        print("checks:", json.dumps(report_checks), flush=True)
        asyncio.run(run(engine, prompts[:4], 8, grammar))  # warm-up: the token trie, the executor, the kernels
        asyncio.run(run(engine, prompts[:4], 8, None))
        peer = engine.runner.samples_masked  # also time constrained steps sampled on the host
        for _ in range(args.rounds):
            plain = asyncio.run(run(engine, prompts, args.output_len, None))
            constrained = asyncio.run(run(engine, prompts, args.output_len, grammar))
            rounds.append({"plain": plain, "json_schema": constrained,
                           "slowdown": round(1 - constrained["output_tokens_per_s"] / plain["output_tokens_per_s"], 4)})
            print(f"plain {plain['output_tokens_per_s']:8.1f} tok/s ({plain['ms_per_step']:.2f} ms/step)  json_schema "
                  f"{constrained['output_tokens_per_s']:8.1f} tok/s ({constrained['ms_per_step']:.2f} ms/step)  "
                  f"slowdown {rounds[-1]['slowdown']:+.1%}  mask {constrained['mask_ms_per_step']:.3f} ms/step, "
                  f"waited {constrained['mask_wait_ms_per_step']:.3f}", flush=True)
            if peer:
                with host_masks(engine):
                    on_host = asyncio.run(run(engine, prompts, args.output_len, grammar))
                rounds[-1]["json_schema_host_masks"] = on_host
                rounds[-1]["host_masks_slowdown"] = round(1 - on_host["output_tokens_per_s"]
                                                          / plain["output_tokens_per_s"], 4)
                print(f"  json_schema with host masks {on_host['output_tokens_per_s']:8.1f} tok/s "
                      f"({on_host['ms_per_step']:.2f} ms/step)  slowdown {rounds[-1]['host_masks_slowdown']:+.1%}",
                      flush=True)
    finally:
        asyncio.run(engine.shutdown())
    rate = lambda side: sum(r[side]["tokens"] for r in rounds) / sum(r[side]["wall_s"] for r in rounds)  # noqa: E731
    summary = {"plain_tokens_per_s": round(rate("plain"), 2), "json_schema_tokens_per_s": round(rate("json_schema"), 2),
               "slowdown": round(1 - rate("json_schema") / rate("plain"), 4),
               "median_round_slowdown": float(np.median([r["slowdown"] for r in rounds])),
               "mask_ms_per_step": round(float(np.mean([r["json_schema"]["mask_ms_per_step"] for r in rounds])), 3),
               "mask_wait_ms_per_step": round(float(np.mean([r["json_schema"]["mask_wait_ms_per_step"]
                                                             for r in rounds])), 3),
               "constrained_rows_sample_on": "device" if peer else "host"}
    if peer:
        summary["json_schema_host_masks_tokens_per_s"] = round(rate("json_schema_host_masks"), 2)
        summary["host_masks_slowdown"] = round(1 - rate("json_schema_host_masks") / rate("plain"), 4)
    print(f"all rounds: plain {summary['plain_tokens_per_s']} tok/s, json_schema {summary['json_schema_tokens_per_s']} "
          f"tok/s, slowdown {summary['slowdown']:+.1%} (median round {summary['median_round_slowdown']:+.1%}), "
          f"mask {summary['mask_ms_per_step']} ms/step (waited {summary['mask_wait_ms_per_step']}), "
          f"constrained rows sampled on the {summary['constrained_rows_sample_on']}"
          + (f"; with host masks {summary['json_schema_host_masks_tokens_per_s']} tok/s, slowdown "
             f"{summary['host_masks_slowdown']:+.1%}" if peer else ""))
    report = {
        "command": " ".join(sys.argv),
        "artifact": Path(args.artifact).name,
        "device": {"kind": engine.runner.device_kind, "host": platform.node(), "cpu": platform.processor(),
                   "cores": os.cpu_count()},
        "concurrency": args.concurrency, "output_len": args.output_len, "mask_threads": args.mask_threads,
        "schema": SCHEMA,
        "summary": summary, "checks": report_checks, "rounds": rounds,
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
