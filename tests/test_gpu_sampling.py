"""The GPU sampler's contract and the engine's use of it, checked on the CPU.

``runtime.sampling.draw`` is the float64 statement of what ``compile/kernels/cuda/sampling.cuh``
computes (the H100 check in ``bench/kernel_bench.py`` compares the two). Here a stand-in runner
samples with ``draw`` where a CUDA artifact would sample on the GPU, so the engine's side of the
contract is exercised without a GPU: which steps sample on the device, the rows it sends, and that
seeded requests give the same tokens either way.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from ferrum.errors import InvalidRequestError
from ferrum.types import EngineConfig, InferenceRequest, SamplingParams
from runtime.batch_engine import ContinuousBatchEngine
from runtime.sampling import SequenceSampler, draw


def test_device_rows_take_the_same_random_numbers_as_host_sampling():
    params = SamplingParams(temperature=0.75, top_p=0.875, top_k=40, seed=11, max_tokens=4)
    logits = np.random.default_rng(0).standard_normal(500).astype(np.float32) * 3
    host = SequenceSampler(params, [1, 2])
    device = SequenceSampler(params, [1, 2])
    for _ in range(5):
        token, _ = host.sample(logits)
        assert draw(logits, device.device_row()) == token
    assert host.rng.random() == device.rng.random()


def test_greedy_rows_take_no_random_numbers():
    sampler = SequenceSampler(SamplingParams.greedy(max_tokens=4), [1])
    before = sampler.rng.bit_generator.state
    assert sampler.device_row() == (0.0, 1.0, 0.0, 0.0, 0.0)
    assert sampler.rng.bit_generator.state == before
    logits = np.array([0.1, 3.0, 2.0], np.float32)
    assert draw(logits, sampler.device_row()) == 1


def test_filters_keep_only_what_they_allow():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    for u in np.linspace(0, 0.999, 50):
        assert draw(logits, (1.0, 1.0, 2.0, 0.0, u)) in (0, 1)      # top-k 2
        assert draw(logits, (1.0, 0.6, 0.0, 0.0, u)) in (0, 1)      # top-p: 0.5 + 0.3 >= 0.6
        assert draw(logits, (1.0, 1.0, 0.0, 0.2, u)) in (0, 1, 2)   # min-p: >= 0.2 * 0.5
    assert draw(logits, (1.0, 1.0, 0.0, 0.0, 0.0)) == 0
    assert draw(logits, (1.0, 1.0, 0.0, 0.0, 0.999)) == 3


class DeviceSamplingRunner:
    """The CPU runner, plus decode_sample / prefill_sample answered with ``draw`` on its logits,
    as a CUDA artifact's runner answers them with the GPU sampler."""

    samples_on_device = True

    def __init__(self, runner):
        self._runner = runner
        self.device_steps = 0

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def _draw_rows(self, logits: np.ndarray, params: np.ndarray) -> np.ndarray:
        assert params.dtype == np.float32 and params.shape == (logits.shape[0], 5)
        self.device_steps += 1
        return np.array([draw(row, tuple(float(v) for v in p)) for row, p in zip(logits, params)], np.int32)

    def decode_sample(self, seq_ids, tokens, params):
        return self._draw_rows(self._runner.decode(seq_ids, tokens), params)

    def prefill_sample(self, seq_ids, chunks, params):
        return self._draw_rows(self._runner.prefill(seq_ids, chunks), params)


@pytest.fixture(scope="module")
def engines(smollm2_artifact):
    host = ContinuousBatchEngine(EngineConfig(artifact_path=str(smollm2_artifact), max_model_len=512))
    device = ContinuousBatchEngine(EngineConfig(artifact_path=str(smollm2_artifact), max_model_len=512))
    device.runner = DeviceSamplingRunner(device.runner)
    yield host, device
    for engine in (host, device):
        asyncio.run(engine.shutdown())


def _tokens(engine, prompt: str, **kw) -> list[int]:
    request = InferenceRequest(prompt=prompt, sampling_params=SamplingParams(max_tokens=12, ignore_eos=True, **kw))
    return asyncio.run(engine.infer(request)).tokens


def test_seeded_requests_give_the_same_tokens_sampled_on_device_or_host(engines):
    host, device = engines

    async def batch(engine, seeds):
        reqs = [InferenceRequest(prompt=f"Story number {s}:", sampling_params=SamplingParams(
            max_tokens=12, ignore_eos=True, temperature=0.75, top_p=0.875, top_k=40, min_p=0.0625, seed=s))
            for s in seeds]
        return [r.tokens for r in await asyncio.gather(*(engine.infer(r) for r in reqs))]

    before = device.runner.device_steps
    on_device = asyncio.run(batch(device, range(4)))
    assert device.runner.device_steps > before
    assert on_device == asyncio.run(batch(host, range(4)))


def test_requests_the_gpu_sampler_cannot_serve_are_sampled_on_the_host(engines):
    host, device = engines
    runner = device.runner
    for kw in ({"repetition_penalty": 1.3}, {"logit_bias": {5: 3.0}}, {"logprobs": True}):
        before = runner.device_steps
        tokens = _tokens(device, "Once upon a time", temperature=0.75, seed=3, **kw)
        assert runner.device_steps == before, kw
        assert tokens == _tokens(host, "Once upon a time", temperature=0.75, seed=3, **kw)


def test_cpu_artifact_has_no_device_sampler(engines):
    host, _ = engines
    assert not host.runner.samples_on_device
    with pytest.raises(InvalidRequestError, match="no on-device sampler"):
        host.runner.decode_sample([0], [1], np.zeros((1, 5), np.float32))
