"""Plot ``bench/gpu_bench.py`` results: decode tokens/s by batch, prefill time by prompt length,
and batch-1 decode against the memory roofline, one panel each.

    python bench/plot_gpu.py bench/results/h100_llama3_8b_shape.json bench/results/h100_smollm2_bench.json \
        --out bench/results/h100_bench.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    entries, device = [], ""
    for path in args.results:
        report = json.loads(path.read_text())
        device = report["device"]["gpu"]
        entries += [e for e in report["results"] if "decode" in e]
    fig, (dec, pre, roof) = plt.subplots(1, 3, figsize=(17, 5))
    for e in entries:
        batches = [d["batch"] for d in e["decode"]]
        dec.plot(batches, [d["forward_tok_s"] for d in e["decode"]], marker="o", label=e["artifact"])
        pre.plot([p["tokens"] for p in e["prefill"]], [p["ttft_ms"] for p in e["prefill"]], marker="o", label=e["artifact"])
    dec.set(xscale="log", yscale="log", xlabel="batch", ylabel="decode tokens/s (forward)", title="Decode")
    pre.set(xscale="log", yscale="log", xlabel="prompt tokens", ylabel="prefill / TTFT ms", title="Prefill")
    names = [e["artifact"].replace("-instruct", "").replace("-cuda", "") for e in entries]
    roof.barh(names, [100 * e["roofline"]["fraction_forward"] for e in entries])
    roof.set(xlabel="% of memory roofline, batch-1 decode", title="Roofline", xlim=(0, 100))
    for ax in (dec, pre):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Ferrum on {device}")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
