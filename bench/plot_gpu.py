"""Plot ``bench/gpu_bench.py`` results: decode tokens/s by batch, prefill time by prompt length,
batch-1 decode against the memory roofline, and the speed-up over the transformers peer.

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
    fig, (dec, pre, roof, peer) = plt.subplots(1, 4, figsize=(22, 5))
    for e in entries:
        way = "sampled" if "sampled_tok_s" in e["decode"][0] else "forward"
        dec.plot([d["batch"] for d in e["decode"]], [d[f"{way}_tok_s"] for d in e["decode"]], marker="o",
                 label=f"{e['artifact']} ({way})")
        pre.plot([p["tokens"] for p in e["prefill"]], [p.get("prefill_ms", p["ttft_ms"]) for p in e["prefill"]],
                 marker="o", label=e["artifact"])
    dec.set(xscale="log", yscale="log", xlabel="batch", ylabel="decode tokens/s", title="Decode (128-token context)")
    pre.set(xscale="log", yscale="log", xlabel="prompt tokens", ylabel="prefill ms", title="Prefill")
    names = [e["artifact"].replace("-instruct", "").replace("-cuda", "") for e in entries]
    roof.barh(names, [100 * e["roofline"]["fraction_forward"] for e in entries])
    roof.set(xlabel="% of memory roofline, batch-1 decode (bytes read / copy bandwidth)", title="Roofline",
             xlim=(0, 100))
    with_peer = [e for e in entries if "peer" in e]
    labels, eager, best = [], [], []
    for e in with_peer:
        p = e["peer"]
        labels.append(e["artifact"].replace("-instruct", "").replace("-cuda", ""))
        eager.append(p["speedup_vs_eager"])
        best.append(p.get("speedup_vs_static_compiled", 0.0))
    ys = range(len(labels))
    peer.barh([y + 0.2 for y in ys], eager, height=0.4, label="vs transformers eager")
    peer.barh([y - 0.2 for y in ys], best, height=0.4, label="vs static cache + torch.compile")
    peer.set_yticks(list(ys), labels)
    peer.axvline(1.0, color="gray", lw=0.8)
    peer.set(xlabel="speed-up, batch-1 greedy decode (same weights)", title="Peer")
    for ax in (dec, pre, peer):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Ferrum on {device}")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
