"""CUDA artifacts of the tiny families against their CPU artifact and transformers (issue 15).

Gemma 2's attention soft-cap (compile/model/softcap.py rewrites TVM's CUDA attention kernels too)
and Phi-3's LongRoPE were checked on CPU only; this runs them, and the other families, on a GPU.
``prepare`` (dev machine): tiny random checkpoints from ``checks/tiny_families.py``, compiled for
cuda sm_90a (q0f32, q0f16) and llvm q0f32, plus the references: transformers' float32 logits and
greedy tokens, and the CPU artifact's, for one fixed call sequence. Qwen2 and Qwen3 also come at
shapes Ferrum's CUDA kernels take (``tiny.KERNEL_FAMILIES``), built for q4f16 too and compared with
an llvm q4f16 artifact of the same int4 weights; each row says whether its build ran Ferrum's kernels. ``run`` (GPU machine): the same
call sequence on each CUDA artifact -- a prompt's first 12 tokens, 7 more over the cached pages, one
decode step; then a fresh prefill of the whole prompt and greedy decode -- and the diffs as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from checks import tiny_families as tiny  # noqa: E402

GREEDY = 6
BUILDS = [("cuda", "q0f32"), ("cuda", "q0f16"), ("llvm", "q0f32")]
# tiny.KERNEL_FAMILIES run on Ferrum's CUDA kernels, int4 included; their q4f16 reference is the
# CPU artifact of the same int4 weights (TVM's kernels in float16)
KERNEL_BUILDS = BUILDS + [("cuda", "q4f16"), ("llvm", "q4f16")]


def sequence(artifact: Path) -> tuple[np.ndarray, list[int]]:
    """(20, vocab) logits from prefill 12 / prefill 7 over cached pages / decode 1, and greedy tokens."""
    from runtime.artifact import LlmArtifact
    from runtime.model_runner import KVCacheConfig, ModelRunner

    loaded = LlmArtifact.open(artifact)

    def runner() -> ModelRunner:
        r = ModelRunner(loaded)
        r.create_kv_cache(KVCacheConfig(2, 256, 64, 16))
        r.add_sequence(0)
        return r

    r = runner()
    logits = np.concatenate([r.verify([0], [tiny.PROMPT[:12]]), r.verify([0], [tiny.PROMPT[12:19]]),
                             r.decode([0], [tiny.PROMPT[19]])]).astype(np.float64)
    r = runner()
    tokens = [int(r.prefill([0], [tiny.PROMPT])[0].argmax())]
    while len(tokens) < GREEDY:
        tokens.append(int(r.decode([0], [tokens[-1]])[0].argmax()))
    return logits, tokens


def _cpu_key(quant: str) -> str:
    """The references' prefix for the CPU artifact a CUDA build of ``quant`` is compared with:
    q0f32's for the float builds (as before int4 builds existed), q4f16's for q4f16."""
    return "cpu_q4f16_" if quant == "q4f16" else "cpu_"


def prepare(root: Path, only: list[str] | None, builds: list[tuple[str, str]] | None = None) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import train_tokenizer

    from compile.compile_model import compile_model

    tok = train_tokenizer()
    ckpt = root / "checkpoints"
    folders = {n: tiny.write_checkpoint(f, ckpt / n, tok, seed=3) for n, f in tiny.FAMILIES.items()}
    folders["phi3_longrope"] = tiny.with_longrope(folders["phi3"], ckpt / "phi3_longrope")
    folders |= {n: tiny.write_checkpoint(f, ckpt / n, tok, seed=3) for n, f in tiny.KERNEL_FAMILIES.items()}
    refs = {}
    for name, folder in sorted(folders.items()):
        if only and name not in only:
            continue
        refs[f"{name}/hf_logits"] = tiny.reference_logits(folder, tiny.PROMPT)
        refs[f"{name}/hf_greedy"] = np.array(tiny.reference_greedy(folder, tiny.PROMPT, GREEDY))
        for target, quant in builds or (KERNEL_BUILDS if name in tiny.KERNEL_FAMILIES else BUILDS):
            out = root / "art" / f"{name}-{quant}-{target}"
            try:
                art = compile_model(str(folder), target, quant, arch="sm_90a" if target == "cuda" else None,
                                    output_root=out, skip_existing=True)
                (root / "art" / f"{name}-{quant}-{target}.path").write_text(str(art.relative_to(root)))
            except Exception as e:  # noqa: BLE001 -- recorded: a family that does not build is a result
                print(f"BUILD FAILED {name} {target} {quant}: {type(e).__name__}: {e}", flush=True)
                continue
            print(f"built {name} {target} {quant}", flush=True)
            if target == "llvm":
                logits, tokens = sequence(art)
                refs[f"{name}/{_cpu_key(quant)}logits"], refs[f"{name}/{_cpu_key(quant)}greedy"] = logits, np.array(tokens)
    np.savez(root / "references.npz", **refs)


def run(root: Path, out: Path) -> None:
    refs = dict(np.load(root / "references.npz"))
    rows = []
    for path_file in sorted((root / "art").glob("*-cuda.path")):
        name, quant, _ = path_file.name[:-len(".path")].rsplit("-", 2)
        row = {"family": name, "quant": quant, "target": "cuda sm_90a"}
        try:
            logits, tokens = sequence(root / path_file.read_text())
        except Exception as e:  # noqa: BLE001 -- recorded per family
            row["error"] = f"{type(e).__name__}: {str(e)[:400]}"
            rows.append(row)
            print(name, quant, "ERROR", row["error"], flush=True)
            continue
        hf, hf_greedy = refs[f"{name}/hf_logits"], refs[f"{name}/hf_greedy"].tolist()
        row |= {"max_abs_vs_transformers": float(np.abs(logits - hf).max()),
                "argmax_equal_vs_transformers": bool((logits.argmax(-1) == hf.argmax(-1)).all()),
                "greedy": tokens, "greedy_equal_transformers": tokens == hf_greedy,
                "max_abs_logit": float(np.abs(hf).max()), "finite": bool(np.isfinite(logits).all())}
        cpu = f"{name}/{_cpu_key(quant)}"
        if f"{cpu}logits" in refs:
            row |= {"cpu_artifact": f"llvm {'q4f16' if quant == 'q4f16' else 'q0f32'}",
                    "max_abs_vs_cpu_artifact": float(np.abs(logits - refs[f"{cpu}logits"]).max()),
                    "argmax_equal_vs_cpu_artifact": bool((logits.argmax(-1) == refs[f"{cpu}logits"].argmax(-1)).all()),
                    "greedy_equal_cpu_artifact": tokens == refs[f"{cpu}greedy"].tolist()}
        manifest = json.loads((root / path_file.read_text() / "manifest.json").read_text())
        row["ferrum_kernels"] = "sample_tokens" in manifest.get("functions", [])
        rows.append(row)
    print(f"{'family':14} {'quant':6} {'|d| vs HF':>10} {'|d| vs CPU':>10} argmax greedy=HF greedy=CPU ferrum")
    for r in rows:
        if "error" in r:
            print(f"{r['family']:14} {r['quant']:6} ERROR {r['error'][:100]}")
            continue
        print(f"{r['family']:14} {r['quant']:6} {r['max_abs_vs_transformers']:10.2e} "
              f"{r.get('max_abs_vs_cpu_artifact', float('nan')):10.2e} {r['argmax_equal_vs_transformers']!s:6} "
              f"{r['greedy_equal_transformers']!s:9} {r.get('greedy_equal_cpu_artifact')!s:9} {r['ferrum_kernels']}")
    out.write_text(json.dumps({"prompt": tiny.PROMPT, "calls": "verify 12, verify 7 over cached pages, decode 1; "
                               f"greedy {GREEDY} after a fresh prefill of 20", "rows": rows}, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["prepare", "run"])
    p.add_argument("root", type=Path, help="folder of checkpoints, artifacts and references.npz")
    p.add_argument("--out", type=Path, default=Path("h200_families_check.json"))
    p.add_argument("--only", nargs="*", help="prepare only these families")
    p.add_argument("--builds", nargs="*", metavar="TARGET:QUANT",
                   help="what prepare compiles (default: the family's builds, BUILDS or KERNEL_BUILDS); a CUDA "
                        "q4f16 build is compared with an llvm q4f16 one")
    a = p.parse_args()
    builds = [tuple(b.split(":")) for b in a.builds] if a.builds else None
    prepare(a.root, a.only, builds) if a.mode == "prepare" else run(a.root, a.out)


if __name__ == "__main__":
    main()
