"""Plot the CPU comparison: decode and prefill (``bench/cpu_bench.py``), concurrent throughput
(``bench/cpu_concurrency.py``) and the speech/embedding peers (``bench/cpu_peers.py``), each as
Ferrum beside the runtime a user would pick instead, from one machine's result files.

    PYTHONPATH=/tmp/mpl .venv/bin/python bench/plot_cpu.py --out bench/results/cpu_speed.png   # pip install --target /tmp/mpl matplotlib
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    bench = json.loads((args.results / "cpu_bench.json").read_text())
    conc = json.loads((args.results / "cpu_concurrency.json").read_text())
    peers = json.loads((args.results / "cpu_peers.json").read_text())
    rows = bench["decode"]["rows"]
    names = [n for n in rows if n != "llama.cpp"]
    labels = [n.split("-")[-2] for n in names] + ["llama.cpp"]

    fig, (dec, pre, cc, pr) = plt.subplots(1, 4, figsize=(22, 5))
    dec.bar(labels, [rows[n]["decode_tok_s"] for n in [*names, "llama.cpp"]], color=["#999", "#c33", "#36c"])
    dec.set_title("SmolLM2-135M batch-1 decode (tok/s, higher is better)")
    pre.bar(labels, [rows[n]["prefill_s"] for n in [*names, "llama.cpp"]], color=["#999", "#c33", "#36c"])
    pre.set_title("512-token prefill (s, lower is better)")
    levels = sorted(conc["rows"], key=int)
    x = range(len(levels))
    cc.bar([i - 0.2 for i in x], [conc["rows"][c]["ours_tok_s"] for c in levels], 0.4, label="Ferrum q4f32", color="#c33")
    cc.bar([i + 0.2 for i in x], [conc["rows"][c]["llama_cpp_tok_s"] for c in levels], 0.4, label="llama.cpp (batched)",
           color="#36c")
    cc.set_xticks(list(x), [f"{c} concurrent" for c in levels])
    cc.set_title("output tok/s, 128 tokens per request")
    cc.legend()
    ratios = {"Whisper end to end": peers["whisper"]["transcribe_speed_ratio"],
              "Whisper encoder": peers["whisper"]["encode_s_per_window"]["speed_ratio"],
              "Whisper decoder": peers["whisper"]["decode_ms_per_token"]["speed_ratio"],
              "MiniLM b=1": peers["minilm"]["sentences_per_s"]["1"]["speed_ratio"],
              "MiniLM b=64": peers["minilm"]["sentences_per_s"]["64"]["speed_ratio"]}
    pr.barh(list(ratios), list(ratios.values()), color="#c33")
    pr.axvline(1.0, color="k", lw=1)
    pr.set_title("vs CTranslate2 / onnxruntime (>1: faster)")
    fig.suptitle(f"{bench['cpu']}, {bench['cores']} cores, {bench['decode']['threads']} threads "
                 f"({bench['command'].split()[0]}, {conc['command'].split()[0]}, {peers['command'].split()[0]})")
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(args.out)


if __name__ == "__main__":
    main()
