"""Sentences/s of a compiled embedding artifact at batch 1 and batch 64, through the engine.

Batch 1: texts embedded one after another (each ``embed_text`` awaited before the next), so every
model call holds one text. Batch 64: 64 concurrent ``embed_text`` calls, which the engine takes
as one batch (on CPU run as length-sorted model calls of <= 256 padded tokens). Both use the same
64 varied sentences (8 to 19 tokens), after one warm-up pass; each figure is the median of
``--repeats`` passes. The bare model call (``EmbeddingRunner.embed``: one padded call per batch,
in input order, no tokenization, queueing or grouping) is timed too.

    python bench/embed_throughput.py ARTIFACT [--repeats 5] [--out result.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from checks.machine import cpu_name  # noqa: E402

from ferrum.types import EngineConfig  # noqa: E402
from runtime.embedding_engine import EmbeddingEngine  # noqa: E402

SUBJECTS = ["The cat", "A young engineer", "The city council", "My neighbour's old dog", "The orchestra",
            "A small startup", "The river", "Our football team"]
ACTIONS = ["quietly watched the sunset over the hills", "announced a new plan for public transport",
           "finished the marathon despite the heavy rain", "sold its first product to a large customer",
           "played a symphony that nobody had heard before", "flooded the valley after three days of storms",
           "won the championship in the final minute of extra time", "slept all afternoon"]
SENTENCES = [f"{s} {a}." for s in SUBJECTS for a in ACTIONS]  # 64 sentences



def engine_rate(engine: EmbeddingEngine, batch: int, repeats: int) -> float:
    async def one_pass() -> float:
        start = time.perf_counter()
        if batch == 1:
            for text in SENTENCES:
                await engine.embed_text(text)
        else:
            for i in range(0, len(SENTENCES), batch):
                await asyncio.gather(*(engine.embed_text(t) for t in SENTENCES[i : i + batch]))
        return len(SENTENCES) / (time.perf_counter() - start)

    asyncio.run(one_pass())  # warm-up
    return statistics.median(asyncio.run(one_pass()) for _ in range(repeats))


def runner_rate(engine: EmbeddingEngine, batch: int, repeats: int) -> float:
    ids = [engine.tokenize(t) for t in SENTENCES]

    def one_pass() -> float:
        start = time.perf_counter()
        for i in range(0, len(ids), batch):
            engine.runner.embed(ids[i : i + batch])
        return len(ids) / (time.perf_counter() - start)

    one_pass()
    return statistics.median(one_pass() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()

    engine = EmbeddingEngine(EngineConfig(artifact_path=args.artifact, max_num_seqs=64, max_num_batched_tokens=64 * 256))
    lengths = [len(engine.tokenize(t)) for t in SENTENCES]
    result = {
        "command": " ".join(["python", *sys.argv]),
        "artifact": engine.artifact.manifest.name,
        "device": engine.runner.device_kind,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "sentences": len(SENTENCES),
        "tokens_per_sentence": {"min": min(lengths), "mean": statistics.mean(lengths), "max": max(lengths)},
        "repeats": args.repeats,
        "statistic": "median over repeats",
        "engine_sentences_per_s": {str(b): round(engine_rate(engine, b, args.repeats), 1) for b in (1, 64)},
        "runner_sentences_per_s": {str(b): round(runner_rate(engine, b, args.repeats), 1) for b in (1, 64)},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    asyncio.run(engine.shutdown())


if __name__ == "__main__":
    main()
