"""``--load-format dummy``: weights generated on the device from the artifact's shapes
(``runtime/dummy_weights.py``), so a shape-only artifact can be served for speed measurements."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil

import numpy as np
import pytest
import tvm

from ferrum.errors import ArtifactError, InvalidRequestError
from ferrum.types import EngineConfig, InferenceRequest, SamplingParams
from runtime.artifact import LlmArtifact
from runtime.batch_engine import ContinuousBatchEngine
from runtime.dummy_weights import dummy_params, weight_shapes
from runtime.model_runner import ModelRunner


def test_dummy_weights_have_the_artifacts_shapes_and_other_values(smollm2_artifact):
    artifact = LlmArtifact.open(smollm2_artifact)
    real = ModelRunner(artifact, "cpu").params
    dummy = ModelRunner(artifact, "cpu", load_format="dummy").params
    names = artifact.manifest.extra.param_names
    assert len(dummy) == len(real) == len(names)
    for name, r, d in zip(names, real, dummy):
        assert (d.shape, d.dtype) == (r.shape, r.dtype), name
        values = d.numpy()
        assert np.isfinite(values).all(), name
        if name.endswith("norm.weight"):
            assert (values == 1).all(), name
        else:
            assert not np.array_equal(values, r.numpy()) and values.std() > 0.01, name


def test_a_shape_only_artifact_is_served_with_dummy_weights(smollm2_artifact, tmp_path):
    """Without weights/ the engine refuses to load, except with dummy weights, whose shapes come
    from the manifest's param_shapes as bench/compile_shape.py writes them."""
    folder = tmp_path / "shape-only"
    shutil.copytree(smollm2_artifact, folder, ignore=shutil.ignore_patterns("weights"))
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    shapes = {n: [s, d] for n, s, d in weight_shapes(LlmArtifact.open(smollm2_artifact))}
    manifest["files"] = {rel: f for rel, f in manifest["files"].items() if not rel.startswith("weights/")}
    manifest["extra"] = {**manifest["extra"], "param_shapes": shapes, "weights": "generated at run time (test)"}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="load-format dummy"):
        ContinuousBatchEngine(EngineConfig(artifact_path=str(folder), max_model_len=256))
    engine = ContinuousBatchEngine(EngineConfig(artifact_path=str(folder), max_model_len=256, load_format="dummy"))
    try:
        request = InferenceRequest(prompt_token_ids=list(range(100, 120)),
                                   sampling_params=SamplingParams.greedy(max_tokens=12, ignore_eos=True))
        response = asyncio.run(engine.infer(request))
        assert len(response.tokens) == 12 and all(0 <= t < engine.artifact.config.vocab_size for t in response.tokens)
        with pytest.raises(InvalidRequestError, match="weights come from"):
            asyncio.run(engine.reconfigure(dataclasses.replace(engine.config(), load_format="auto")))
    finally:
        asyncio.run(engine.shutdown())


def test_unknown_load_format_and_missing_shapes_are_refused(smollm2_artifact, tmp_path):
    artifact = LlmArtifact.open(smollm2_artifact)
    with pytest.raises(InvalidRequestError, match="load_format must be one of auto, dummy"):
        ModelRunner(artifact, "cpu", load_format="random")
    folder = tmp_path / "no-shapes"
    shutil.copytree(smollm2_artifact, folder, ignore=shutil.ignore_patterns("weights"))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"] = {rel: f for rel, f in manifest["files"].items() if not rel.startswith("weights/")}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="records no parameter shapes"):
        dummy_params(LlmArtifact.open(folder), tvm.cpu())
