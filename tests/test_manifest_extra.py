"""The typed manifest ``extra`` of each modality and the one artifact opener's refusals (pure Python)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ferrum.errors import ArtifactError
from ferrum.manifest import Manifest, TargetInfo
from ferrum.manifest_extra import (
    EXTRA_TYPES,
    EmbeddingExtra,
    LlmExtra,
    TranscriptionExtra,
    TtsExtra,
    WhisperDecoding,
)
from runtime.artifact import open_artifact

SPECIAL = {"eot": 50257, "sot": 50258, "transcribe": 50359, "translate": 50358, "no_timestamps": 50363,
           "no_speech": 50362, "timestamp_begin": 50364}
AUDIO = {"sample_rate": 16000, "n_mels": 80, "n_fft": 400, "hop_length": 160, "n_frames": 3000, "chunk_seconds": 30}
FRONT_END = {"phonemizer": "espeak-ng", "espeak_voice": "en-us", "phoneme_id_map": {"_": [0], "a": [14]},
             "sample_rate": 22050, "hop_length": 256, "noise_scale": 0.667, "length_scale": 1.0, "noise_w": 0.8}

# ``extra`` as the builders wrote it before the types existed (field for field what the compiled artifacts hold)
WRITTEN = {
    "llm": {"param_names": ["embed_tokens.weight", "norm.weight"]},
    "llm-cuda": {"param_names": ["embed_tokens.weight"], "decode_max_batch": 256},
    "llm-shape": {"param_names": ["w"], "param_shapes": {"w": [[8, 4], "float16"]},
                  "weights": "generated at run time (benchmark)", "decode_max_batch": 256},
    "embedding": {
        "param_names": ["embeddings.word_embeddings.weight"],
        "inputs": {"function": "embed", "tensors": ["input_ids", "token_type_ids", "attention_mask"],
                   "shape": ["batch", "seq"], "dtype": "int32", "padding": "right", "max_length": 256},
        "output": {"dtype": "float32", "shape": ["batch", 384]},
        "embedding_dim": 384, "max_length": 256, "pooling": "mean", "normalize": True,
    },
    "transcription": {"param_names": ["conv1.weight"], **AUDIO, "special_tokens": SPECIAL},
    "tts": {"param_names": ["enc_p.emb.weight"], "front_end": FRONT_END},
}
TYPES = {"llm": LlmExtra, "llm-cuda": LlmExtra, "llm-shape": LlmExtra, "embedding": EmbeddingExtra,
         "transcription": TranscriptionExtra, "tts": TtsExtra}


@pytest.mark.parametrize("kind", sorted(WRITTEN))
def test_extras_written_before_the_types_read_and_write_back_unchanged(kind):
    extra = TYPES[kind].from_dict(WRITTEN[kind])
    assert type(extra) is TYPES[kind]
    assert extra.to_dict() == WRITTEN[kind]
    assert json.loads(json.dumps(extra.to_dict())) == WRITTEN[kind]


def test_attributes_are_typed_values():
    llm = LlmExtra.from_dict(WRITTEN["llm"])
    assert llm.decode_max_batch is None and llm.weights is None and "decode_max_batch" not in llm.to_dict()
    assert LlmExtra.from_dict(WRITTEN["llm-cuda"]).decode_max_batch == 256
    embedding = EmbeddingExtra.from_dict(WRITTEN["embedding"])
    assert embedding.inputs.tensors[2] == "attention_mask" and embedding.output.shape == ["batch", 384]
    whisper = TranscriptionExtra.from_dict(WRITTEN["transcription"])
    assert (whisper.special_tokens.sot, whisper.n_mels) == (50258, 80)
    tts = TtsExtra.from_dict({**WRITTEN["tts"], "front_end": {**FRONT_END, "length_scale": 1}})
    assert tts.front_end.length_scale == 1.0 and isinstance(tts.front_end.length_scale, float)
    assert tts.front_end.phoneme_id_map["a"] == [14]


@pytest.mark.parametrize("kind, change, message", [
    ("llm", {"param_names": None}, r"extra\.param_names must be a list, not null"),
    ("llm", {"decode_max_batch": "256"}, r"extra\.decode_max_batch must be int or null, not str"),
    ("llm", {"decode_max_batch": True}, r"extra\.decode_max_batch must be int or null, not bool"),
    ("llm", {"params": []}, r"extra has unknown fields: params"),
    ("embedding", {"normalize": "yes"}, r"extra\.normalize must be bool, not str"),
    ("embedding", {"inputs": {"function": "embed"}}, r"extra\.inputs lacks the field 'tensors'"),
    ("transcription", {"special_tokens": {**SPECIAL, "sot": "x"}}, r"extra\.special_tokens\.sot must be int"),
    ("tts", {"front_end": {**FRONT_END, "phoneme_id_map": {"a": ["14"]}}},
     r"extra\.front_end\.phoneme_id_map\.a\[0\] must be int, not str"),
    ("tts", {"param_names": ["a", 3]}, r"extra\.param_names\[1\] must be str, not int"),
])
def test_malformed_extras_are_refused_naming_the_field(kind, change, message):
    with pytest.raises(ArtifactError, match=message):
        TYPES[kind].from_dict({**WRITTEN[kind], **change})


def test_a_missing_field_and_a_non_object_are_refused():
    incomplete = {k: v for k, v in WRITTEN["transcription"].items() if k != "n_mels"}
    with pytest.raises(ArtifactError, match="lacks the field 'n_mels'"):
        TranscriptionExtra.from_dict(incomplete)
    with pytest.raises(ArtifactError, match="extra must be an object, not list"):
        TtsExtra.from_dict([])


def test_whisper_json_as_the_builder_wrote_it():
    written = {"special_tokens": SPECIAL, "languages": {"en": 50259, "de": 50261}, "suppress_tokens": [1, 2],
               "suppress_tokens_at_begin": [220, 50257], **AUDIO}
    decoding = WhisperDecoding.from_dict(written)
    assert decoding.languages["de"] == 50261 and decoding.special_tokens.eot == 50257
    assert json.dumps(decoding.to_dict(), indent=1) == json.dumps(written, indent=1)  # same bytes, same key order


def manifest_for(modality: str, architecture: str = "llama") -> Manifest:
    kind = "llm" if modality == "llm" else modality
    return Manifest(
        name=f"test-{modality}", modality=modality, architecture=architecture, model={}, quantization={"name": "q0f32"},
        target=TargetInfo(kind="llvm", triple="x86_64-linux-gnu", device_type="cpu"), tvm_version="0.27.0", ferrum_version="0",
        source={}, library="model.so", functions=[], files={}, extra=EXTRA_TYPES[kind].from_dict(WRITTEN[kind]),
    )


def write(folder: Path, manifest: Manifest | dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = manifest.to_dict() if isinstance(manifest, Manifest) else manifest
    (folder / "manifest.json").write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize("modality", sorted(EXTRA_TYPES))
def test_manifest_load_gives_the_modality_s_extra_type(tmp_path, modality):
    manifest = manifest_for(modality)
    loaded = Manifest.load(write(tmp_path / modality, manifest))
    assert type(loaded.extra) is EXTRA_TYPES[modality] and loaded == manifest


def test_manifest_load_refuses_a_malformed_extra_naming_the_file_and_field(tmp_path):
    data = manifest_for("tts").to_dict()
    data["extra"]["front_end"]["sample_rate"] = "22050"
    with pytest.raises(ArtifactError, match=r"manifest\.json: extra\.front_end\.sample_rate must be int, not str"):
        Manifest.load(write(tmp_path, data))


def test_manifest_load_refuses_an_unknown_modality(tmp_path):
    data = {**manifest_for("llm").to_dict(), "modality": "video"}
    with pytest.raises(ArtifactError, match="unknown modality 'video'"):
        Manifest.load(write(tmp_path, data))


def test_a_manifest_whose_extra_is_another_modality_s_is_refused():
    with pytest.raises(ArtifactError, match="extra of a tts manifest is a TtsExtra, not LlmExtra"):
        Manifest(**{**vars(manifest_for("llm")), "modality": "tts"})


def test_open_artifact_refuses_another_modality_or_architecture(tmp_path):
    folder = write(tmp_path, manifest_for("tts", architecture="piper-vits"))
    with pytest.raises(ArtifactError, match="is a tts model, not an embedding model"):
        open_artifact(folder, "embedding")
    with pytest.raises(ArtifactError, match="unsupported tts architecture 'piper-vits'"):
        open_artifact(folder, "tts", architecture="other")
