"""Plot GPU results of one device: decode tokens/s by batch, prefill time by prompt length, batch-1 decode
against the memory roofline, speed-ups over the peers, and served (or in-process engine) throughput and
latency by concurrency beside the bare decode rate.

    python bench/plot_gpu.py bench/results/h200_llama3_8b_bare.json bench/results/h200_smollm2_bare.json \
        bench/results/h200_ours_vs_llamacpp.json bench/results/h200_qwen3-8b-q0f16.json \
        bench/results/h200_qwen3-8b-q4f16.json bench/results/h200_qwen3-30b-a3b-q0f16.json \
        bench/results/h200_llamacpp_peer.json bench/results/h200_smollm2_offline.json \
        bench/results/h200_llama3_8b_serve_c*.json --out bench/results/h200_bench.png
    python bench/plot_gpu.py bench/results/h100_llama3_8b_shape.json bench/results/h100_smollm2_bench.json \
        --out bench/results/h100_bench.png

Each file is recognised by what wrote it: ``bench/gpu_bench.py`` (``results``), the llama.cpp peer of
``bench/device/llamacpp_cuda.sh`` (``rows``), ``bench/serve_bench.py`` (``config`` + ``summary``: one
concurrency a file) or ``bench/offline_bench.py`` (``runs``). An artifact measured in several files is one
series; where two files give the same batch or prompt length, the file named first wins, so name the call
you trust most first. Figures are plotted as the files hold them: nothing is averaged across calls.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Series:
    """One artifact's bare figures, gathered over the files that measured it."""

    artifact: str
    way: str  # "sampled" (decode + GPU sampling, ids to the host) or "forward" (no sampler in the artifact)
    decode_tok_s: dict[int, float] = field(default_factory=dict)
    prefill_ms: dict[int, float] = field(default_factory=dict)
    roofline_fraction: float | None = None  # batch-1 forward step: bytes read / copy bandwidth
    peer: dict | None = None  # gpu_bench's transformers peer


@dataclass
class Served:
    """Output tokens/s and latencies by concurrency of one artifact through the engine."""

    artifact: str
    how: str  # "served" (HTTP, bench/serve_bench.py) or "in-process" (bench/offline_bench.py)
    tok_s: dict[int, float] = field(default_factory=dict)
    ttft_p50_ms: dict[int, float] = field(default_factory=dict)
    tpot_p50_ms: dict[int, float] = field(default_factory=dict)


@dataclass
class Results:
    gpu: str = ""
    series: list[Series] = field(default_factory=list)
    served: list[Served] = field(default_factory=list)
    llamacpp: list[dict] = field(default_factory=list)  # rows of h200_llamacpp_peer.json

    def bare(self, artifact: str) -> Series | None:
        """The sampled series of an artifact (what the engine runs), else its forward one."""
        found = [s for s in self.series if s.artifact == artifact]
        return next((s for s in found if s.way == "sampled"), found[0] if found else None)


def _gpu_of(report: dict, path: Path, results: Results) -> None:
    gpu = report.get("device", {}).get("gpu", "") if isinstance(report.get("device"), dict) else ""
    if gpu and results.gpu and gpu != results.gpu:
        raise ValueError(f"{path} ran on {gpu}, earlier files on {results.gpu}: one plot is one device")
    results.gpu = results.gpu or gpu


def _add_bench(report: dict, results: Results) -> None:
    for entry in report["results"]:
        if "decode" not in entry:
            continue
        way = "sampled" if all("sampled_tok_s" in d for d in entry["decode"]) else "forward"
        series = next((s for s in results.series if s.artifact == entry["artifact"] and s.way == way), None)
        if series is None:
            series = Series(entry["artifact"], way)
            results.series.append(series)
        for d in entry["decode"]:
            series.decode_tok_s.setdefault(d["batch"], d[f"{way}_tok_s"])
        for p in entry["prefill"]:
            series.prefill_ms.setdefault(p["tokens"], p["prefill_ms"])
        if series.roofline_fraction is None and "roofline" in entry:
            series.roofline_fraction = entry["roofline"]["fraction_forward"]
        if series.peer is None and "speedup_vs_eager" in entry.get("peer", {}):
            series.peer = entry["peer"]


def _served(results: Results, artifact: str, how: str) -> Served:
    served = next((s for s in results.served if s.artifact == artifact and s.how == how), None)
    if served is None:
        served = Served(artifact, how)
        results.served.append(served)
    return served


def _add_point(served: Served, concurrency: int, tok_s: float, ttft_p50: float, tpot_p50: float) -> None:
    if concurrency not in served.tok_s:
        served.tok_s[concurrency] = tok_s
        served.ttft_p50_ms[concurrency] = ttft_p50
        served.tpot_p50_ms[concurrency] = tpot_p50


def load(paths: list[Path]) -> Results:
    """Read result files in the order given (earlier files win where two give the same point)."""
    results = Results()
    for path in paths:
        report = json.loads(path.read_text())
        _gpu_of(report, path, results)
        if "results" in report:
            _add_bench(report, results)
        elif "rows" in report and all("peer_tg128_tok_s" in r for r in report["rows"]):
            results.llamacpp += report["rows"]
        elif "config" in report and "summary" in report:
            s, config = report["summary"], report["config"]
            _add_point(_served(results, config["model"], "served"), config["concurrency"],
                       s["output_token_throughput_tps"], s["ttft_ms"]["p50"], s["tpot_ms"]["p50"])
        elif "runs" in report and "artifact" in report:
            served = _served(results, report["artifact"], "in-process")
            for run in report["runs"]:
                _add_point(served, run["concurrency"], run["output_tokens_per_s"], run["ttft_ms"]["p50"],
                           run["tpot_ms"]["p50"])
        else:
            raise ValueError(f"{path}: not a gpu_bench, llama.cpp peer, serve_bench or offline_bench result")
    return results


