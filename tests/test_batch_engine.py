"""ContinuousBatchEngine on the real SmolLM2 artifact: batching, preemption, prefix cache,
cancellation, n > 1, seeds, speculation and overload, each checked against tokens produced alone."""

from __future__ import annotations

import asyncio
import time

import pytest

from ferrum.errors import OverloadedError
from ferrum.metrics import SpeculationConfig
from ferrum.types import EngineConfig, FinishReason, InferenceRequest, SamplingParams
from runtime.batch_engine import ContinuousBatchEngine

TOPICS = ["the sea", "a red bicycle", "why cats purr", "volcanoes", "the number seven", "winter mornings",
          "how bread rises", "a lighthouse keeper"]


def run(coro):
    return asyncio.run(coro)


def open_engine(artifact, **kwargs) -> ContinuousBatchEngine:
    return ContinuousBatchEngine(EngineConfig(artifact_path=str(artifact), max_model_len=1024, **kwargs))


@pytest.fixture(scope="module")
def engine(smollm2_artifact):
    eng = open_engine(smollm2_artifact, max_num_batched_tokens=256)
    yield eng
    run(eng.shutdown())


@pytest.fixture(scope="module")
def mixed_requests(engine) -> list[InferenceRequest]:
    """16 prompts from 30 to ~330 tokens, with 6 to 16 output tokens each."""
    requests = []
    for i in range(16):
        text = f"Write one sentence about {TOPICS[i % 8]}." + " Be vivid and precise." * (i * 2)
        prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": text}])
        requests.append(InferenceRequest(prompt=prompt, sampling_params=SamplingParams.greedy(max_tokens=6 + i % 11)))
    return requests


@pytest.fixture(scope="module")
def alone(engine, mixed_requests) -> list[list[int]]:
    """Each request's greedy tokens, run one at a time with the prefix cache off."""
    run(engine.reconfigure(EngineConfig(**{**vars(engine.config()), "enable_prefix_caching": False})))
    try:
        return [run(engine.infer(r)).tokens for r in mixed_requests]
    finally:
        run(engine.reconfigure(EngineConfig(**{**vars(engine.config()), "enable_prefix_caching": True})))


def concurrently(engine, requests):
    async def go():
        return await asyncio.gather(*(engine.infer(r) for r in requests))

    return run(go())


def assert_pages_agree_with_tvm(engine) -> None:
    assert engine.runner.available_pages() == engine.scheduler.pages.free_pages


def evict_everything(engine) -> None:
    """Drop the prefix cache (the only owner of pages once all requests ended)."""
    config = vars(engine.config())
    run(engine.reconfigure(EngineConfig(**{**config, "enable_prefix_caching": False})))
    run(engine.reconfigure(EngineConfig(**{**config, "enable_prefix_caching": True})))


def test_16_concurrent_requests_equal_each_alone(engine, mixed_requests, alone):
    responses = concurrently(engine, mixed_requests)
    assert [r.tokens for r in responses] == alone
    assert engine.telemetry.batching_metrics().avg_batch_size > 1.0  # alone steps all have size 1
    assert_pages_agree_with_tvm(engine)
    evict_everything(engine)
    pages = engine.scheduler.pages
    assert pages.free_pages == pages.total_pages
    assert_pages_agree_with_tvm(engine)


def test_small_kv_cache_preempts_and_still_gives_the_same_outputs(smollm2_artifact, mixed_requests, alone):
    small = open_engine(smollm2_artifact, kv_cache_tokens=512, max_num_seqs=8, max_num_batched_tokens=128,
                        enable_prefix_caching=False)
    try:
        responses = concurrently(small, mixed_requests)
        assert [r.tokens for r in responses] == alone
        assert small.scheduler.preemptions > 0
        assert small.scheduler_stats().preempted_requests > 0
        pages = small.scheduler.pages
        assert pages.free_pages == pages.total_pages
        assert_pages_agree_with_tvm(small)
    finally:
        run(small.shutdown())


