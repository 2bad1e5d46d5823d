"""``bench/plot_gpu.py`` gathers one device's result files of four kinds into series: an artifact measured
in several calls is one series whose points come from the file named first, a file from another GPU or
of an unknown kind is refused, and served throughput is paired with the bare rate at batch = concurrency."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import plot_gpu


def bench_report(gpu: str, artifact: str, decode: dict[int, float], prefill: dict[int, float], *,
                 sampled: bool = True, peer: dict | None = None) -> dict:
    way = "sampled_tok_s" if sampled else "forward_tok_s"
    entry = {"artifact": artifact,
             "decode": [{"batch": b, "forward_tok_s": v * 1.1, way: v} for b, v in decode.items()],
             "prefill": [{"tokens": t, "prefill_ms": ms, "ttft_ms": ms + 1} for t, ms in prefill.items()],
             "roofline": {"fraction_forward": 0.5}}
    if peer:
        entry["peer"] = peer
    return {"device": {"gpu": gpu}, "results": [entry]}


def write(tmp_path: Path, name: str, report: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(report))
    return path


def test_an_artifact_of_several_calls_is_one_series_and_the_first_file_wins(tmp_path):
    first = write(tmp_path, "a.json", bench_report("H200", "m-cuda", {1: 200.0, 64: 6500.0}, {512: 26.0}))
    second = write(tmp_path, "b.json", bench_report("H200", "m-cuda", {1: 190.0, 128: 8700.0}, {512: 27.0, 2048: 104.0},
                                                    peer={"speedup_vs_eager": 9.0, "speedup_vs_static_compiled": 0.9}))
    forward_only = write(tmp_path, "c.json", bench_report("H200", "m-cuda", {8: 400.0}, {}, sampled=False))
    results = plot_gpu.load([first, second, forward_only])
    assert results.gpu == "H200"
    sampled, forward = results.series
    assert (sampled.way, forward.way) == ("sampled", "forward")  # a sampler-less call is not mixed into the line
    assert sampled.decode_tok_s == {1: 200.0, 64: 6500.0, 128: 8700.0}
    assert sampled.prefill_ms == {512: 26.0, 2048: 104.0}
    assert forward.decode_tok_s == {8: 400.0}
    assert plot_gpu.peer_ratios(results) == {"m: vs transformers eager, b=1": 9.0,
                                             "m: vs static cache + torch.compile, b=1": 0.9}


def test_files_of_another_gpu_or_of_an_unknown_kind_are_refused(tmp_path):
    h200 = write(tmp_path, "a.json", bench_report("H200", "m-cuda", {1: 200.0}, {}))
    h100 = write(tmp_path, "b.json", bench_report("H100", "m-cuda", {1: 150.0}, {}))
    with pytest.raises(ValueError, match="one plot is one device"):
        plot_gpu.load([h200, h100])
    with pytest.raises(ValueError, match="not a gpu_bench"):
        plot_gpu.load([write(tmp_path, "c.json", {"something": 1})])


def test_served_and_in_process_runs_pair_with_the_bare_step_and_llamacpp_rows_become_ratios(tmp_path):
    bare = write(tmp_path, "bare.json", bench_report("H200", "m-cuda", {1: 200.0, 16: 2400.0}, {}))
    served = [write(tmp_path, f"serve_c{c}.json", {
        "config": {"model": "m-cuda", "concurrency": c},
        "summary": {"output_token_throughput_tps": tps, "ttft_ms": {"p50": 28.0 * c}, "tpot_ms": {"p50": 6.0 * c}}})
        for c, tps in ((1, 165.0), (16, 1346.0))]
    offline = write(tmp_path, "offline.json", {"artifact": "s-cuda", "runs": [
        {"concurrency": 64, "output_tokens_per_s": 18869.0, "ttft_ms": {"p50": 13.7}, "tpot_ms": {"p50": 3.3}}]})
    peer = write(tmp_path, "peer.json", {"device": {"gpu": "H200"}, "rows": [
        {"ours": "m-cuda", "peer_model": "m-f16", "peer_tg128_tok_s": 210.0, "tg128_ours_over_peer": 0.92,
         "pp512_peer_over_ours": 0.91, "pp2048_peer_over_ours": 0.82}]})
    results = plot_gpu.load([bare, *served, offline, peer])
    http, engine = results.served
    assert (http.how, http.tok_s, http.ttft_p50_ms) == ("served", {1: 165.0, 16: 1346.0}, {1: 28.0, 16: 448.0})
    assert (engine.how, engine.tok_s, engine.tpot_p50_ms) == ("in-process", {64: 18869.0}, {64: 3.3})
    assert results.bare("m-cuda").decode_tok_s == {1: 200.0, 16: 2400.0}
    assert results.bare("s-cuda") is None
    assert plot_gpu.peer_ratios(results) == {"m: vs llama.cpp m-f16 tg128": 0.92, "m: vs llama.cpp pp512": 0.91,
                                             "m: vs llama.cpp pp2048": 0.82}


def test_the_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    bare = write(tmp_path, "bare.json", bench_report("H200", "m-cuda", {1: 200.0, 16: 2400.0}, {512: 26.0}))
    served = write(tmp_path, "serve.json", {"config": {"model": "m-cuda", "concurrency": 16}, "summary": {
        "output_token_throughput_tps": 1346.0, "ttft_ms": {"p50": 256.0}, "tpot_ms": {"p50": 10.2}}})
    out = tmp_path / "plot.png"
    plot_gpu.draw(plot_gpu.load([bare, served]), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
