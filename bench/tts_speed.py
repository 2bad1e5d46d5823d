"""Speed of a compiled text-to-speech voice: seconds of audio per second of compute (real-time factor),
through the engine, and the same sentences through ONNX Runtime on the voice's own graph.

    python bench/tts_speed.py ARTIFACT [--onnx VOICE.onnx] [--repeats 3] --out result.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from ferrum.types import EngineConfig  # noqa: E402
from runtime.engines import open_engine  # noqa: E402

TEXTS = [
    "Hello world, this is a test.",
    "The quick brown fox jumps over the lazy dog, and then it runs far away into the forest.",
    "Speech synthesis turns written text into a waveform. This voice speaks at twenty two kilohertz.",
]


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("artifact")
    parser.add_argument("--onnx", help="the voice's .onnx file, to time ONNX Runtime on the same sentences")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    engine = open_engine(EngineConfig(artifact_path=args.artifact))
    rate = engine.tts_sample_rate()
    session = None
    if args.onnx:
        from checks.piper_reference import reference_audio, reference_session

        session = reference_session(Path(args.onnx))
    rows = []
    for text in TEXTS:
        pcm = np.concatenate([np.asarray(c) for c in asyncio.run(engine.synthesize_speech(text))])
        seconds = median_time(lambda: asyncio.run(engine.synthesize_speech(text)), args.repeats)
        row = {"text": text, "audio_s": len(pcm) / rate, "ferrum_s": seconds, "ferrum_rtf": len(pcm) / rate / seconds}
        if session is not None:
            utterances = engine.phonemizer.utterances(text)
            rng = np.random.default_rng(0)
            feeds = [(u.ids, rng.standard_normal((1, 2, len(u.ids))), rng.standard_normal((1, 192, 64 * len(u.ids))))
                     for u in utterances]

            def run_ort() -> None:
                for ids, noise_w, noise in feeds:
                    reference_audio(session, ids, noise_w, noise, engine.front_end.to_dict())

            row["onnxruntime_1thread_s"] = median_time(run_ort, args.repeats)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    result = {
        "artifact": args.artifact,
        "device": engine.manifest.target.kind,
        "machine": platform.processor() or platform.machine(),
        "sample_rate": rate,
        "results": rows,
    }
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
