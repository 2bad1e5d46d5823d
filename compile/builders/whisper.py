"""Builder for Whisper speech recognizers (CTranslate2 sources).

Writes ``model.so`` (``encode``, ``prefill``, ``decode``; see ``compile/model/whisper.py``),
the weights renamed from CTranslate2's names to the compiled model's parameters, Whisper's
``tokenizer.json``, and ``whisper.json``: the special token ids, language tokens, suppressed
tokens and audio front-end constants the runtime's decoding loop and log-mel need.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from compile.build import build_library, export_module
from compile.builders import Builder, BuildOutput
from compile.model.whisper import EXPORTED_FUNCTIONS, N_FRAMES, WhisperModel
from compile.sources.whisper_source import WhisperSource
from compile.targets import BuildTarget
from compile.tensor_cache import write_tensor_cache
from ferrum.errors import FerrumError, ModelSourceError
from ferrum.manifest_extra import WHISPER_DECODING_FILE, TranscriptionExtra, WhisperDecoding, WhisperSpecialTokens
from ferrum.quantization import QuantSpec

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160


def _ct2_name(param: str) -> str:
    """CTranslate2 tensor name of a compiled-model parameter name."""
    fixed = {
        "conv1.weight": "encoder/conv1/weight", "conv1.bias": "encoder/conv1/bias",
        "conv2.weight": "encoder/conv2/weight", "conv2.bias": "encoder/conv2/bias",
        "audio_positions": "encoder/position_encodings/encodings",
        "encoder_ln.weight": "encoder/layer_norm/gamma", "encoder_ln.bias": "encoder/layer_norm/beta",
        "token_embedding": "decoder/embeddings/weight",
        "text_positions": "decoder/position_encodings/encodings",
        "decoder_ln.weight": "decoder/layer_norm/gamma", "decoder_ln.bias": "decoder/layer_norm/beta",
    }
    if param in fixed:
        return fixed[param]
    stack, index, module, *rest = param.split(".")
    leaf = {"weight": "weight", "bias": "bias"}[rest[-1]]
    ln_leaf = {"weight": "gamma", "bias": "beta"}[rest[-1]]
    prefix = f"{'encoder' if stack == 'encoder_layers' else 'decoder'}/layer_{index}"
    table = {
        "attn_ln": f"self_attention/layer_norm/{ln_leaf}",
        "qkv": f"self_attention/linear_0/{leaf}",
        "out": f"self_attention/linear_1/{leaf}",
        "self_ln": f"self_attention/layer_norm/{ln_leaf}",
        "self_qkv": f"self_attention/linear_0/{leaf}",
        "self_out": f"self_attention/linear_1/{leaf}",
        "cross_ln": f"attention/layer_norm/{ln_leaf}",
        "cross_q": f"attention/linear_0/{leaf}",
        "cross_kv": f"attention/linear_1/{leaf}",
        "cross_out": f"attention/linear_2/{leaf}",
        "mlp_ln": f"ffn/layer_norm/{ln_leaf}",
    }
    if module == "mlp":
        return f"{prefix}/ffn/{'linear_0' if rest[0] == 'fc1' else 'linear_1'}/{leaf}"
    return f"{prefix}/{table[module]}"


def sinusoids(length: int, channels: int) -> np.ndarray:
    """Whisper's audio position table: sin | cos of position times geometric frequencies."""
    inv_timescales = np.exp(-np.log(10000) / (channels // 2 - 1) * np.arange(channels // 2))
    angles = np.arange(length)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def whisper_weights(source: WhisperSource, param_names: list[str], dtype: str) -> Iterator[tuple[str, np.ndarray]]:
    """Every parameter in call order, in the model dtype; conv weights flattened to (out, in*k).

    The audio position table is recomputed in float64: the checkpoint stores it in float16,
    whose rounding (up to 2.4e-4) moves the encoder output by up to 1 %; OpenAI's Whisper
    computes it in float32. The stored table must still match the formula."""
    for name in param_names:
        array = source.tensor(_ct2_name(name))
        if name.startswith("conv") and name.endswith(".weight"):
            array = array.reshape(array.shape[0], -1)
        if name == "audio_positions":
            exact = sinusoids(*array.shape)
            if np.max(np.abs(exact - array)) > 1e-3:
                raise ModelSourceError("the checkpoint's audio positions are not Whisper's sinusoids")
            array = exact
        yield name, array.astype(dtype)


def _decoding(source: WhisperSource) -> WhisperDecoding:
    """``whisper.json``: Whisper's control token ids (from tokenizer.json's added tokens), language
    tokens, suppressed tokens and the audio front end."""
    added = {t["content"]: t["id"] for t in json.loads(source.tokenizer_json)["added_tokens"]}
    needed = {
        "eot": "<|endoftext|>", "sot": "<|startoftranscript|>", "transcribe": "<|transcribe|>",
        "translate": "<|translate|>", "no_timestamps": "<|notimestamps|>",
    }
    missing = [text for text in needed.values() if text not in added]
    no_speech = added.get("<|nospeech|>", added.get("<|nocaptions|>"))
    if missing or no_speech is None:
        raise ModelSourceError(f"{source.path}: tokenizer.json lacks Whisper control tokens {missing or ['<|nospeech|>']}")
    ids = {key: added[text] for key, text in needed.items()}
    ids["no_speech"] = no_speech
    ids["timestamp_begin"] = ids["no_timestamps"] + 1
    lang_ids = source.ct2_config.get("lang_ids") or []
    id_to_text = {v: k for k, v in added.items()}
    languages = {id_to_text[i].strip("<|>"): i for i in lang_ids if i in id_to_text}
    if not languages:
        raise ModelSourceError(f"{source.path}: config.json lists no language tokens")
    return WhisperDecoding(
        special_tokens=WhisperSpecialTokens(**ids),
        languages=languages,
        suppress_tokens=list(source.ct2_config.get("suppress_ids", [])),
        suppress_tokens_at_begin=list(source.ct2_config.get("suppress_ids_begin", [])),
        sample_rate=SAMPLE_RATE,
        n_mels=source.config.n_mels,
        n_fft=N_FFT,
        hop_length=HOP_LENGTH,
        n_frames=N_FRAMES,
        chunk_seconds=N_FRAMES * HOP_LENGTH // SAMPLE_RATE,
    )


def build_whisper(
    source: WhisperSource, quant: QuantSpec, target: BuildTarget, staging: Path, progress: Callable[[str], None]
) -> BuildOutput:
    cfg = source.config
    progress(
        f"{source.name}: whisper, {cfg.n_encoder_layers}+{cfg.n_decoder_layers} layers, d_model {cfg.d_model}, "
        f"vocab {cfg.vocab_size}; {quant.name} for {target.info.kind} {target.info.arch or ''}".rstrip()
    )
    mod, param_names = export_module(WhisperModel(cfg, quant, gpu=target.kind.gpu))
    progress(f"lowering and compiling {len(EXPORTED_FUNCTIONS)} functions")
    library = build_library(mod, target, staging, progress)
    progress(f"writing {len(param_names)} weights")
    written = write_tensor_cache(whisper_weights(source, param_names, quant.model_dtype), staging / "weights")
    if written != param_names:
        raise FerrumError("internal error: converted weights do not match the compiled model's parameters")
    (staging / "tokenizer.json").write_text(source.tokenizer_json)
    d = _decoding(source)
    (staging / WHISPER_DECODING_FILE).write_text(json.dumps(d.to_dict(), indent=1))
    return BuildOutput(
        modality="transcription",
        architecture="whisper",
        model=cfg.to_dict(),
        functions=list(EXPORTED_FUNCTIONS),
        kernels=library.kernels,
        extra=TranscriptionExtra(
            param_names=param_names, sample_rate=d.sample_rate, n_mels=d.n_mels, n_fft=d.n_fft,
            hop_length=d.hop_length, n_frames=d.n_frames, chunk_seconds=d.chunk_seconds,
            special_tokens=d.special_tokens,
        ),
    )


BUILDER = Builder(build=build_whisper, quantizations=("q0f32", "q0f16"))
