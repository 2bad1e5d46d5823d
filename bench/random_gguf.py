"""Write a random-weight F16 GGUF of one of our artifacts' shapes, for llama.cpp as a speed peer.

llama.cpp's speed does not depend on weight values any more than ours does, and an 8B model's
weights cannot travel to the GPU machine, so both sides get random weights generated there. The
shape is read from an artifact's ``manifest.json`` (``model``: a Llama-family decoder), so the peer
runs exactly the shape we do. One layer's random tensors are reused for every layer (the writer
holds one layer in memory, not the model). The vocabulary is a placeholder SentencePiece one
(``<unk>``, ``<s>``, ``</s>``, the 256 byte tokens, then ``<tN>``): ``llama-bench`` feeds token ids
and never tokenizes text. Needs only ``numpy`` and ``gguf`` (no TVM).

    python bench/random_gguf.py ARTIFACT out-f16.gguf
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gguf
import numpy as np


def placeholder_vocab(size: int) -> tuple[list[bytes], list[float], list[int]]:
    """Tokens, scores and token types of a SentencePiece vocabulary of ``size`` placeholder pieces."""
    types = gguf.TokenType
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{b:02X}>".encode() for b in range(256)]
    kinds = [types.UNKNOWN, types.CONTROL, types.CONTROL] + [types.BYTE] * 256
    tokens += [f"<t{i}>".encode() for i in range(len(tokens), size)]
    kinds += [types.NORMAL] * (size - len(kinds))
    return tokens, [0.0] * size, [int(k) for k in kinds]


def write_random_gguf(model: dict, out: Path, seed: int = 0) -> None:
    """An F16 GGUF of the ``model`` shape (a manifest's ``model`` section) with random weights."""
    if model.get("architecture") != "llama" or model.get("num_experts"):
        raise SystemExit(f"only dense Llama-family shapes are written, not {model.get('architecture')!r}")
    rng = np.random.default_rng(seed)
    hidden, inter, vocab = model["hidden_size"], model["intermediate_size"], model["vocab_size"]
    heads, kv_heads, head_dim = model["num_attention_heads"], model["num_key_value_heads"], model["head_dim"]

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name(f"random-{Path(out).stem}")
    writer.add_context_length(model["context_length"])
    writer.add_embedding_length(hidden)
    writer.add_block_count(model["num_hidden_layers"])
    writer.add_feed_forward_length(inter)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(model["rope_theta"])
    writer.add_layer_norm_rms_eps(model["rms_norm_eps"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens, scores, types = placeholder_vocab(vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    writer.add_tensor("token_embd.weight", rand(vocab, hidden))
    layer = {
        "attn_norm.weight": np.ones(hidden, np.float32),
        "ffn_norm.weight": np.ones(hidden, np.float32),
        "attn_q.weight": rand(heads * head_dim, hidden),
        "attn_k.weight": rand(kv_heads * head_dim, hidden),
        "attn_v.weight": rand(kv_heads * head_dim, hidden),
        "attn_output.weight": rand(hidden, heads * head_dim),
        "ffn_gate.weight": rand(inter, hidden),
        "ffn_up.weight": rand(inter, hidden),
        "ffn_down.weight": rand(hidden, inter),
    }
    for i in range(model["num_hidden_layers"]):
        for name, tensor in layer.items():
            writer.add_tensor(f"blk.{i}.{name}", tensor)
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    if not model.get("tie_word_embeddings"):
        writer.add_tensor("output.weight", rand(vocab, hidden))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifact", type=Path, help="an artifact folder whose manifest gives the shape")
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    model = json.loads((args.artifact / "manifest.json").read_text())["model"]
    write_random_gguf(model, args.out)
    print(f"{args.out}: {args.out.stat().st_size / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
