"""Compile a decoder model of any registered architecture from its shape alone (no weights) for speed benchmarks.

Speed does not depend on weight values, and an 8B model's weights cannot travel to the GPU
machine, so the benchmark generates them there (``bench/gpu_bench.py``). This writes a normal
artifact folder (library, fatbins, manifest) whose manifest lists every parameter's shape and
dtype under ``extra.param_shapes`` and says ``extra.weights = "generated at run time"``;
the network is the one ``compile/model/architectures.py`` registers for the shape's
``architecture`` (Llama, Qwen3 with q/k norm, Qwen3-MoE's routed experts, ...);
the engine serves it only with ``--load-format dummy`` (weights generated on the device). Its
``tokenizer.json`` is a placeholder: one word-level token ``<tN>`` per id, so a benchmark's
token-id prompts go in and the streamed text names the ids.

    python bench/compile_shape.py llama3-8b --quant q0f16 --target cuda --arch sm_90a --out .dev/shapes
    python bench/compile_shape.py qwen3-30b-a3b --quant q0f16 --target cuda --arch sm_90a --out .dev/shapes
    python bench/compile_shape.py llama3-8b --quant q4f16 --target vulkan --out .dev/shapes
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tvm  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402

import ferrum  # noqa: E402
from compile.build import LIBRARY_NAME  # noqa: E402
from compile.builders.decoder import build_network, compile_decoder, splits_record  # noqa: E402
from compile.targets import resolve_target  # noqa: E402
from ferrum.manifest import GenerationConfig, Manifest, describe_files  # noqa: E402
from ferrum.manifest_extra import LlmExtra  # noqa: E402
from ferrum.errors import ModelSourceError  # noqa: E402
from ferrum.model_config import DecoderConfig, LlamaConfig  # noqa: E402
from ferrum.quantization import get_quantization  # noqa: E402


SHAPES = {
    # Meta-Llama-3-8B's config.json
    "llama3-8b": LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                             num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5,
                             rope_theta=500000.0, context_length=8192, tie_word_embeddings=False),
    # SmolLM2-135M-Instruct's GGUF metadata (the default model, here without its weights)
    "smollm2-135m": LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                num_attention_heads=9, num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5,
                                rope_theta=100000.0, context_length=8192, tie_word_embeddings=True),
    # Qwen/Qwen3-8B's config.json (q/k norm, no biases, untied)
    "qwen3-8b": DecoderConfig(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                              num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
                              rope_theta=1000000.0, context_length=40960, tie_word_embeddings=False,
                              architecture="qwen3", qk_norm=True),
    # Qwen/Qwen2.5-7B-Instruct's config.json (q/k/v biases, untied; its sliding window is off)
    "qwen2.5-7b": DecoderConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                num_attention_heads=28, num_key_value_heads=4, head_dim=128, rms_norm_eps=1e-6,
                                rope_theta=1000000.0, context_length=32768, tie_word_embeddings=False,
                                architecture="qwen2", qkv_bias=True),
    # Qwen/Qwen3-30B-A3B's config.json: every layer's MLP routed, 8 of 128 experts per token
    "qwen3-30b-a3b": DecoderConfig(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=48,
                                   num_attention_heads=32, num_key_value_heads=4, head_dim=128, rms_norm_eps=1e-6,
                                   rope_theta=1000000.0, context_length=40960, tie_word_embeddings=False,
                                   architecture="qwen3_moe", qk_norm=True, num_experts=128, num_experts_per_tok=8,
                                   moe_intermediate_size=768, norm_topk_prob=True),
}

# (bos, eos ids) of the placeholder generation.json, as the real models' configs say
SPECIAL_TOKENS = {"llama": (128000, [128001]), "qwen2": (151643, [151645, 151643]), "qwen3": (151643, [151645, 151643]),
                  "qwen3_moe": (151643, [151645, 151643])}


def placeholder_tokenizer(vocab_size: int) -> Tokenizer:
    """``<t0>`` … ``<tN>``, split on whitespace, decoded joined by spaces (ids out of a text)."""
    tokenizer = Tokenizer(models.WordLevel({f"<t{i}>": i for i in range(vocab_size)}, unk_token="<t0>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("--quant", default="q0f16")
    parser.add_argument("--target", default="cuda")
    parser.add_argument("--arch", default="sm_90a")
    parser.add_argument("--out", type=Path, default=Path(".dev/shapes"))
    parser.add_argument("--max-binding", type=int, default=None, metavar="BYTES",
                        help="vulkan: bytes one kernel argument binds (default 128 MiB); larger parameters are split")
    parser.add_argument("--tokenizer-from", type=Path, default=None, metavar="ARTIFACT",
                        help="take tokenizer.json and generation.json from this artifact (a vocabulary no larger "
                             "than the shape's: a wider LM head's extra ids are padding, which no grammar allows and "
                             "which decode to nothing) instead of the placeholder, so text, chat templates and "
                             "grammars work")

    args = parser.parse_args()

    target = resolve_target(args.target, None if args.target in ("vulkan", "webgpu") else args.arch, args.max_binding)
    cfg, quant = SHAPES[args.shape], get_quantization(args.quant, gpu=target.kind.gpu)
    name = f"{args.shape}-shape-{quant.name}-{target.tag}"
    folder = args.out / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        shapes = {n: [[int(d) for d in p.shape], str(p.dtype)]
                  for n, p in build_network(cfg, quant, target)[0].named_parameters()}
    except ModelSourceError as exc:  # e.g. Qwen3-MoE refuses the CPU q4f32 layout
        shutil.rmtree(folder, ignore_errors=True)
        parser.error(f"{args.shape} at {quant.name}: {exc}")
    print(f"{name}: {len(shapes)} parameters, compiling", flush=True)
    compiled = compile_decoder(cfg, quant, target, folder, print)
    assert compiled.param_names == list(shapes), "parameter order differs from the model's"
    if args.tokenizer_from is not None:
        donor = Manifest.load(args.tokenizer_from)
        if donor.model.get("vocab_size", cfg.vocab_size + 1) > cfg.vocab_size:
            parser.error(f"{args.tokenizer_from} has vocab size {donor.model.get('vocab_size')}, "
                         f"more than the shape's {cfg.vocab_size}")
        for file in ("tokenizer.json", "generation.json"):
            shutil.copyfile(args.tokenizer_from / file, folder / file)
    else:
        placeholder_tokenizer(cfg.vocab_size).save(str(folder / "tokenizer.json"))
        bos, eos = SPECIAL_TOKENS.get(cfg.architecture, SPECIAL_TOKENS["llama"])
        generation = GenerationConfig(bos_token_id=bos, eos_token_ids=eos, context_length=cfg.context_length)
        (folder / "generation.json").write_text(json.dumps(generation.to_dict()))
    Manifest(
        name=name, modality="llm", architecture=cfg.architecture, model=cfg.to_dict(), quantization=quant.to_dict(),
        target=target.info, tvm_version=tvm.__version__, ferrum_version=ferrum.__version__,
        source={"format": "shape", "name": args.shape}, library=LIBRARY_NAME, functions=compiled.functions,
        files=describe_files(folder), kernels=compiled.library.kernels,
        extra=LlmExtra(param_names=compiled.param_names, param_shapes=shapes, param_splits=splits_record(compiled.layout),
                       weights="generated at run time (benchmark)", **compiled.extra),
        created_at=datetime.now(UTC).isoformat(),
    ).write(folder)
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
