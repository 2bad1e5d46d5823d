"""A reliability load against any running ``ferrum serve`` (shared by ``bench/soak.py`` and ``tests/test_reliability.py``).

Many concurrent streaming chat clients through the official ``openai`` client, a share of them
hanging up mid-stream; bad requests interleaved, each of which must be a 4xx with an OpenAI error
body; ``/metrics`` and ``/v1/status`` scraped in a tight loop throughout. Afterwards the server
must have recovered: nothing running or waiting, every KV page reclaimable (a prompt filling ~90 %
of the cache still runs), ``/health`` 200. ``openai`` is a client-side dependency (the test extra),
imported only when a soak runs.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import aiohttp

from runtime.stats import summarize

# bad requests sent between the streams: (name, path, body); each must come back as a 4xx error body
BAD_REQUESTS: tuple[tuple[str, str, object], ...] = (
    ("n_too_large", "/v1/chat/completions", {"n": 100000}),
    ("negative_temperature", "/v1/chat/completions", {"temperature": -1}),
    ("zero_max_tokens", "/v1/chat/completions", {"max_tokens": 0}),
    ("context_overflow", "/v1/chat/completions", {"max_tokens": 10**9}),
    ("messages_not_a_list", "/v1/chat/completions", {"messages": "hello"}),
    ("empty_messages", "/v1/chat/completions", {"messages": []}),
    ("top_logprobs_out_of_range", "/v1/chat/completions", {"logprobs": True, "top_logprobs": 99}),
    ("unknown_model", "/v1/chat/completions", {"model": "no-such-model"}),
    ("malformed_json", "/v1/chat/completions", b"{not json"),
    ("prompt_missing", "/v1/completions", {"prompt": None}),
)
SCRAPED = ("/metrics", "/v1/status")


@dataclass
class SoakConfig:
    streams: int = 256
    hangup_share: float = 0.25  # of the streams, read a few chunks and then close the connection
    bad_every: int = 8  # one bad request per this many streams
    max_tokens: int = 32
    seed: int = 0
    settle_s: float = 60.0  # how long the server may take to show nothing running after the load
    kv_cache_tokens: int = 4096  # the server's KV cache (``--kv-cache-tokens``): the recovery prompt fills 90 %


@dataclass
class SoakReport:
    streams: int
    done: int = 0
    cancelled: int = 0  # streams this client hung up on
    failed: int = 0  # streams that ended in an error
    client_errors: dict[str, int] = field(default_factory=dict)  # bad requests answered 4xx, by kind
    wrong_answers: list[str] = field(default_factory=list)  # bad requests not answered with a 4xx error body
    server_errors: int = 0  # any 5xx, from streams, bad requests or scrapes
    scrapes: dict[str, int] = field(default_factory=dict)  # "<path> <status>" → count
    p50_latency_s: float = 0.0
    p99_latency_s: float = 0.0
    wall_s: float = 0.0
    preempted: int = 0  # sequences the server preempted (its KV cache was too small for the load)
    left_running: int = -1
    left_waiting: int = -1
    big_prompt_tokens: int = 0
    big_prompt_ok: bool = False
    health_status: int = 0

    @property
    def passed(self) -> bool:
        scrapes_ok = all(key.endswith(" 200") for key in self.scrapes)
        return (self.server_errors == 0 and not self.wrong_answers and self.failed == 0 and scrapes_ok
                and self.left_running == 0 and self.left_waiting == 0 and self.big_prompt_ok
                and self.health_status == 200)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


class _Soak:
    def __init__(self, url: str, model: str, api_key: str | None, config: SoakConfig):
        import openai

        self.url, self.model, self.config = url.rstrip("/"), model, config
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=api_key or "none", max_retries=0,
                                         timeout=600)
        self.report = SoakReport(streams=config.streams)
        self.latencies: list[float] = []
        self.scrapes: Counter[str] = Counter()
        self.running = True

    async def stream(self, i: int, hang_up: bool) -> None:
        import openai

        started = time.monotonic()
        messages = [{"role": "user", "content": f"Request {i}: write a short line about the number {i}."}]
        try:
            stream = await self.client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=self.config.max_tokens, temperature=0.8,
                seed=i, stream=True)
            got = 0
            async for _ in stream:
                got += 1
                if hang_up and got >= 2:
                    await stream.close()
                    self.report.cancelled += 1
                    return
            self.report.done += 1
            self.latencies.append(time.monotonic() - started)
        except openai.APIStatusError as exc:
            self.report.failed += 1
            self.report.server_errors += exc.status_code >= 500
        except openai.APIError:
            self.report.failed += 1

    async def bad(self, session: aiohttp.ClientSession, name: str, path: str, body: object) -> None:
        if isinstance(body, bytes):
            kwargs = {"data": body, "headers": {**self.headers, "Content-Type": "application/json"}}
        else:
            payload = {"model": self.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            if path == "/v1/completions":
                payload = {"model": self.model, "prompt": "hi", "max_tokens": 4}
            kwargs = {"json": {**payload, **body}, "headers": self.headers}
        async with session.post(self.url + path, **kwargs) as response:
            raw = await response.read()
        if response.status >= 500:
            self.report.server_errors += 1
        try:
            error = json.loads(raw)["error"]
            shaped = isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error)
        except (ValueError, KeyError, TypeError):
            shaped = False
        if 400 <= response.status < 500 and shaped:
            self.report.client_errors[name] = self.report.client_errors.get(name, 0) + 1
        else:
            self.report.wrong_answers.append(f"{name}: HTTP {response.status} {raw[:200]!r}")

    async def scrape(self, session: aiohttp.ClientSession) -> None:
        while self.running:
            for path in SCRAPED:
                async with session.get(self.url + path, headers=self.headers) as response:
                    await response.read()
                self.scrapes[f"{path} {response.status}"] += 1
                self.report.server_errors += response.status >= 500
            await asyncio.sleep(0)

    async def status(self, session: aiohttp.ClientSession) -> dict:
        async with session.get(self.url + "/v1/status", headers=self.headers) as response:
            return (await response.json())["models"][self.model]

    async def recovered(self, session: aiohttp.ClientSession) -> None:
        """Nothing left running or waiting; then a prompt of ~90 % of the KV cache still runs."""
        deadline = time.monotonic() + self.config.settle_s
        while True:
            state = await self.status(session)
            running, waiting = state["status"]["active_requests"], state["status"]["queued_requests"]
            if (running == waiting == 0) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        self.report.left_running, self.report.left_waiting = running, waiting
        self.report.preempted = (state.get("scheduler") or {}).get("preempted_requests", 0)
        tokens = int(self.config.kv_cache_tokens * 0.9)
        self.report.big_prompt_tokens = tokens
        body = {"model": self.model, "prompt": [random.Random(self.config.seed).randrange(100, 1000)] * tokens,
                "max_tokens": 4, "temperature": 0}
        async with session.post(self.url + "/v1/completions", json=body, headers=self.headers) as response:
            answer = await response.json()
        self.report.big_prompt_ok = response.status == 200 and answer["usage"]["prompt_tokens"] == tokens
        async with session.get(self.url + "/health") as response:
            self.report.health_status = response.status

    async def run(self) -> SoakReport:
        cfg = self.config
        rng = random.Random(cfg.seed)
        hangups = set(rng.sample(range(cfg.streams), int(cfg.streams * cfg.hangup_share)))
        started = time.monotonic()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            scraper = asyncio.create_task(self.scrape(session))
            jobs = []
            for i in range(cfg.streams):
                jobs.append(self.stream(i, i in hangups))
                if i % cfg.bad_every == 0:
                    jobs.append(self.bad(session, *BAD_REQUESTS[(i // cfg.bad_every) % len(BAD_REQUESTS)]))
            await asyncio.gather(*jobs)
            self.running = False
            await scraper
            self.report.wall_s = time.monotonic() - started
            await self.recovered(session)
        await self.client.close()
        summary = summarize(self.latencies)
        self.report.p50_latency_s, self.report.p99_latency_s = summary.p50, summary.p99
        self.report.scrapes = dict(self.scrapes)
        return self.report


async def soak(url: str, model: str, api_key: str | None = None, config: SoakConfig | None = None) -> SoakReport:
    """Run the load against ``url`` serving ``model`` and report what happened."""
    return await _Soak(url, model, api_key, config or SoakConfig()).run()
