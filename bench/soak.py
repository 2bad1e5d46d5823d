"""Soak test: ``ferrum serve`` under a long reliability load (``checks/soak.py``), report as JSON.

Starts the server on ARTIFACT with a KV cache small enough to force preemption (or targets a
running one with ``--url``), then runs N concurrent streaming clients through the official
``openai`` client with a share hanging up mid-stream, bad requests interleaved and ``/metrics`` +
``/v1/status`` scraped throughout; prints requests done, cancelled, failed, 4xx by kind, 5xx (must
be 0), p50/p99 latency, and whether the server recovered (nothing left running, a prompt of ~90 %
of the cache still runs, ``/health`` 200). Exit status 1 when any of that fails.

    python bench/soak.py artifacts/smollm2-135m-instruct-q0f32-llvm --streams 256 \\
        --out bench/results/cpu_smollm2_soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from checks.serve_process import ServeProcess  # noqa: E402
from checks.soak import SoakConfig, soak  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", nargs="?", help="artifact to serve (omit with --url)")
    p.add_argument("--url", help="an already running server instead of starting one")
    p.add_argument("--model", help="model name (default: the artifact folder's name)")
    p.add_argument("--streams", type=int, default=256)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--hangup-share", type=float, default=0.25)
    p.add_argument("--kv-cache-tokens", type=int, default=2048, help="small enough that 256 streams preempt")
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if not args.url and not args.artifact:
        p.error("give an artifact to serve or --url")
    model = args.model or Path(args.artifact).name
    server = None if args.url else ServeProcess(
        [args.artifact], "--kv-cache-tokens", str(args.kv_cache_tokens), "--max-model-len", str(args.kv_cache_tokens),
        "--max-num-seqs", str(args.max_num_seqs), timeout=300)
    url = args.url or server.url
    try:
        config = SoakConfig(streams=args.streams, max_tokens=args.max_tokens, hangup_share=args.hangup_share,
                            kv_cache_tokens=args.kv_cache_tokens)
        report = asyncio.run(soak(url, model, config=config))
    finally:
        if server is not None:
            server.terminate()
    result = {"report": report.to_dict(), "command": " ".join(sys.argv),
              "machine": {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
                          "cores": os.cpu_count()},
              "server": {"kv_cache_tokens": args.kv_cache_tokens, "max_num_seqs": args.max_num_seqs}}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
