"""Word error rate and CPU/GPU real-time factor of a compiled Whisper artifact.

Speech is spoken by espeak-ng from ``checks/speech.py``'s sentences. Reports, as JSON:

- per sentence: the transcript, word errors, audio seconds, wall seconds (median of
  ``--repeats`` runs through the engine) and real-time factor (wall / audio);
- corpus WER over all sentences;
- a long file (every sentence back to back with 1 s gaps, repeated to about 65 s: three 30 s
  windows) transcribed end to end: wall seconds and real-time factor;
- the model alone: encoder seconds per 30 s window and decoder milliseconds per token.

    python bench/transcribe_bench.py artifacts/whisper-base-q0f32-llvm --out bench/results/cpu_whisper_base_transcribe.json
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

from checks.machine import cpu_name  # noqa: E402

import numpy as np  # noqa: E402

from ferrum.types import EngineConfig  # noqa: E402
from runtime.audio_decode import decode_audio  # noqa: E402
from runtime.log_mel import mel_windows  # noqa: E402
from runtime.whisper_engine import WhisperEngine  # noqa: E402
from checks.speech import SENTENCES, read_wav_int16, speak, wav_bytes, word_error_rate, word_errors  # noqa: E402


def timed(engine: WhisperEngine, data: bytes, repeats: int) -> tuple[str, float]:
    times, text = [], ""
    for _ in range(repeats):
        start = time.perf_counter()
        text = asyncio.run(engine.transcribe_bytes(data))
        times.append(time.perf_counter() - start)
    return text, statistics.median(times)


def model_timings(engine: WhisperEngine, mel: np.ndarray, tokens: int = 32) -> dict:
    runner, sp = engine.runner, engine.special
    start = time.perf_counter()
    state = runner.encode(mel)
    encode_s = time.perf_counter() - start
    runner.step(state, [sp.sot, engine.languages["en"], sp.transcribe, sp.no_timestamps])
    start = time.perf_counter()
    for _ in range(tokens):
        runner.step(state, [440])
    return {"encode_s_per_window": round(encode_s, 3), "decode_ms_per_token": round((time.perf_counter() - start) / tokens * 1000, 2)}



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifact")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    engine = WhisperEngine(EngineConfig(artifact_path=args.artifact))
    report = {
        "command": " ".join(["bench/transcribe_bench.py", *sys.argv[1:]]),
        "artifact": Path(args.artifact).name,
        "device_kind": engine.runner.device_kind,
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "sentences": [],
    }
    if engine.runner.device_kind == "cuda":
        dev = engine.runner.device
        report.update(gpu=dev.device_name, compute=dev.compute_version)
    pieces = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, sentence in enumerate(SENTENCES):
            path = speak(sentence, Path(tmp) / f"s{i}.wav")
            samples, rate = read_wav_int16(path)
            pieces += [samples, np.zeros(rate)]
            text, wall = timed(engine, path.read_bytes(), args.repeats)
            errors, words = word_errors(sentence, text)
            audio_s = len(samples) / rate
            report["sentences"].append({"reference": sentence, "transcript": text, "word_errors": errors, "words": words,
                                        "audio_s": round(audio_s, 2), "wall_s": round(wall, 3), "rtf": round(wall / audio_s, 3)})
    report["wer"] = round(word_error_rate(SENTENCES, [s["transcript"] for s in report["sentences"]]), 4)
    long = np.concatenate(pieces)
    long = np.tile(long, int(np.ceil(65 * rate / len(long))))[: 65 * rate]
    text, wall = timed(engine, wav_bytes(long, rate), 1)
    report["long_file"] = {"audio_s": 65.0, "windows": 3, "wall_s": round(wall, 2), "rtf": round(wall / 65.0, 3),
                           "transcript_words": len(text.split())}
    first_window = decode_audio(wav_bytes(long[: 30 * rate], rate), 16000)
    mel = mel_windows(first_window, 16000, 400, 160, 80, 3000)[0]
    report["model"] = model_timings(engine, mel)
    asyncio.run(engine.shutdown())
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
