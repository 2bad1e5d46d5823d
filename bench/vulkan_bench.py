"""Decode and prefill speed of shape-only artifacts (``bench/compile_shape.py``) on any device,
weights generated on the device (``runtime/dummy_weights.py``, as ``--load-format dummy``; int4
too): the vulkan artifact beside our CUDA one in one run.

Needs neither torch nor the TVM compiler, so it runs on the GPU machine's runtime-only TVM
(``bench/device/vulkan.sh``). Times are medians of forward passes ended by a device sync. On a
webgpu device each decode entry also gives the host's share of a step (``host_issue_ms``: until
the step is encoded and submitted, before the sync waits for the GPU) and the WebGPU plugin's
counters for one step (``ferrum.webgpu.stats``: dispatches, submits, bind groups created; with
``FERRUM_WEBGPU_PROFILE=1`` the plugin's own host time per part).

    python bench/vulkan_bench.py ART [ART ...] --batches 1 8 32 --prefills 512 --out bench/results/x.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tvm  # noqa: E402
from tvm.runtime import ShapeTuple  # noqa: E402

from checks.timing import timed  # noqa: E402
from runtime.artifact import LlmArtifact, resolve_device  # noqa: E402
from runtime.dummy_weights import dummy_params  # noqa: E402
from runtime.model_runner import KVCacheConfig, ModelRunner  # noqa: E402
from runtime.tvm_env import describe_device  # noqa: E402


def decode(runner: ModelRunner, batch: int, context: int, repeats: int, rng: np.random.Generator) -> dict:
    """One decode step for ``batch`` sequences holding ``context`` tokens each."""
    steps = 3 * repeats + 8  # warm-ups, the timed steps, the host-share steps and those with logits
    runner.create_kv_cache(KVCacheConfig(batch, batch * -(-(context + steps) // 16) * 16 + 64, 1024, 16))
    ids = list(range(batch))
    vocab, hidden = runner.config.vocab_size, runner.config.hidden_size
    for s in ids:
        runner.add_sequence(s)
        runner.prefill([s], [[int(t) for t in rng.integers(10, vocab - 10, context)]])
    tokens = np.asarray(rng.integers(10, vocab - 10, batch), np.int32)
    issue: list[float] = []

    def step() -> None:
        t0 = time.perf_counter()
        embeds = runner._embed_tokens(tokens)._create_view((batch, 1, hidden))
        runner._begin(runner.cache, ShapeTuple(ids), ShapeTuple([1] * batch))
        _, runner.cache = runner._decode(embeds, runner.cache, runner.params)
        runner._end(runner.cache)
        issue.append(time.perf_counter() - t0)
        runner.device.sync()

    t = timed(step, repeats)
    entry = {"batch": batch, "context": context, "forward_ms": t * 1000, "forward_tok_s": batch / t,
             "host_issue_ms": statistics.median(issue[1:]) * 1000}
    stats = plugin_stats() if runner.device_kind == "webgpu" else None
    if stats is not None:
        stats.reset()
        step()
        entry["plugin_per_step"] = stats.read()
    with_logits = timed(lambda: runner.decode(ids, tokens.tolist()), max(repeats // 2, 3))
    entry.update(with_host_logits_ms=with_logits * 1000, with_host_logits_tok_s=batch / with_logits)
    return entry


class PluginStats:
    """The WebGPU plugin's counters (``ferrum.webgpu.stats``), reset before what is counted."""

    def __init__(self, read, reset) -> None:
        self._read, self._reset = read, reset

    def reset(self) -> None:
        self._reset()

    def read(self) -> dict:
        return json.loads(self._read())


def plugin_stats() -> PluginStats | None:
    """The plugin's counters when a webgpu artifact is loaded (None on other devices)."""
    read = tvm.get_global_func("ferrum.webgpu.stats", allow_missing=True)
    reset = tvm.get_global_func("ferrum.webgpu.reset_stats", allow_missing=True)
    return None if read is None or reset is None else PluginStats(read, reset)


def prefill(runner: ModelRunner, length: int, repeats: int, rng: np.random.Generator) -> dict:
    runner.create_kv_cache(KVCacheConfig(1, length + 64, length, 16))
    prompt = [int(t) for t in rng.integers(10, runner.config.vocab_size - 10, length)]

    def forward() -> None:
        runner.add_sequence(0)
        runner._prefill_logits([0], [prompt])
        runner.device.sync()
        runner.remove_sequence(0)

    t = timed(forward, repeats)
    return {"tokens": length, "prefill_ms": t * 1000, "prefill_tok_s": length / t}


def run_artifact(path: str, args) -> dict:
    artifact = LlmArtifact.open(path, verify_hashes=False)
    if artifact.manifest.extra.param_shapes is None:
        raise SystemExit(f"{path} is not a shape-only artifact (bench/compile_shape.py)")
    t0 = time.perf_counter()
    device = resolve_device(artifact.manifest)  # the device first: the weights are made on it
    runner = ModelRunner(artifact, params=dummy_params(artifact, device, args.seed))
    entry = {"artifact": artifact.manifest.name, "target": artifact.manifest.target.kind,
             "quantization": artifact.manifest.quantization["name"],
             "device": describe_device(runner.device_kind, runner.device),
             "load_s": time.perf_counter() - t0, "decode": [], "prefill": []}
    rng = np.random.default_rng(args.seed)
    for b in args.batches:
        entry["decode"].append(decode(runner, b, args.context, args.repeats, rng))
        d = entry["decode"][-1]
        counts = d.get("plugin_per_step", {})
        print(f"  {entry['artifact']} decode b={b}: {d['forward_ms']:.2f} ms/step, {d['forward_tok_s']:.0f} tok/s, "
              f"host {d['host_issue_ms']:.2f} ms, {counts.get('dispatches', '-')} dispatches, "
              f"{counts.get('groups_created', '-')} groups created", flush=True)
    for n in args.prefills:
        entry["prefill"].append(prefill(runner, n, args.prefill_repeats or max(args.repeats // 4, 3), rng))
        print(f"  {entry['artifact']} prefill {n}: {entry['prefill'][-1]['prefill_ms']:.1f} ms", flush=True)
    return entry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifacts", nargs="+")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prefills", type=int, nargs="+", default=[512])
    parser.add_argument("--context", type=int, default=128, help="tokens in each sequence when decode is timed")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--prefill-repeats", type=int, default=0, help="default: a quarter of --repeats, at least 3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    results = {"command": " ".join(sys.argv), "host": platform.node(), "python": platform.python_version(),
               "tvm": tvm.__version__, "runs": []}
    for path in args.artifacts:
        try:
            results["runs"].append(run_artifact(path, args))
        except Exception as exc:  # one failing artifact must not lose the others' figures
            print(f"  {path}: {type(exc).__name__}: {exc}", flush=True)
            results["runs"].append({"artifact": path, "error": f"{type(exc).__name__}: {exc}"})
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
