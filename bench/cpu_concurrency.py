"""Output throughput at 1, 4 and 16 concurrent requests on the CPU: Ferrum's engine vs llama.cpp, in one run.

Each request is a fixed 32-token prompt (``Request <k>. `` before a fixed English text, tokenized by
the GGUF's own vocabulary: distinct per request and per run, so no prefix cache ever hits), then
exactly 128 greedy tokens (EOS ignored). C requests start together; output tok/s = all C x 128
output tokens / the wall time from submitting the first to receiving the last (prefill included).

- **Ours**: ``runtime.batch_engine.ContinuousBatchEngine`` in this process on the CPU artifact
  (default ``artifacts/smollm2-135m-instruct-q4f32-llvm``), the C requests through ``engine.infer``
  at once (``asyncio.gather``), TVM's pool at ``--threads`` (``TVM_NUM_THREADS``).
- **llama.cpp** (``llama-cpp-python``) on the very GGUF the artifact was compiled from, same thread
  count, through its *batched* low-level API, as a server with C slots would drive it: one context
  per C with ``n_seq_max = C`` and room for C x (prompt + tokens) tokens, the C prompts prefilled in
  one ``llama_decode`` (one sequence id each, logits of each prompt's last token), then one
  ``llama_decode`` per step carrying the C sequences' last tokens; greedy is ``argmax`` in numpy over
  ``llama_get_logits_ith``. If that API fails, the bench falls back to C sequential ``Llama``
  generations and says so (``llama_cpp.mode``).

Every repeat runs both sides at every C back to back (the order ours/llama.cpp alternates from one
repeat to the next), after one short warm-up per side and C, with ``--settle`` seconds of sleep
before each timed run (pool threads spin a while after their last task); each row gives the
medians and the per-repeat paired ratios ours/llama.cpp (``paired_ratios``; ``ratio_to_llama_cpp``
is their median), as ``bench/cpu_bench.py`` does. Sanity facts recorded: every request got exactly
``--tokens`` tokens; at C = 1 llama.cpp's batched greedy tokens for request 0 against a plain
``Llama`` greedy generation of the same prompt (``sanity``); and how many leading greedy tokens ours
and llama.cpp share per request.

llama.cpp is a bench peer only (install it as ``bench/cpu_bench.py`` says):

    PYTHONPATH=/tmp/llamacpp-pkg .venv/bin/python bench/cpu_concurrency.py --out bench/results/cpu_concurrency.json
    PYTHONPATH=/tmp/llamacpp-pkg .venv/bin/python bench/cpu_concurrency.py --tokens 16 --repeats 1   # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from checks.machine import cpu_name  # noqa: E402

import numpy as np  # noqa: E402

TEXT = ("The history of the printing press begins in the fifteenth century, when a goldsmith in Mainz "
        "combined movable metal type, oil-based ink and a wooden screw press into one working system.")


class Prompts:
    """Distinct ``n``-token prompts: ``Request <k>. `` + the fixed text, a fresh ``k`` for every request."""

    def __init__(self, gguf: Path, n: int):
        from tokenizers import Tokenizer

        from compile.sources import open_source

        self.tokenizer = Tokenizer.from_str(open_source(gguf).tokenizer_json)
        self.n, self.k = n, 0

    def take(self, count: int) -> list[list[int]]:
        prompts = []
        for _ in range(count):
            self.k += 1
            ids = self.tokenizer.encode(f"Request {self.k}. {TEXT} {TEXT}").ids[: self.n]
            assert len(ids) == self.n, f"the text is shorter than {self.n} tokens"
            prompts.append(ids)
        return prompts


class Ours:
    """Ferrum's continuous-batching engine on the CPU artifact."""

    def __init__(self, artifact: Path, max_seqs: int, max_len: int):
        from ferrum.types import EngineConfig
        from runtime.batch_engine import ContinuousBatchEngine

        self.engine = ContinuousBatchEngine(EngineConfig(artifact_path=str(artifact), max_num_seqs=max_seqs,
                                                         max_model_len=max_len))
        self.device = self.engine.runner.device_kind

    def generate(self, prompts: list[list[int]], tokens: int) -> tuple[float, list[list[int]]]:
        from ferrum.types import InferenceRequest, SamplingParams

        async def run() -> tuple[float, list]:
            requests = [InferenceRequest(prompt_token_ids=p, sampling_params=SamplingParams.greedy(
                max_tokens=tokens, ignore_eos=True)) for p in prompts]
            start = time.perf_counter()
            responses = await asyncio.gather(*(self.engine.infer(r) for r in requests))
            return time.perf_counter() - start, [list(r.tokens) for r in responses]

        return asyncio.run(run())

    def close(self) -> None:
        asyncio.run(self.engine.shutdown())


