"""`ferrum serve` on the real SmolLM2 artifact: the official openai client, raw HTTP for every
error, streaming, cancellation on disconnect, metrics, auth and CORS, 64 concurrent streams.

One server process serves the whole module (loading the model takes seconds); its teardown
checks that SIGTERM ends it with exit status 0.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from server_harness import ServeProcess, request, run, sse_events

API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_BODY = 65536
MAX_MODEL_LEN = 2048
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(smollm2_artifact):
    proc = ServeProcess([str(smollm2_artifact)], "--api-key", API_KEY, "--max-model-len", str(MAX_MODEL_LEN),
                        "--kv-cache-tokens", "16384", "--max-body-bytes", str(MAX_BODY))
    proc.model = smollm2_artifact.name
    yield proc
    assert proc.terminate() == 0


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def error_of(status: int, body: bytes, expected_status: int) -> dict:
    assert status == expected_status, body
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    return error


# -- openai client ------------------------------------------------------------------------------
def test_models_list(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [server.model]


def test_chat_non_stream_and_stream_agree(client, server):
    full = client.chat.completions.create(model=server.model, messages=FRANCE, max_tokens=24, temperature=0)
    choice = full.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens
    assert 0 < full.usage.completion_tokens < 24

    chunks = list(client.chat.completions.create(model=server.model, messages=FRANCE, max_tokens=24, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == full.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_length_and_logprobs(client, server):
    out = client.completions.create(model=server.model, prompt="Once upon a time", max_tokens=5, temperature=0,
                                    logprobs=2)
    choice = out.choices[0]
    assert choice.finish_reason == "length"
    assert out.usage.completion_tokens == 5
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert "".join(lp.tokens) == choice.text
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0 and len(top) == 2
        assert max(top.values()) == pytest.approx(logprob)  # greedy picks the most likely token
        assert top[token] == pytest.approx(logprob)


def test_completions_stream_stop_sequence(server):
    events = run(sse_events(server.url + "/v1/completions", {
        "model": server.model, "prompt": "The capital of France is", "max_tokens": 16, "temperature": 0,
        "stop": [" Paris"], "stream": True}, headers=AUTH))
    assert events[-1] == "[DONE]"
    body = events[:-1]
    assert all(e["object"] == "text_completion" and "usage" not in e for e in body)
    assert body[-1]["choices"][0]["finish_reason"] == "stop"
    assert "Paris" not in "".join(e["choices"][0]["text"] for e in body)


def test_sampling_params_n_seed_and_penalties(client, server):
    kwargs = dict(model=server.model, messages=FRANCE, max_tokens=8, temperature=0.9, top_p=0.95, seed=3, n=2,
                  presence_penalty=0.5, frequency_penalty=0.5, logit_bias={"28": -100},
                  extra_body={"top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1})
    first = client.chat.completions.create(**kwargs)
    again = client.chat.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    assert all(c.finish_reason in ("length", "stop") for c in first.choices)
    assert 2 <= first.usage.completion_tokens <= 16


def test_chat_logprobs_shape(client, server):
    out = client.chat.completions.create(model=server.model, messages=FRANCE, max_tokens=3, temperature=0,
                                         logprobs=True, top_logprobs=3)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert bytes(entry.bytes).decode() == entry.token


# -- errors over raw HTTP -----------------------------------------------------------------------
def post(server, path: str, body=None, *, raw: bytes | None = None, headers=AUTH):
    return run(request("POST", server.url + path, json_body=body if raw is None else None, data=raw,
                       headers={**headers, "Content-Type": "application/json"} if raw is not None else headers))


def test_malformed_json(server):
    status, _, body = post(server, "/v1/chat/completions", raw=b'{"model": ')
    assert "not valid JSON" in error_of(status, body, 400)["message"]
    status, _, body = post(server, "/v1/completions", raw=b"[1, 2]")
    assert error_of(status, body, 400)["type"] == "invalid_request_error"


@pytest.mark.parametrize("field,value", [("temperature", "hot"), ("max_tokens", 1.5), ("stream", "yes"),
                                         ("messages", "hi"), ("n", True), ("stop", 5)])
def test_wrong_types(server, field, value):
    body = {"model": server.model, "messages": FRANCE, field: value}
    error = error_of(*post(server, "/v1/chat/completions", body)[::2], 400)
    assert error["param"] == field


@pytest.mark.parametrize("field,value", [("temperature", -1), ("top_p", 2), ("top_p", 0), ("max_tokens", 0),
                                         ("presence_penalty", 3), ("top_logprobs", 30), ("n", 0), ("min_p", 1.5),
                                         ("repetition_penalty", 0)])
def test_invalid_sampling_values(server, field, value):
    body = {"model": server.model, "messages": FRANCE, field: value}
    if field == "top_logprobs":
        body["logprobs"] = True
    error = error_of(*post(server, "/v1/chat/completions", body)[::2], 400)
    assert error["param"] == field


def test_unknown_model_names_served_models(server):
    error = error_of(*post(server, "/v1/chat/completions", {"model": "gpt-9", "messages": FRANCE})[::2], 404)
    assert error["code"] == "model_not_found" and server.model in error["message"]
    error = error_of(*post(server, "/v1/embeddings", {"model": "e5", "input": "hi"})[::2], 404)
    assert error["code"] == "model_not_found" and "no embedding model" in error["message"]
    assert server.model in error["message"]


def test_prompt_too_long(server):
    body = {"model": server.model, "prompt": "hello " * (MAX_MODEL_LEN + 100), "max_tokens": 4}
    error = error_of(*post(server, "/v1/completions", body)[::2], 400)
    assert error["code"] == "context_length_exceeded"


def test_body_over_limit(server):
    body = {"model": server.model, "prompt": "x" * (MAX_BODY * 2)}
    status, _, raw = post(server, "/v1/completions", body)
    assert error_of(status, raw, 413)["type"] == "invalid_request_error"


def test_unknown_route_and_method(server):
    status, _, body = run(request("GET", server.url + "/v1/nothing", headers=AUTH))
    error_of(status, body, 404)
    status, headers, body = run(request("GET", server.url + "/v1/chat/completions", headers=AUTH))
    error_of(status, body, 405)
    assert "POST" in headers["Allow"]


def test_auth_required_on_v1_only(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        status, _, body = run(request("GET", server.url + "/v1/models", headers=headers))
        assert error_of(status, body, 401)["type"] == "authentication_error"
    assert run(request("GET", server.url + "/health"))[0] == 200
    assert run(request("GET", server.url + "/metrics"))[0] == 200


def test_cors_off_by_default(server):
    status, headers, _ = run(request("OPTIONS", server.url + "/v1/chat/completions", headers={
        **AUTH, "Origin": "http://example.com", "Access-Control-Request-Method": "POST"}))
    assert status == 405 and "Access-Control-Allow-Origin" not in headers
    _, headers, _ = run(request("GET", server.url + "/health", headers={"Origin": "http://example.com"}))
    assert "Access-Control-Allow-Origin" not in headers


# -- status, health, metrics --------------------------------------------------------------------
def status_of(server) -> dict:
    status, _, body = run(request("GET", server.url + "/v1/status", headers=AUTH))
    assert status == 200
    return json.loads(body)["models"][server.model]


def test_health_and_status(server):
    status, _, body = run(request("GET", server.url + "/health"))
    health = json.loads(body)
    assert status == 200 and health["status"] in ("Healthy", "Warning")
    assert set(health["component_status"]) >= {"scheduler", "kv_cache", "model_executor"}
    state = status_of(server)
    assert state["modality"] == "llm" and state["status"]["is_ready"] is True
    assert state["status"]["loaded_models"] == [server.model]
    assert state["cache"]["total_blocks"] == state["cache"]["used_blocks"] + state["cache"]["free_blocks"]
    assert state["metrics"]["total_requests"] >= 1


def scrape(server) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    status, headers, body = run(request("GET", server.url + "/metrics"))
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def test_metrics_prometheus(server, client):
    def value(family: str, sample: str, **labels) -> float:
        return sum(s.value for s in families[family].samples
                   if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))

    families = scrape(server)
    unauthorized_before = value("ferrum_http_requests", "ferrum_http_requests_total", status="401")
    client.completions.create(model=server.model, prompt="One, two,", max_tokens=4, temperature=0)
    assert run(request("GET", server.url + "/v1/models"))[0] == 401  # no key: counted as a 401
    families = scrape(server)
    for name in ("ferrum_requests_running", "ferrum_requests_waiting", "ferrum_kv_cache_pages_used",
                 "ferrum_kv_cache_pages_free", "ferrum_prefix_cache_hits", "ferrum_time_to_first_token_seconds",
                 "ferrum_inter_token_latency_seconds", "ferrum_e2e_request_latency_seconds",
                 "ferrum_prompt_tokens", "ferrum_generation_tokens", "ferrum_http_requests"):
        assert name in families, name

    assert value("ferrum_http_requests", "ferrum_http_requests_total", route="/v1/completions", status="200") >= 1
    assert value("ferrum_http_requests", "ferrum_http_requests_total", status="401") == unauthorized_before + 1
    assert value("ferrum_generation_tokens", "ferrum_generation_tokens_total", model=server.model) >= 4
    assert value("ferrum_e2e_request_latency_seconds", "ferrum_e2e_request_latency_seconds_count") >= 1
    assert value("ferrum_inter_token_latency_seconds", "ferrum_inter_token_latency_seconds_count") >= 3
    assert value("ferrum_kv_cache_pages_free", "ferrum_kv_cache_pages_free", model=server.model) > 0
    assert value("ferrum_requests_running", "ferrum_requests_running", model=server.model) == 0


# -- cancellation -------------------------------------------------------------------------------
def test_disconnect_cancels_request_and_frees_pages(server):
    before = status_of(server)

    async def read_some_then_drop() -> int:
        body = {"model": server.model, "prompt": "A long story about a dragon: " + "once more " * 150,
                "max_tokens": 1500, "ignore_eos": True, "stream": True}
        async with aiohttp.ClientSession() as session:
            async with session.post(server.url + "/v1/completions", json=body, headers=AUTH) as response:
                seen = 0
                async for line in response.content:
                    seen += line.startswith(b"data: ")
                    if seen == 3:
                        break
                return seen

    assert run(read_some_then_drop()) == 3  # leaving the block closes the connection mid-stream
    deadline = time.monotonic() + 10
    while True:
        after = status_of(server)
        done = (after["scheduler"]["running_requests"] == 0 and after["scheduler"]["cancelled_requests"]
                == before["scheduler"]["cancelled_requests"] + 1)
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert done, after["scheduler"]
    # the request's pages (its 300+-token prompt and its output) are back: whatever the prefix
    # cache keeps is bounded by the prompt, never the 1500-token budget
    assert after["cache"]["used_blocks"] <= before["cache"]["used_blocks"] + (330 // 16 + 1)
    assert after["metrics"]["total_requests"] == before["metrics"]["total_requests"] + 1


# -- concurrency --------------------------------------------------------------------------------
def test_64_concurrent_streams(server):
    async def one(i: int, session: aiohttp.ClientSession) -> list:
        body = {"model": server.model, "messages": [{"role": "user", "content": f"Count to {i}."}],
                "max_tokens": 8, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        events = []
        async with session.post(server.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
            assert response.status == 200
            async for line in response.content:
                if line.startswith(b"data: "):
                    payload = line[6:].strip()
                    events.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
        return events

    async def all_of_them():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            return await asyncio.gather(*(one(i, session) for i in range(64)))

    results = run(all_of_them())
    assert len(results) == 64
    for events in results:
        assert events[-1] == "[DONE]"
        usage = events[-2]["usage"]
        assert events[-2]["choices"] == []
        assert 1 <= usage["completion_tokens"] <= 8
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        finish = [e["choices"][0]["finish_reason"] for e in events[:-2] if e["choices"][0]["finish_reason"]]
        assert finish in (["length"], ["stop"])


# -- OpenAPI ------------------------------------------------------------------------------------
def test_openapi_describes_all_routes(server):
    status, _, body = run(request("GET", server.url + "/openapi.json"))
    doc = json.loads(body)
    assert status == 200 and doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {"/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                                 "/v1/audio/transcriptions", "/v1/audio/speech", "/v1/models", "/v1/status",
                                 "/health", "/metrics", "/openapi.json", "/"}


def test_chat_page_served_open(server):
    status, headers, body = run(request("GET", server.url + "/"))
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'fetch("/v1/chat/completions"' in body and b"stream: true" in body


def test_chat_page_streams_an_answer_in_headless_chromium(server):
    """The page lists the models, sends a chat turn and shows the streamed answer; the browser's
    own fetch/ReadableStream parse the SSE, so this checks what a user sees."""
    from browser import Browser, chromium_path

    executable = chromium_path()
    if executable is None:
        pytest.skip("no chromium (.ci/run installs it)")

    async def chat() -> dict:
        browser = Browser(executable)
        try:
            ws = await browser.page()
            await browser.call(ws, "Page.enable")
            await browser.call(ws, "Page.navigate", url=server.url + "/")
            for _ in range(100):
                if await browser.evaluate(ws, "document.readyState === 'complete' && typeof loadModels === 'function'"):
                    break
                await asyncio.sleep(0.1)
            await browser.evaluate(ws, f"document.getElementById('key').value = '{API_KEY}'; loadModels()")
            models = await browser.evaluate(ws, "[...document.getElementById('model').options].map(o => o.value)")
            await browser.evaluate(ws, "form.q.value = 'What is the capital of France?'; form.requestSubmit(); true")
            seen = set()
            for _ in range(600):
                state = await browser.evaluate(ws, "({n: messages.length, text: (document.querySelector('.assistant')"
                                                   " || {}).textContent, error: !!document.querySelector('.error')})")
                seen.add(state["text"])
                if state["n"] == 2 or state["error"]:
                    break
                await asyncio.sleep(0.1)
            return {"models": models, "state": state, "partial_views": len(seen)}
        finally:
            await browser.close()

    result = run(chat())
    assert result["models"] == [server.model]
    assert not result["state"]["error"] and result["state"]["n"] == 2
    assert result["state"]["text"].strip()
    assert result["partial_views"] >= 3  # empty, partial, whole: the answer appeared piece by piece


def test_schemathesis_finds_no_server_errors(server):
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("schemathesis is not installed")
    result = subprocess.run(
        [exe, "run", server.url + "/openapi.json", "--checks", "not_a_server_error", "-H",
         f"Authorization: Bearer {API_KEY}", "--max-examples", "15", "--generation-deterministic",
         "--phases", "examples"],
        capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
