"""Cold start: how long ``make run`` takes to its first answer once install and compile are done,
beside llama.cpp loading the same GGUF and answering the same question, in one run.

Ferrum: exactly the two commands ``make run`` runs (``ferrum compile --skip-existing``, then
``ferrum chat`` on the artifact it prints), with the question on stdin; the chat ends at EOF
after its answer, so the pair's wall time is the time to the first answer (plus exit).
llama.cpp: a fresh ``python -c`` that imports llama-cpp-python, loads the GGUF (same threads) and
answers one chat completion, greedy. Runs alternate (ours, peer, ours, ...); medians are quoted.
The file-hash cache is warm for Ferrum, as after any earlier start (``ferrum/hash_cache.py``);
the page cache is warm for both.

    PYTHONPATH=/tmp/llamacpp-pkg .venv/bin/python bench/cold_start.py --out bench/results/cpu_cold_start.json

(llama-cpp-python as in bench/cpu_bench.py; without it the peer row is skipped with a note.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What is the capital of France?"


def _timed(cmd: list[str] | str, stdin: str = "", shell: bool = False) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(cmd, input=stdin, capture_output=True, text=True, cwd=ROOT, shell=shell, check=True)
    return time.perf_counter() - start, result.stdout


def ferrum_make_run(python: str, quant_args: str) -> tuple[float, str]:
    """``make run``'s two commands, as its recipe runs them."""
    script = (f'artifact=$({python} -m ferrum compile --skip-existing {quant_args}) && '
              f'{python} -m ferrum chat "$artifact"')
    return _timed(script, stdin=QUESTION + "\n", shell=True)


def llama_cpp_answer(python: str, gguf: Path, threads: int) -> tuple[float, str]:
    code = (
        "from llama_cpp import Llama\n"
        f"llm = Llama(model_path={str(gguf)!r}, n_threads={threads}, n_ctx=2048, verbose=False)\n"
        f"out = llm.create_chat_completion([{{'role': 'user', 'content': {QUESTION!r}}}], temperature=0.0, max_tokens=64)\n"
        "print(out['choices'][0]['message']['content'])\n"
    )
    return _timed([python, "-c", code])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quant-args", default="", help="extra compile options, e.g. '--quant q4f32'")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    python = sys.executable
    sys.path.insert(0, str(ROOT))
    from compile.sources import packaged_model_path

    gguf = packaged_model_path("smollm2-135m-instruct")
    try:
        import llama_cpp  # noqa: F401
        peer = True
    except ImportError:
        peer = False

    ferrum_make_run(python, args.quant_args)  # warm-up: page cache, hash cache, compile index
    if peer:
        llama_cpp_answer(python, gguf, args.threads)
    ours, theirs, answers = [], [], {}
    for _ in range(args.repeats):
        seconds, out = ferrum_make_run(python, args.quant_args)
        ours.append(seconds)
        answers["ferrum"] = out.strip()
        if peer:
            seconds, out = llama_cpp_answer(python, gguf, args.threads)
            theirs.append(seconds)
            answers["llama.cpp"] = out.strip()
    result = {
        "what": "wall seconds from starting make run's two commands (warm caches) to the first answer and exit",
        "command": " ".join(["bench/cold_start.py", *sys.argv[1:]]),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "date": time.strftime("%Y-%m-%d"),
        "ferrum_seconds": {"median": statistics.median(ours), "all": [round(s, 3) for s in ours]},
        "answers": answers,
    }
    if peer:
        result["llama_cpp_seconds"] = {"median": statistics.median(theirs), "all": [round(s, 3) for s in theirs]}
        result["ferrum_over_llama_cpp"] = statistics.median(o / t for o, t in zip(ours, theirs, strict=True))
    else:
        result["note"] = "llama-cpp-python not importable: no peer row"
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