class BatchedLlamaCpp:
    """llama.cpp's low-level batched API: one context per concurrency, one ``llama_decode`` per step for all sequences."""

    mode = "batched"

    def __init__(self, gguf: Path, threads: int, concurrencies: list[int], per_seq: int, prompt_len: int,
                 flash_attn: str):
        import llama_cpp as lc
        from llama_cpp._logger import set_verbose

        set_verbose(False)
        self.lc = lc
        lc.llama_backend_init()
        self.model = lc.llama_model_load_from_file(str(gguf).encode(), lc.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama_model_load_from_file failed on {gguf}")
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        fa = {"auto": lc.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": lc.LLAMA_FLASH_ATTN_TYPE_ENABLED,
              "off": lc.LLAMA_FLASH_ATTN_TYPE_DISABLED}[flash_attn]
        self.contexts: dict[int, tuple] = {}
        self.settings: dict[int, dict] = {}
        for c in concurrencies:
            params = lc.llama_context_default_params()
            params.n_ctx = c * -(-per_seq // 256) * 256  # llama.cpp pads each sequence's share to 256 cells anyway
            params.n_batch = params.n_ubatch = max(c * prompt_len, 1)  # the C prompts in one decode call
            params.n_seq_max = c
            params.n_threads = params.n_threads_batch = threads
            params.flash_attn_type = fa
            params.no_perf = True
            ctx = lc.llama_init_from_model(self.model, params)
            if not ctx:
                raise RuntimeError(f"llama_init_from_model failed at n_seq_max={c}")
            if lc.llama_n_seq_max(ctx) < c:
                raise RuntimeError(f"the context holds {lc.llama_n_seq_max(ctx)} sequences, not {c}")
            capacity = max(c * prompt_len, c)
            batch = lc.llama_batch_init(capacity, 0, 1)
            views = {name: np.ctypeslib.as_array(getattr(batch, name), shape=(capacity,))
                     for name in ("token", "pos", "n_seq_id", "logits")}
            self.contexts[c] = (ctx, batch, views)
            self.settings[c] = {"n_ctx": lc.llama_n_ctx(ctx), "n_batch": params.n_batch, "n_seq_max": c,
                                "kv_unified": bool(params.kv_unified), "flash_attn_type": flash_attn}

    def _fill(self, c: int, rows: list[tuple[int, int, int, bool]]) -> None:
        _, batch, views = self.contexts[c]
        for i, (token, pos, seq, logits) in enumerate(rows):
            views["token"][i], views["pos"][i], views["n_seq_id"][i], views["logits"][i] = token, pos, 1, logits
            batch.seq_id[i][0] = seq
        batch.n_tokens = len(rows)

    def _decode(self, c: int) -> None:
        ctx, batch, _ = self.contexts[c]
        rc = self.lc.llama_decode(ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} at C={c}")

    def _argmax(self, c: int, index: int) -> int:
        logits = np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.contexts[c][0], index), shape=(self.n_vocab,))
        return int(np.argmax(logits))

    def generate(self, prompts: list[list[int]], tokens: int) -> tuple[float, list[list[int]]]:
        c = len(prompts)
        ctx = self.contexts[c][0]
        self.lc.llama_memory_clear(self.lc.llama_get_memory(ctx), True)
        start = time.perf_counter()
        rows, last = [], []
        for seq, prompt in enumerate(prompts):
            rows += [(t, pos, seq, pos == len(prompt) - 1) for pos, t in enumerate(prompt)]
            last.append(len(rows) - 1)
        self._fill(c, rows)
        self._decode(c)
        nxt = [self._argmax(c, i) for i in last]
        out: list[list[int]] = [[] for _ in prompts]
        for step in range(tokens):
            for seq in range(c):
                out[seq].append(nxt[seq])
            if step == tokens - 1:
                break
            self._fill(c, [(nxt[seq], len(prompts[seq]) + step, seq, True) for seq in range(c)])
            self._decode(c)
            nxt = [self._argmax(c, seq) for seq in range(c)]
        return time.perf_counter() - start, out

    def close(self) -> None:
        for ctx, batch, _ in self.contexts.values():
            self.lc.llama_batch_free(batch)
            self.lc.llama_free(ctx)
        self.lc.llama_model_free(self.model)


