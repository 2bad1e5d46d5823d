"""The GPU sampler's contract and the engine's use of it, checked on the CPU.

``runtime.sampling.draw`` is the float64 statement of what ``compile/kernels/cuda/sampling.cuh``
computes (the H100 check in ``bench/kernel_bench.py`` compares the two). Here a stand-in runner
samples with ``draw`` where a CUDA artifact would sample on the GPU, so the engine's side of the
contract is exercised without a GPU: which steps sample on the device, the rows and grammar
bitmasks it sends, and that seeded requests give the same tokens either way.
"""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest

from ferrum.errors import InvalidRequestError
from ferrum.types import EngineConfig, InferenceRequest, SamplingParams
from runtime.batch_engine import ContinuousBatchEngine
from runtime.grammar import apply_mask, choice_grammar, json_schema_grammar, regex_grammar
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
    as a CUDA artifact's runner answers them with the GPU sampler; ``masked``: its sampler takes
    a grammar bitmask, as one built with ``sample_tokens_masked`` does (else an older artifact's).
    ``check_masks(seq_ids, grid)`` sees every bitmask grid the engine hands over."""

    samples_on_device = True

    def __init__(self, runner, masked: bool = False, check_masks=None):
        self._runner = runner
        self.samples_masked = masked
        self._check_masks = check_masks
        self.device_steps = 0
        self.masked_steps = 0

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def _draw_rows(self, seq_ids, logits: np.ndarray, params: np.ndarray, masks) -> np.ndarray:
        assert params.dtype == np.float32 and params.shape == (logits.shape[0], 5)
        self.device_steps += 1
        if masks is not None:
            assert self.samples_masked, "a bitmask handed to a sampler that takes none"
            grid = masks()  # called after the forward, as the real runner does
            assert grid.dtype == np.int32 and grid.shape == (logits.shape[0], (logits.shape[1] + 31) // 32)
            self._check_masks(seq_ids, grid)
            self.masked_steps += 1
            logits = np.stack([apply_mask(row, words) for row, words in zip(logits, grid)])
        return np.array([draw(row, tuple(float(v) for v in p)) for row, p in zip(logits, params)], np.int32)

    def decode_sample(self, seq_ids, tokens, params, masks=None):
        return self._draw_rows(seq_ids, self._runner.decode(seq_ids, tokens), params, masks)

    def prefill_sample(self, seq_ids, chunks, params, masks=None):
        return self._draw_rows(seq_ids, self._runner.prefill(seq_ids, chunks), params, masks)


def _masks_match_the_matchers(engine: ContinuousBatchEngine):
    """A check of each grid: a constrained row holds exactly its matcher's bitmask (the matchers
    advance only after sampling, so they still stand where the mask was computed), a plain row
    all ones."""
    def check(seq_ids, grid):
        for seq_id, words in zip(seq_ids, grid):
            state, index = engine.outputs._owner[seq_id]
            matcher = state.matchers[index]
            if matcher is None:
                assert (words == -1).all(), f"plain sequence {seq_id} got a mask"
            else:
                own = np.frombuffer(matcher.compute_bitmask(), dtype=np.int32)  # may have a spare word
                np.testing.assert_array_equal(words, own[: words.shape[0]])
    return check


@pytest.fixture(scope="module")
def engines(smollm2_artifact):
    host = ContinuousBatchEngine(EngineConfig(artifact_path=str(smollm2_artifact), max_model_len=512))
    device = ContinuousBatchEngine(EngineConfig(artifact_path=str(smollm2_artifact), max_model_len=512))
    device.runner = DeviceSamplingRunner(device.runner)
    masked = ContinuousBatchEngine(EngineConfig(artifact_path=str(smollm2_artifact), max_model_len=512))
    masked.runner = DeviceSamplingRunner(masked.runner, masked=True, check_masks=_masks_match_the_matchers(masked))
    yield host, device, masked
    for engine in (host, device, masked):
        asyncio.run(engine.shutdown())


def _tokens(engine, prompt: str, **kw) -> list[int]:
    request = InferenceRequest(prompt=prompt, sampling_params=SamplingParams(max_tokens=12, ignore_eos=True, **kw))
    return asyncio.run(engine.infer(request)).tokens


def test_seeded_requests_give_the_same_tokens_sampled_on_device_or_host(engines):
    host, device, _ = engines

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
    host, device, _ = engines
    runner = device.runner
    for kw in ({"repetition_penalty": 1.3}, {"logit_bias": {5: 3.0}}, {"logprobs": True}):
        before = runner.device_steps
        tokens = _tokens(device, "Once upon a time", temperature=0.75, seed=3, **kw)
        assert runner.device_steps == before, kw
        assert tokens == _tokens(host, "Once upon a time", temperature=0.75, seed=3, **kw)


def test_cpu_artifact_has_no_device_sampler(engines):
    host, _, _ = engines
    assert not host.runner.samples_on_device and not host.runner.samples_masked
    with pytest.raises(InvalidRequestError, match="no on-device sampler"):
        host.runner.decode_sample([0], [1], np.zeros((1, 5), np.float32))


CHOICES = ["apple", "banana split", "cherry"]
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}, "tag": {"type": "string", "maxLength": 6}},
          "required": ["n", "tag"], "additionalProperties": False}


async def _mixed(engine) -> list[list[int]]:
    """Plain, choice, regex and JSON-schema requests in one batch, greedy and seeded."""
    def req(prompt: str, grammar: str | None, **kw) -> InferenceRequest:
        kw = {"temperature": 0.0, **kw}
        return InferenceRequest(prompt=prompt, sampling_params=SamplingParams(
            max_tokens=20, ignore_eos=grammar is None, grammar=grammar, **kw))
    sampled = {"temperature": 0.8, "top_p": 0.9, "top_k": 40}
    reqs = [req("Once upon a time", None), req("The capital of France is", None, seed=5, **sampled),
            req("Pick a fruit:", choice_grammar(CHOICES)), req("Pick one:", choice_grammar(CHOICES), seed=7, **sampled),
            req("A code:", regex_grammar(r"[0-9]{3}-[a-z]{2}")),
            req("JSON please:", json_schema_grammar(SCHEMA), seed=9, **sampled)]
    return [r.tokens for r in await asyncio.gather(*(engine.infer(r) for r in reqs))]


def test_constrained_rows_sample_on_the_device_under_their_own_masks(engines):
    """A sampler that takes a bitmask gets the constrained and plain rows of one batch together,
    each constrained row with its own matcher's mask and each plain one all ones (checked on every
    step by ``_masks_match_the_matchers``), and gives every request the tokens the host gives it."""
    host, _, masked = engines
    runner = masked.runner
    before = runner.masked_steps
    on_device = asyncio.run(_mixed(masked))
    assert runner.masked_steps - before >= 3  # decode steps of the mixed batch with constrained rows
    assert on_device == asyncio.run(_mixed(host))
    texts = [masked.tokenizer.decode(t) for t in on_device]
    assert texts[2] in CHOICES and texts[3] in CHOICES and re.fullmatch(r"[0-9]{3}-[a-z]{2}", texts[4])


def test_a_sampler_without_a_mask_input_leaves_constrained_steps_to_the_host(engines):
    """An artifact built before ``sample_tokens_masked`` samples a step with a constrained row on
    the host (the fake runner fails if it is handed a mask)."""
    host, device, _ = engines
    before = device.runner.device_steps
    request = InferenceRequest(prompt="Pick a fruit:", sampling_params=SamplingParams.greedy(
        max_tokens=8, grammar=choice_grammar(CHOICES)))
    tokens = asyncio.run(device.infer(request)).tokens
    assert device.runner.device_steps == before
    assert tokens == asyncio.run(host.infer(request)).tokens