def test_cancelled_stream_frees_its_pages(engine, mixed_requests):
    evict_everything(engine)
    free_before = engine.scheduler.pages.free_pages
    request = InferenceRequest(prompt=mixed_requests[5].prompt,
                               sampling_params=SamplingParams.greedy(max_tokens=200, ignore_eos=True))

    async def read_two_then_close() -> int:
        stream = await engine.infer_stream(request)
        got = [await stream.__anext__(), await stream.__anext__()]
        assert engine.scheduler.pages.free_pages < free_before
        await stream.aclose()
        return len(got)

    assert run(read_two_then_close()) == 2
    deadline = time.monotonic() + 5
    # the loop thread frees the scheduler's pages, then TVM's: wait for both
    while (engine.scheduler.pages.free_pages, engine.runner.available_pages()) != (free_before, free_before) \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.scheduler.pages.free_pages == free_before
    assert_pages_agree_with_tvm(engine)
    assert engine.scheduler.num_running == engine.scheduler.num_waiting == 0


def test_prefix_cache_hits_give_the_same_tokens_as_misses(engine, alone, mixed_requests):
    evict_everything(engine)
    system = "You are a careful assistant who answers in plain words. " * 6
    prompts = [engine.tokenizer.apply_chat_template([{"role": "system", "content": system},
                                                     {"role": "user", "content": f"Describe {t}."}]) for t in TOPICS[:3]]
    requests = [InferenceRequest(prompt=p, sampling_params=SamplingParams.greedy(max_tokens=10)) for p in prompts]
    config = vars(engine.config())
    run(engine.reconfigure(EngineConfig(**{**config, "enable_prefix_caching": False})))
    misses = [run(engine.infer(r)).tokens for r in requests]
    run(engine.reconfigure(EngineConfig(**{**config, "enable_prefix_caching": True})))
    cache = engine.scheduler.prefix_cache
    hits_before, saved_before = cache.hits, cache.saved_tokens
    hits = [run(engine.infer(r)).tokens for r in requests]
    again = run(engine.infer(requests[0])).tokens  # whole prompt cached
    assert hits == misses and again == misses[0]
    assert cache.hits - hits_before >= 3
    assert cache.saved_tokens - saved_before > 2 * len(engine.tokenizer.encode(system))
    stats = engine.cache_stats()
    assert stats.cache_hits == cache.hits and 0 < stats.cache_hit_rate <= 1
    assert stats.prefix_cache_stats.memory_saved_bytes > 0
    assert_pages_agree_with_tvm(engine)


def test_n_completions_share_the_prompt_and_are_reproducible(engine, mixed_requests):
    params = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=8, n=3, seed=5)
    request = lambda: InferenceRequest(prompt=mixed_requests[2].prompt, sampling_params=params)  # noqa: E731
    first, second = run(engine.infer(request())), run(engine.infer(request()))
    completions = [first.tokens] + [c.tokens for c in first.choices]
    assert len(completions) == 3 and all(completions)
    assert completions == [second.tokens] + [c.tokens for c in second.choices]
    assert len({tuple(c) for c in completions}) > 1
    assert first.usage.completion_tokens == sum(len(c) for c in completions)


def test_seeded_sampling_is_the_same_alone_and_in_a_batch(engine, mixed_requests):
    params = SamplingParams(temperature=0.9, top_k=40, max_tokens=12, seed=1234)
    target = InferenceRequest(prompt=mixed_requests[1].prompt, sampling_params=params)
    alone = run(engine.infer(target)).tokens
    others = [InferenceRequest(prompt=r.prompt, sampling_params=SamplingParams(temperature=1.0, max_tokens=10))
              for r in mixed_requests[6:12]]
    batched = concurrently(engine, others[:3] + [InferenceRequest(prompt=target.prompt, sampling_params=params)] + others[3:])
    assert batched[3].tokens == alone