class SequentialLlamaCpp:
    """The fallback: C ``Llama`` greedy generations one after another (no batching)."""

    def __init__(self, gguf: Path, threads: int, per_seq: int, reason: str):
        from llama_cpp import Llama

        self.mode = f"sequential Llama generations (fallback: {reason})"
        self.llm = Llama(model_path=str(gguf), n_ctx=per_seq, n_batch=512, n_threads=threads,
                         n_threads_batch=threads, verbose=False)
        self.settings: dict = {"n_ctx": per_seq}

    def generate(self, prompts: list[list[int]], tokens: int) -> tuple[float, list[list[int]]]:
        start = time.perf_counter()
        out = [plain_greedy(self.llm, p, tokens) for p in prompts]
        return time.perf_counter() - start, out

    def close(self) -> None:
        self.llm.close()


def plain_greedy(llm, prompt: list[int], tokens: int) -> list[int]:
    llm.reset()
    ids = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        ids.append(int(token))
        if len(ids) == tokens:
            break
    return ids


def leading_equal(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, default=ROOT / "artifacts" / "smollm2-135m-instruct-q4f32-llvm")
    parser.add_argument("--gguf", type=Path, help="default: the packaged SmolLM2-135M-Instruct GGUF the artifact was "
                        "compiled from")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="llama.cpp's threads and TVM's (TVM_NUM_THREADS); default: every core")
    parser.add_argument("--flash-attn", choices=("auto", "on", "off"), default="auto",
                        help="llama.cpp's flash_attn_type (auto, its own default, enables it on the CPU; "
                        "off is Llama()'s default, which bench/cpu_bench.py's peer runs)")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds of sleep before each timed run: TVM's "
                        "and ggml's pool threads spin a while after their last task")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM's thread pool starts

    from compile.sources import packaged_model_path

    gguf = args.gguf or packaged_model_path("smollm2-135m-instruct")
    per_seq = args.prompt_tokens + args.tokens
    concurrencies = sorted(set(args.concurrency))
    report: dict = {"command": " ".join(sys.argv), "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    "host": platform.node(), "cpu": cpu_name(), "cores": os.cpu_count(),
                    "load_average_at_start": os.getloadavg(), "artifact": args.artifact.name, "gguf": gguf.name,
                    "threads": args.threads, "prompt_tokens": args.prompt_tokens, "generated_tokens": args.tokens,
                    "repeats": args.repeats, "settle_s": args.settle, "metric": "output tok/s = C x generated tokens / wall time of the C "
                    "requests (submit to last token, prefill included)"}
    prompts = Prompts(gguf, args.prompt_tokens)
    ours = Ours(args.artifact, max(concurrencies), per_seq + 16)
    report["ours"] = {"engine": "runtime.batch_engine.ContinuousBatchEngine", "device": ours.device}
    try:
        import llama_cpp
    except ImportError as exc:
        ours.close()
        print(f"llama-cpp-python is not importable ({exc}); see bench/cpu_bench.py for how to install it", file=sys.stderr)
        return 1
    try:
        peer = BatchedLlamaCpp(gguf, args.threads, concurrencies, per_seq, args.prompt_tokens, args.flash_attn)
        peer.generate(prompts.take(concurrencies[0]), 2)  # does one prefill + one step work at all?
    except Exception as exc:  # noqa: BLE001 - any failure of the low-level API means the fallback
        print(f"llama.cpp's batched API failed ({exc!r}); falling back to sequential Llama generations", flush=True)
        peer = SequentialLlamaCpp(gguf, args.threads, per_seq, repr(exc))
    report["llama_cpp"] = {"version": llama_cpp.__version__, "mode": peer.mode, "contexts": peer.settings}

    sides = {"ours": ours, "llama.cpp": peer}
    runs = {c: {name: {"tok_s": [], "wall_s": [], "tokens": []} for name in sides} for c in concurrencies}
    order_log = []
    try:
        for c in concurrencies:  # warm-up: each side once per C (TVM's and llama.cpp's shapes for this batch)
            for side in sides.values():
                side.generate(prompts.take(c), 8)
        for r in range(args.repeats):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]
            order_log.append(order)
            for c in concurrencies:
                batch = prompts.take(c)  # the same prompts for both sides; fresh ones every repeat
                for name in order:
                    time.sleep(args.settle)  # the other side's spinning worker threads go idle first
                    wall, out = sides[name].generate(batch, args.tokens)
                    assert all(len(o) == args.tokens for o in out), f"{name} at C={c}: {[len(o) for o in out]} tokens"
                    run = runs[c][name]
                    run["tok_s"].append(c * args.tokens / wall)
                    run["wall_s"].append(wall)
                    run["tokens"] = out
                    print(f"repeat {r} C={c:2d} {name:9s} {run['tok_s'][-1]:7.1f} tok/s ({wall:.2f} s)", flush=True)
        sanity = sanity_check(peer, gguf, args, prompts, runs, concurrencies)
    finally:
        ours.close()
        peer.close()

    rows = {}
    for c in concurrencies:
        a, b = runs[c]["ours"], runs[c]["llama.cpp"]
        paired = [x / y for x, y in zip(a["tok_s"], b["tok_s"], strict=True)]
        shared = [leading_equal(x, y) for x, y in zip(a["tokens"], b["tokens"], strict=True)]
        rows[str(c)] = {
            "concurrency": c,
            "ours_tok_s": statistics.median(a["tok_s"]), "ours_runs_tok_s": a["tok_s"], "ours_runs_wall_s": a["wall_s"],
            "llama_cpp_tok_s": statistics.median(b["tok_s"]), "llama_cpp_runs_tok_s": b["tok_s"],
            "llama_cpp_runs_wall_s": b["wall_s"],
            "paired_ratios": paired, "ratio_to_llama_cpp": statistics.median(paired),
            "leading_greedy_tokens_equal_per_request": shared,
            "tokens_request_0": {"ours": a["tokens"][0], "llama.cpp": b["tokens"][0]},
        }
    report["order_per_repeat"] = order_log
    report["rows"] = rows
    report["sanity"] = sanity
    report["load_average_at_end"] = os.getloadavg()
    print(f"{'C':>3} {'ours tok/s':>11} {'llama.cpp':>10} {'ratio':>6}")
    for row in rows.values():
        print(f"{row['concurrency']:3d} {row['ours_tok_s']:11.1f} {row['llama_cpp_tok_s']:10.1f} "
              f"{row['ratio_to_llama_cpp']:6.2f}")
    print("sanity:", sanity["note"])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0


