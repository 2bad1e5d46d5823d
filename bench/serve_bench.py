"""Online serving benchmark against any OpenAI-compatible server (like ``vllm bench serve``).

Sends ``--num-prompts`` streaming ``/v1/completions`` requests whose prompts are random token ids
of exactly ``--input-len`` tokens (no tokenizer needed on the client; ``ignore_eos`` makes every
output exactly ``--output-len`` tokens on servers that honour it), either with ``--concurrency``
requests in flight or arriving as a Poisson process at ``--request-rate`` per second (capped by
``--concurrency`` when both are given). Per request it times TTFT (first text), ITL (gaps between
streamed chunks), TPOT ((E2E - TTFT) / (output tokens - 1)) and E2E, and reports mean, p50, p90,
p99, plus request and token throughput, as JSON (and a PNG of the distributions if matplotlib is
installed).

    python bench/serve_bench.py --base-url http://127.0.0.1:8000 --model NAME \\
        --input-len 32 --output-len 32 --num-prompts 64 --concurrency 16 --out result.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp


@dataclass
class RequestResult:
    ok: bool
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    error: str = ""

    @property
    def tpot_s(self) -> float | None:
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1) if self.output_tokens > 1 else None


def percentiles(values: list[float], scale: float = 1000.0) -> dict[str, float]:
    """mean/p50/p90/p99 in milliseconds (linear interpolation between closest ranks)."""
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0}
    data = sorted(values)

    def pct(q: float) -> float:
        rank = (len(data) - 1) * q / 100
        lo = int(rank)
        hi = min(lo + 1, len(data) - 1)
        return data[lo] + (data[hi] - data[lo]) * (rank - lo)

    return {"mean": statistics.fmean(data) * scale, "p50": pct(50) * scale, "p90": pct(90) * scale,
            "p99": pct(99) * scale}


async def one_request(session: aiohttp.ClientSession, args: argparse.Namespace, prompt: list[int]) -> RequestResult:
    body = {"model": args.model, "prompt": prompt, "max_tokens": args.output_len, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    if args.ignore_eos:
        body["ignore_eos"] = True
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    start = time.perf_counter()
    result = RequestResult(ok=False)
    last = None
    try:
        async with session.post(args.base_url.rstrip("/") + "/v1/completions", json=body, headers=headers) as resp:
            if resp.status != 200:
                result.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return result
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                payload = line[6:].strip()
                if payload == b"[DONE]":
                    break
                event = json.loads(payload)
                if event.get("usage"):
                    result.prompt_tokens = event["usage"]["prompt_tokens"]
                    result.output_tokens = event["usage"]["completion_tokens"]
                if event.get("choices") and event["choices"][0].get("text"):
                    now = time.perf_counter()
                    if last is None:
                        result.ttft_s = now - start
                    else:
                        result.itl_s.append(now - last)
                    last = now
        result.e2e_s = time.perf_counter() - start
        result.ok = last is not None
        if not result.ok:
            result.error = "no text streamed"
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


async def run_benchmark(args: argparse.Namespace) -> tuple[list[RequestResult], float]:
    rng = random.Random(args.seed)
    prompts = [[rng.randrange(args.token_low, args.token_high) for _ in range(args.input_len)]
               for _ in range(args.num_prompts)]
    limit = asyncio.Semaphore(args.concurrency or len(prompts))
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        async def limited(prompt: list[int]) -> RequestResult:
            async with limit:
                return await one_request(session, args, prompt)

        start = time.perf_counter()
        tasks = []
        for prompt in prompts:
            tasks.append(asyncio.ensure_future(limited(prompt)))
            if args.request_rate:
                await asyncio.sleep(rng.expovariate(args.request_rate))
        results = await asyncio.gather(*tasks)
        return list(results), time.perf_counter() - start


def summarize(results: list[RequestResult], duration: float) -> dict:
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_tokens for r in ok)
    return {
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "errors": sorted({r.error for r in results if not r.ok})[:5],
        "duration_s": duration,
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "request_throughput_rps": len(ok) / duration,
        "output_token_throughput_tps": out_tokens / duration,
        "total_token_throughput_tps": (in_tokens + out_tokens) / duration,
        "ttft_ms": percentiles([r.ttft_s for r in ok]),
        "tpot_ms": percentiles([r.tpot_s for r in ok if r.tpot_s is not None]),
        "itl_ms": percentiles([gap for r in ok for gap in r.itl_s]),
        "e2e_ms": percentiles([r.e2e_s for r in ok]),
    }


def plot(results: list[RequestResult], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [r for r in results if r.ok]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, (title, values) in zip(axes, [("TTFT (ms)", [r.ttft_s * 1000 for r in ok]),
                                          ("ITL (ms)", [g * 1000 for r in ok for g in r.itl_s]),
                                          ("E2E (ms)", [r.e2e_s * 1000 for r in ok])]):
        ax.hist(values, bins=30)
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--model", required=True)
    p.add_argument("--api-key", default=None)
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=None, help="requests in flight (default: all at once)")
    p.add_argument("--request-rate", type=float, default=None, help="Poisson arrivals per second")
    p.add_argument("--token-low", type=int, default=1000, help="random prompt token ids are drawn from [low, high)")
    p.add_argument("--token-high", type=int, default=20000)
    p.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout in seconds")
    p.add_argument("--label", default="", help="free text stored in the JSON (e.g. the machine)")
    p.add_argument("--out", required=True, help="JSON file to write (PNG next to it if matplotlib is installed)")
    args = p.parse_args()
    if not args.concurrency and not args.request_rate:
        p.error("give --concurrency, --request-rate, or both")

    results, duration = asyncio.run(run_benchmark(args))
    summary = summarize(results, duration)
    out = Path(args.out)
    report = {
        "config": {k: v for k, v in vars(args).items() if k not in ("api_key", "out")},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
        "summary": summary,
        "requests": [asdict(r) | {"tpot_s": r.tpot_s} for r in results],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    plotted = plot(results, out.with_suffix(".png"))
    s = summary
    print(f"{s['completed']} ok / {s['failed']} failed in {s['duration_s']:.1f}s: {s['request_throughput_rps']:.2f} req/s, "
          f"{s['output_token_throughput_tps']:.1f} out tok/s; TTFT p50 {s['ttft_ms']['p50']:.0f} ms "
          f"p99 {s['ttft_ms']['p99']:.0f} ms; TPOT p50 {s['tpot_ms']['p50']:.1f} ms; ITL p50 "
          f"{s['itl_ms']['p50']:.1f} ms; E2E p50 {s['e2e_ms']['p50']:.0f} ms" + (" (plot written)" if plotted else ""))


if __name__ == "__main__":
    main()