def test_prompt_lookup_speculation_is_exact_under_greedy(engine):
    text = "Copy this list exactly, one per line: apple, banana, cherry, apple, banana, cherry, apple, banana, cherry."
    prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": text}])
    params = SamplingParams.greedy(max_tokens=40)
    plain = run(engine.infer(InferenceRequest(prompt=prompt, sampling_params=params))).tokens
    proposed = engine.draft_tokens["proposed"]
    fast = run(engine.infer_speculative(InferenceRequest(prompt=prompt, sampling_params=params),
                                        SpeculationConfig(speculation_depth=4, draft_model_config={"ngram": 2})))
    assert fast.tokens == plain
    assert engine.draft_tokens["proposed"] > proposed
    assert engine.draft_tokens["accepted"] > 0
    assert_pages_agree_with_tvm(engine)


def test_full_queue_rejects_with_429_and_keeps_accepted_requests(engine, mixed_requests):
    config = vars(engine.config())
    # one running sequence at a time: from the 4th submission on, two already wait
    run(engine.reconfigure(EngineConfig(**{**config, "max_queue_size": 2, "max_num_seqs": 1})))
    try:
        async def flood():
            accepted, rejected = [], 0
            for r in mixed_requests[:10]:
                request = InferenceRequest(prompt=r.prompt, sampling_params=SamplingParams.greedy(max_tokens=4))
                try:
                    accepted.append(await engine.infer_stream(request))
                except OverloadedError as exc:
                    assert exc.status == 429 and exc.retry_after_s > 0
                    rejected += 1
            finished = [[c async for c in stream] for stream in accepted]
            return finished, rejected

        finished, rejected = run(flood())
    finally:
        run(engine.reconfigure(EngineConfig(**config)))
    assert rejected > 0 and len(finished) + rejected == 10
    assert all(chunks[-1].finish_reason in (FinishReason.Length, FinishReason.EOS) for chunks in finished)
    assert engine.telemetry.counts["rejected"] >= rejected


def test_requests_that_can_never_fit_are_refused_on_arrival(smollm2_artifact, engine):
    from ferrum.errors import InvalidRequestError

    async def submit(target, **params):
        request = InferenceRequest(prompt="Tell me a story.", sampling_params=SamplingParams(**params))
        return await collect_all(await target.infer_stream(request))

    async def collect_all(stream):
        return [c async for c in stream]

    with pytest.raises(InvalidRequestError, match=r"\[1, 128\]") as too_many:
        run(submit(engine, n=100000))
    assert too_many.value.param == "n"
    small = open_engine(smollm2_artifact, kv_cache_tokens=512, max_num_seqs=4)
    try:
        with pytest.raises(InvalidRequestError, match="max_num_seqs") as wide:
            run(submit(small, n=5, max_tokens=4))
        assert wide.value.param == "n"
        with pytest.raises(InvalidRequestError, match="KV cache") as deep:
            run(submit(small, n=2, max_tokens=300))  # 2 x (prompt + 300) tokens > 512
        assert deep.value.param == "n"
        with pytest.raises(InvalidRequestError, match="KV cache") as long:
            run(submit(small, max_tokens=600))
        assert long.value.param == "max_tokens"
        chunks = run(submit(small, n=4, max_tokens=8, temperature=1.0, seed=1))  # at the limits: runs
        assert {c.index for c in chunks} == {0, 1, 2, 3}
        assert small.scheduler_stats().running_requests == 0 and small._in_flight == 0
    finally:
        run(small.shutdown())


def test_a_disconnect_cancels_every_sibling_and_frees_their_pages(engine, mixed_requests):
    evict_everything(engine)
    free_before = engine.scheduler.pages.free_pages
    request = InferenceRequest(prompt=mixed_requests[3].prompt, sampling_params=SamplingParams(
        temperature=1.0, max_tokens=200, ignore_eos=True, n=6, seed=2))

    async def read_a_few_then_close() -> set[int]:
        stream = await engine.infer_stream(request)
        indexes = {(await stream.__anext__()).index for _ in range(8)}
        await stream.aclose()
        return indexes

    assert len(run(read_a_few_then_close())) > 1  # siblings were already running
    deadline = time.monotonic() + 5
    while engine.scheduler_stats().running_requests and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = engine.scheduler_stats()
    assert stats.running_requests == stats.waiting_requests == 0
    assert engine.cache_stats().free_blocks == engine.scheduler.pages.free_pages == free_before
    assert_pages_agree_with_tvm(engine)
