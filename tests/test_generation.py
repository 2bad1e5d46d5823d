"""Generation through the engine on the real SmolLM2 artifact."""

from __future__ import annotations

import asyncio

import pytest

from checks import reference_llama as ref
from ferrum.errors import ContextLengthExceededError, InvalidRequestError
from ferrum.types import EngineConfig, FinishReason, InferenceRequest, SamplingParams
from runtime.batch_engine import ContinuousBatchEngine


@pytest.fixture(scope="module")
def engine(smollm2_artifact):
    eng = ContinuousBatchEngine(EngineConfig(artifact_path=str(smollm2_artifact), max_model_len=2048))
    yield eng
    asyncio.run(eng.shutdown())


def chat(engine, text: str) -> str:
    return engine.tokenizer.apply_chat_template([{"role": "user", "content": text}])


def run(coro):
    return asyncio.run(coro)


def test_greedy_equals_reference_for_32_tokens(engine, smollm2_reference):
    cfg, weights = smollm2_reference
    prompt = chat(engine, "Tell me a short story about a robot who learns to paint.")
    prompt_ids = engine.tokenizer.encode(prompt)
    response = run(engine.infer(InferenceRequest(prompt=prompt, sampling_params=SamplingParams.greedy(max_tokens=40))))
    expected = ref.greedy(cfg, weights, prompt_ids, 40, set(engine.tokenizer.eos_token_ids))
    assert len(response.tokens) >= 32
    assert response.tokens == expected
    assert response.text == engine.tokenizer.decode(expected)


def test_answer_is_coherent(engine):
    response = run(engine.infer(InferenceRequest(
        prompt=chat(engine, "What is the capital of France?"), sampling_params=SamplingParams.greedy(max_tokens=30))))
    assert "Paris" in response.text
    assert response.finish_reason is FinishReason.EOS
    assert response.usage.completion_tokens == len(response.tokens)


def test_stream_chunks_reassemble_to_infer_output(engine):
    request = InferenceRequest(prompt=chat(engine, "List four fruits."), sampling_params=SamplingParams.greedy(max_tokens=24))

    async def stream():
        return [c async for c in await engine.infer_stream(request)]

    chunks = run(stream())
    whole = run(engine.infer(InferenceRequest(prompt=request.prompt, sampling_params=request.sampling_params)))
    assert "".join(c.text for c in chunks) == whole.text
    assert [c.token for c in chunks] == whole.tokens
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert chunks[-1].finish_reason is not None and chunks[-1].usage.completion_tokens == len(chunks)


def test_max_tokens_gives_length(engine):
    response = run(engine.infer(InferenceRequest(
        prompt=chat(engine, "Write a long essay about the ocean."), sampling_params=SamplingParams.greedy(max_tokens=5))))
    assert response.finish_reason is FinishReason.Length
    assert len(response.tokens) == 5


def test_stop_string_ends_output_before_it(engine):
    prompt = chat(engine, "What is the capital of France?")
    full = run(engine.infer(InferenceRequest(prompt=prompt, sampling_params=SamplingParams.greedy(max_tokens=30))))
    assert "Paris" in full.text
    stopped = run(engine.infer(InferenceRequest(
        prompt=prompt, sampling_params=SamplingParams.greedy(max_tokens=30, stop_sequences=["Paris"]))))
    assert stopped.finish_reason is FinishReason.Stop
    assert stopped.text == full.text[: full.text.index("Paris")]


def test_seed_makes_sampling_reproducible(engine):
    prompt = chat(engine, "Invent a name for a cat.")

    def sample(seed: int) -> list[int]:
        params = SamplingParams(temperature=1.0, top_p=0.95, top_k=50, max_tokens=16, seed=seed)
        return run(engine.infer(InferenceRequest(prompt=prompt, sampling_params=params))).tokens

    assert sample(11) == sample(11)
    assert len({tuple(sample(s)) for s in (1, 2, 3, 4)}) > 1


def test_context_length_and_parameter_errors(engine):
    with pytest.raises(ContextLengthExceededError):
        run(engine.infer(InferenceRequest(prompt="hi " * 2100, sampling_params=SamplingParams.greedy(max_tokens=8))))
    with pytest.raises(InvalidRequestError, match="temperature"):
        run(engine.infer(InferenceRequest(prompt="hi", sampling_params=SamplingParams(temperature=-1))))
    with pytest.raises(InvalidRequestError, match="top_p"):
        run(engine.infer(InferenceRequest(prompt="hi", sampling_params=SamplingParams(top_p=0))))


def test_metrics_come_from_real_requests(engine):
    before = engine.metrics().total_requests
    run(engine.infer(InferenceRequest(prompt=chat(engine, "Say hi."), sampling_params=SamplingParams.greedy(max_tokens=4))))
    metrics = engine.metrics()
    assert metrics.total_requests == before + 1
    assert metrics.avg_request_latency_ms > 0 and metrics.performance_breakdown.model_execution_time_ms > 0
    assert engine.telemetry.latency_metrics().avg_ttft_ms > 0
    health = run(engine.health_check())
    kv, pages = health.component_status.kv_cache.metrics, engine.scheduler.pages
    # nothing runs: the only pages in use hold prefix-cache entries
    assert engine.scheduler.num_running == 0 and len(pages.sequences()) == len(engine.scheduler.prefix_cache)
    assert kv["free_pages"] == kv["total_pages"] - pages.used_pages == engine.runner.available_pages()