def short(artifact: str) -> str:
    return artifact.replace("-instruct", "").replace("-cuda", "").replace("-shape", "")


def peer_ratios(results: Results) -> dict[str, float]:
    """Speed-ups of ours over each peer (above 1: ours faster), labelled shape: measure."""
    ratios = {}
    for s in results.series:
        if s.peer:
            ratios[f"{short(s.artifact)}: vs transformers eager, b=1"] = s.peer["speedup_vs_eager"]
            if "speedup_vs_static_compiled" in s.peer:
                ratios[f"{short(s.artifact)}: vs static cache + torch.compile, b=1"] = s.peer[
                    "speedup_vs_static_compiled"]
    for r in results.llamacpp:
        name = short(r["ours"])
        ratios[f"{name}: vs llama.cpp {r['peer_model']} tg128"] = r["tg128_ours_over_peer"]
        ratios[f"{name}: vs llama.cpp pp512"] = r["pp512_peer_over_ours"]
        ratios[f"{name}: vs llama.cpp pp2048"] = r["pp2048_peer_over_ours"]
    return ratios


def draw(results: Results, out: Path) -> None:
    import matplotlib  # bench-only dependency: `pip install matplotlib`

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    ratios = peer_ratios(results)
    panels = ["decode", "prefill", "roofline"] + (["peer"] if ratios else []) + (
        ["served", "latency"] if results.served else [])
    cols = len(panels) if len(panels) <= 4 else 3
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7.5 * cols, 5.2 * rows), squeeze=False)
    ax = dict(zip(panels, axes.flat))
    for extra in list(axes.flat)[len(panels):]:
        extra.set_visible(False)

    for s in results.series:
        batches = sorted(s.decode_tok_s)
        ax["decode"].plot(batches, [s.decode_tok_s[b] for b in batches], marker="o",
                          label=f"{short(s.artifact)} ({s.way})")
        if s.prefill_ms:
            tokens = sorted(s.prefill_ms)
            ax["prefill"].plot(tokens, [s.prefill_ms[t] for t in tokens], marker="o", label=short(s.artifact))
    ax["decode"].set(xscale="log", yscale="log", xlabel="batch", ylabel="decode tokens/s",
                     title="Decode, 128-token context (bare step)")
    ax["prefill"].set(xscale="log", yscale="log", xlabel="prompt tokens", ylabel="prefill ms", title="Prefill")

    roofed = [s for s in results.series if s.roofline_fraction is not None]
    ax["roofline"].barh([short(s.artifact) for s in roofed], [100 * s.roofline_fraction for s in roofed])
    ax["roofline"].set(xlabel="% of the copy bandwidth: bytes a batch-1 step reads / its forward time",
                       title="Batch-1 decode against the memory roofline", xlim=(0, 100))

    if ratios:
        peer = ax["peer"]
        peer.barh(list(ratios), list(ratios.values()), color=["#c33" if v < 1 else "#393" for v in ratios.values()])
        peer.axvline(1.0, color="k", lw=0.8)
        peer.set(xscale="log", xlabel="speed-up of ours (> 1: ours faster), same shapes, same machine", title="Peers")
        peer.tick_params(axis="y", labelsize=7)

    for s in results.served:
        conc = sorted(s.tok_s)
        line, = ax["served"].plot(conc, [s.tok_s[c] for c in conc], marker="o", label=f"{short(s.artifact)} {s.how}")
        bare = results.bare(s.artifact)
        at = [c for c in conc if bare and c in bare.decode_tok_s]
        if at:
            ax["served"].plot(at, [bare.decode_tok_s[c] for c in at], ls="--", marker="x", color=line.get_color(),
                              label=f"{short(s.artifact)} bare step, batch = concurrency ({bare.way})")
        ax["latency"].plot(conc, [s.tpot_p50_ms[c] for c in conc], marker="o", color=line.get_color(),
                           label=f"{short(s.artifact)} {s.how} TPOT p50")
        ax["latency"].plot(conc, [s.ttft_p50_ms[c] for c in conc], marker="s", ls=":", color=line.get_color(),
                           label=f"{short(s.artifact)} {s.how} TTFT p50")
    if results.served:
        ax["served"].set(xscale="log", yscale="log", xlabel="concurrent requests", ylabel="output tokens/s",
                         title="Through the engine vs the bare step")
        ax["latency"].set(xscale="log", yscale="log", xlabel="concurrent requests", ylabel="ms",
                          title="Latency through the engine")

    for name in ("decode", "prefill", "served", "latency"):
        if name in ax:
            ax[name].grid(True, which="both", alpha=0.3)
            ax[name].xaxis.set_minor_formatter(NullFormatter())  # log axes: label the decades only
            ax[name].legend(fontsize=7)
    fig.suptitle(f"Ferrum on {results.gpu or 'a GPU'}")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    draw(load(args.results), args.out)
    print(args.out)


if __name__ == "__main__":
    main()
