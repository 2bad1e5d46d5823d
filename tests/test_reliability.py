"""Reliability under load on the real SmolLM2 server: concurrent streams through the openai client
with hang-ups, bad inputs interleaved, a KV cache small enough to preempt, and ``/metrics`` plus
``/v1/status`` scraped throughout (only 200s: status reads never race the engine loop). Afterwards
the server must have recovered. ``bench/soak.py`` runs the same load at 256 streams."""

from __future__ import annotations

import asyncio
import json

import pytest
from server_harness import ServeProcess, request, run

from checks.soak import BAD_REQUESTS, SoakConfig, soak

KV_TOKENS = 1024


@pytest.fixture(scope="module")
def server(smollm2_artifact):
    pytest.importorskip("openai")
    proc = ServeProcess([str(smollm2_artifact)], "--kv-cache-tokens", str(KV_TOKENS), "--max-model-len",
                        str(KV_TOKENS), "--max-num-seqs", "32")
    proc.model = smollm2_artifact.name
    yield proc
    assert proc.terminate() == 0


def test_load_with_hangups_bad_inputs_and_scrapes(server):
    config = SoakConfig(streams=40, max_tokens=24, hangup_share=0.25, bad_every=2, kv_cache_tokens=KV_TOKENS)
    report = run(soak(server.url, server.model, config=config))
    assert report.server_errors == 0 and not report.wrong_answers, report
    assert set(report.client_errors) == {name for name, _, _ in BAD_REQUESTS}
    assert report.cancelled == 10 and report.done == 30 and report.failed == 0
    assert {key.split()[1] for key in report.scrapes} == {"200"}
    assert sum(report.scrapes.values()) > 2 * len(report.client_errors)
    assert report.left_running == report.left_waiting == 0
    assert report.big_prompt_ok and report.health_status == 200
    status, _, body = run(request("GET", server.url + "/v1/status"))
    scheduler = json.loads(body)["models"][server.model]["scheduler"]
    assert status == 200 and report.preempted > 0  # the cache was small enough to preempt
    assert scheduler["cancelled_requests"] >= 10


def test_n_100000_is_refused_and_the_server_keeps_answering(server):
    async def both():
        body = {"model": server.model, "messages": [{"role": "user", "content": "hi"}], "n": 100000}
        refused = await request("POST", server.url + "/v1/chat/completions", json_body=body)
        ok = await request("POST", server.url + "/v1/chat/completions", json_body={**body, "n": 1, "max_tokens": 4})
        return refused, ok

    (status, _, body), (ok_status, _, ok_body) = asyncio.run(both())
    assert status == 400 and json.loads(body)["error"]["param"] == "n"
    assert ok_status == 200 and json.loads(ok_body)["usage"]["completion_tokens"] >= 1