def sanity_check(peer, gguf: Path, args, prompts: Prompts, runs: dict, concurrencies: list[int]) -> dict:
    """At C = 1: does llama.cpp's batched request 0 begin as a plain ``Llama`` greedy generation of its prompt?"""
    if 1 not in concurrencies or not isinstance(peer, BatchedLlamaCpp):
        return {"note": "skipped (needs C = 1 and the batched API)"}
    from llama_cpp import Llama

    prompt = prompts.take(1)[0]
    _, batched = peer.generate([prompt], args.tokens)
    flash = args.flash_attn != "off"  # llama.cpp resolves auto to flash attention on the CPU
    llm = Llama(model_path=str(gguf), n_ctx=args.prompt_tokens + args.tokens + 16, n_batch=512,
                n_threads=args.threads, n_threads_batch=args.threads, verbose=False, flash_attn=flash)
    try:
        plain = plain_greedy(llm, prompt, args.tokens)
    finally:
        llm.close()
    same = leading_equal(batched[0], plain)
    return {"prompt": prompt, "batched": batched[0], "plain_llama": plain, "leading_tokens_equal": same,
            "plain_llama_flash_attn": flash,
            "note": (f"C=1 batched llama.cpp and plain Llama agree on all {same} greedy tokens" if same == args.tokens
                     else f"C=1 batched llama.cpp and plain Llama agree on the first {same} of {args.tokens} greedy "
                     "tokens")}



if __name__ == "__main__":
    sys.exit(main())
