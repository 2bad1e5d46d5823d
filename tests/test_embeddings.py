"""all-MiniLM-L6-v2 through compile → artifact → runtime, checked against a numpy float64 BERT."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from ferrum.engine import EmbedEngine
from ferrum.errors import (
    EngineShutdownError,
    InvalidRequestError,
    ModelSourceError,
    OverloadedError,
    UnsupportedFeatureError,
)
from ferrum.manifest import Manifest
from ferrum.serde import to_json
from ferrum.types import EngineConfig

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "The new movie is so great!",
    "The stock market fell sharply on Tuesday after the central bank raised interest rates.",
    "Quantum entanglement links the states of two particles.",
    "a",
    "",
]


@pytest.fixture(scope="session")
def minilm_folder():
    from compile.sources import packaged_model_path

    return packaged_model_path("all-minilm-l6-v2")


@pytest.fixture(scope="session")
def reference(minilm_folder):
    from reference_bert import ReferenceBert

    return ReferenceBert(minilm_folder)


@pytest.fixture
def engine(minilm_artifact):
    from runtime.embedding_engine import EmbeddingEngine

    return EmbeddingEngine(EngineConfig(artifact_path=str(minilm_artifact), max_num_seqs=64))


def embed_all(engine, texts: list[str]) -> np.ndarray:
    async def run():
        return await asyncio.gather(*(engine.embed_text(t) for t in texts))

    return np.array(asyncio.run(run()))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_manifest_describes_the_embedding_model(minilm_artifact):
    m = Manifest.load(minilm_artifact)
    assert (m.modality, m.architecture, m.functions) == ("embedding", "bert", ["embed"])
    assert m.model["hidden_size"] == 384 and m.model["max_length"] == 256
    assert (m.extra.embedding_dim, m.extra.max_length) == (384, 256)
    assert m.extra.pooling == "mean" and m.extra.normalize is True
    assert m.extra.inputs.tensors == ["input_ids", "token_type_ids", "attention_mask"]
    assert m.source["name"] == "all-minilm-l6-v2" and m.quantization["name"] == "q0f32"


def test_batched_embeddings_match_numpy_reference(engine, reference):
    vectors = embed_all(engine, SENTENCES)
    assert vectors.shape == (len(SENTENCES), engine.embedding_dim()) == (len(SENTENCES), 384)
    # every text went into one padded batch: the mask must make padding invisible
    assert engine.telemetry.steps_total == 1
    for text, vector in zip(SENTENCES, vectors):
        expected = reference.embed(engine.tokenize(text))
        assert cosine(vector, expected) >= 0.9999, text
        assert abs(np.linalg.norm(vector) - 1.0) < 1e-5


def test_similar_sentences_score_higher_than_unrelated(engine):
    food, bread, movie, great, stocks, quantum, *_ = embed_all(engine, SENTENCES)
    assert food @ bread > max(food @ movie, food @ stocks, food @ quantum) + 0.3
    assert movie @ great > max(movie @ food, movie @ stocks, movie @ quantum) + 0.3


def test_concurrent_requests_equal_each_alone(engine):
    together = embed_all(engine, SENTENCES)
    assert engine.telemetry.steps_total == 1
    for text, vector in zip(SENTENCES, together):
        np.testing.assert_allclose(embed_all(engine, [text])[0], vector, atol=2e-6, err_msg=text)
    assert engine.telemetry.steps_total == 1 + len(SENTENCES)


def test_embed_texts_returns_vectors_in_input_order(engine, reference):
    texts = SENTENCES[::-1]
    vectors = np.array(asyncio.run(engine.embed_texts(texts)))
    assert vectors.shape == (len(texts), 384) and engine.telemetry.steps_total == 1
    for text, vector in zip(texts, vectors):
        assert cosine(vector, reference.embed(engine.tokenize(text))) >= 0.9999, text
    np.testing.assert_allclose(vectors, embed_all(engine, texts), atol=2e-6)


def test_embed_texts_and_embed_text_share_batches(engine):
    async def run():
        return await asyncio.gather(engine.embed_texts(SENTENCES[:4]), engine.embed_text(SENTENCES[4]),
                                    engine.embed_texts(SENTENCES[5:]))

    first, single, rest = asyncio.run(run())
    assert engine.telemetry.steps_total == 1
    np.testing.assert_allclose(np.array([*first, single, *rest]), embed_all(engine, SENTENCES), atol=2e-6)


@pytest.mark.parametrize("bad", [[], ["fine", 3], "not a list", [None]])
def test_embed_texts_rejects_bad_input_before_running(engine, bad):
    with pytest.raises(InvalidRequestError) as err:
        asyncio.run(engine.embed_texts(bad))
    assert err.value.status == 400 and err.value.param == "input"
    assert engine.telemetry.steps_total == 0


def test_full_queue_is_a_429(minilm_artifact):
    from runtime.embedding_engine import EmbeddingEngine

    engine = EmbeddingEngine(EngineConfig(artifact_path=str(minilm_artifact), max_queue_size=4))

    async def crowded():
        first = asyncio.ensure_future(engine.embed_texts(SENTENCES[:3]))
        await asyncio.sleep(0)  # the first three are queued; the drain has not taken them yet
        with pytest.raises(OverloadedError) as err:
            await engine.embed_texts(SENTENCES[3:5])
        return err.value, await first

    error, first = asyncio.run(crowded())
    assert error.status == 429 and len(first) == 3
    assert len(asyncio.run(engine.embed_texts(SENTENCES[:4]))) == 4
    with pytest.raises(InvalidRequestError, match="at most 4") as err:  # could never fit: a 400, not a 429
        asyncio.run(engine.embed_texts(SENTENCES[:5]))
    assert err.value.status == 400


def test_engine_implements_embed_engine(engine):
    assert isinstance(engine, EmbedEngine) and engine.embedding_dim() == 384


def test_long_text_is_truncated_to_max_length(engine, reference):
    long_text = " ".join(f"word{i} is here" for i in range(300))
    ids = engine.tokenize(long_text)
    assert len(ids) == 256 and ids[0] == 101 and ids[-1] == 102
    vector = embed_all(engine, [long_text])[0]
    assert cosine(vector, reference.embed(ids)) >= 0.9999
    # words beyond the limit do not change the vector
    assert np.allclose(vector, embed_all(engine, [long_text + " completely different ending"])[0], atol=1e-6)


def test_batches_respect_the_padded_token_limit(minilm_artifact):
    from runtime.embedding_engine import EmbeddingEngine

    engine = EmbeddingEngine(EngineConfig(artifact_path=str(minilm_artifact), max_num_seqs=4,
                                          max_num_batched_tokens=64))
    vectors = embed_all(engine, SENTENCES * 2)
    assert len(vectors) == 16
    batching = engine.telemetry.batching_metrics()
    assert batching.batches_created >= 4 and batching.avg_batch_size <= 4
    np.testing.assert_allclose(vectors[:8], vectors[8:], atol=2e-6)


def test_image_input_is_a_400(engine):
    with pytest.raises(UnsupportedFeatureError, match="no image tower") as err:
        asyncio.run(engine.embed_image("cat.png"))
    assert err.value.status == 400


def test_non_string_input_is_rejected(engine):
    with pytest.raises(InvalidRequestError) as err:
        asyncio.run(engine.embed_text(["not", "a", "string"]))
    assert err.value.status == 400


def test_status_metrics_health_and_shutdown(engine):
    embed_all(engine, SENTENCES[:3])

    async def lifecycle():
        status, health = await engine.status(), await engine.health_check()
        metrics = engine.metrics()
        await engine.shutdown()
        return status, health, metrics, await engine.health_check()

    status, health, metrics, after = asyncio.run(lifecycle())
    assert status.is_ready and status.loaded_models == ["all-minilm-l6-v2-q0f32-llvm"]
    assert status.queued_requests == 0 and status.memory_usage.used_bytes > 0
    assert metrics.total_requests == metrics.successful_requests == 3
    assert metrics.tokens_per_second > 0 and metrics.performance_breakdown.model_execution_time_ms > 0
    assert health.status.value == "Healthy" and after.status.value == "Unhealthy"
    json.dumps(to_json(metrics))
    with pytest.raises(EngineShutdownError):
        asyncio.run(engine.embed_text("late"))


def test_serve_picks_the_engine_from_the_manifest(minilm_artifact):
    from runtime.embedding_engine import EmbeddingEngine
    from runtime.engines import open_engine

    assert isinstance(open_engine(EngineConfig(artifact_path=str(minilm_artifact))), EmbeddingEngine)


def test_q4f16_is_refused(tmp_path):
    from compile.compile_model import compile_model

    with pytest.raises(ModelSourceError, match="q4f16 is not available for bert"):
        compile_model("all-minilm-l6-v2", "llvm", "q4f16", output_root=tmp_path)


def test_unsupported_pooling_is_refused(minilm_folder, tmp_path):
    from compile.sources import open_source

    folder = tmp_path / "cls-pooled"
    shutil.copytree(minilm_folder, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    (folder / "model.safetensors").symlink_to(minilm_folder / "model.safetensors")
    pooling = folder / "1_Pooling" / "config.json"
    cfg = json.loads(pooling.read_text())
    pooling.write_text(json.dumps({**cfg, "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}))
    with pytest.raises(ModelSourceError, match="pooling"):
        open_source(str(folder))


@pytest.mark.skipif(shutil.which("nvcc") is None and not list(Path("/usr/local").glob("cuda*/bin/nvcc")),
                    reason="the CUDA build needs nvcc")
@pytest.mark.slow
def test_cuda_build_compiles(tmp_path):
    """Compile only (no GPU here): the encoder lowers for sm_90a and nvcc builds its kernels."""
    from compile.compile_model import compile_model

    folder = Path(compile_model("all-minilm-l6-v2", "cuda", None, output_root=tmp_path, arch="sm_90a"))
    m = Manifest.load(folder)
    assert (m.modality, m.target.kind, m.target.arch, m.quantization["name"]) == ("embedding", "cuda", "sm_90a", "q0f16")
    assert m.kernels and all((folder / rel).is_file() for rel in m.kernels.values())


def test_cpu_calls_group_texts_by_length_without_changing_vectors(engine):
    """A batch over ``call_tokens`` runs as several length-sorted model calls; vectors stay in
    input order and equal one padded call over the whole batch."""
    engine.call_tokens = 32
    calls = []
    embed = engine.runner.embed
    engine.runner.embed = lambda seqs: calls.append([len(s) for s in seqs]) or embed(seqs)
    texts = SENTENCES * 2
    vectors = np.array(asyncio.run(engine.embed_texts(texts)))
    assert engine.telemetry.steps_total == 1 and len(calls) > 2
    assert all(max(c) * len(c) <= 32 or len(c) == 1 for c in calls)
    flat = [n for c in calls for n in c]
    assert flat == sorted(flat) and len(flat) == len(texts)
    np.testing.assert_allclose(vectors, embed([engine.tokenize(t) for t in texts]), atol=2e-6)


RUNTIME_ONLY_SCRIPT = r"""
import asyncio, json, sys
import tvm
from ferrum.types import EngineConfig
from runtime.engines import open_engine

engine = open_engine(EngineConfig(artifact_path=sys.argv[1]))
vectors = asyncio.run(engine.embed_texts(sys.argv[2:]))
print(json.dumps({"runtime_only": tvm.base._RUNTIME_ONLY, "vectors": vectors,
                  "loaded": sorted(m for m in sys.modules if m.startswith(("tvm.relax", "tvm.s_tir", "compile")))}))
"""


def test_engine_runs_on_the_tvm_runtime_alone(minilm_artifact, engine):
    """``TVM_USE_RUNTIME_LIB=1``: no compiler library, no compiler module, same vectors."""
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", RUNTIME_ONLY_SCRIPT, str(minilm_artifact), *SENTENCES[:3]],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["runtime_only"] is True and report["loaded"] == []
    np.testing.assert_allclose(np.array(report["vectors"]), embed_all(engine, SENTENCES[:3]), atol=2e-6)
