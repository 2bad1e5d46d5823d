"""Hypothesis state machine over the scheduler, driven by a fake executor (no TVM).

The fake model's next token is a fixed function of all previous tokens, so a request's output
does not depend on how it was batched, chunked, preempted or forked from the prefix cache: any
lost, duplicated or misplaced token changes it. After every rule the invariants are checked.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from runtime.kv_pages import PagedKVModel
from runtime.scheduler import Scheduler, SchedulerConfig, Sequence, SeqStatus

VOCAB, EOS = 97, 0


def next_token(tokens: list[int]) -> int:
    return (sum(t * (i + 7) for i, t in enumerate(tokens[-8:])) + 3 * len(tokens)) % VOCAB


def reference_output(prompt: list[int], max_tokens: int) -> list[int]:
    tokens, out = list(prompt), []
    while len(out) < max_tokens:
        t = next_token(tokens)
        out.append(t)
        tokens.append(t)
        if t == EOS:
            break
    return out


class SchedulerMachine(RuleBasedStateMachine):
    @initialize(
        page_size=st.sampled_from([4, 8, 16]),
        total_pages=st.integers(6, 40),
        max_num_seqs=st.integers(1, 6),
        budget=st.integers(4, 64),
        prefix=st.booleans(),
    )
    def setup(self, page_size, total_pages, max_num_seqs, budget, prefix):
        self.pages = PagedKVModel(total_pages, page_size)
        self.sched = Scheduler(SchedulerConfig(max_num_seqs, budget, prefix), self.pages)
        self.ids = itertools.count()
        self.requests: dict[int, dict] = {}
        self.ended: list[int] = []
        self.steps = 0
        self.capacity = total_pages * page_size

    @rule(prompt=st.lists(st.integers(1, VOCAB - 1), min_size=1, max_size=30),
          shared=st.booleans(), max_tokens=st.integers(1, 12), priority=st.integers(0, 2))
    def submit(self, prompt, shared, max_tokens, priority):
        if shared and self.requests:  # reuse an earlier prompt's head to exercise the prefix cache
            first = next(iter(self.requests.values()))["prompt"]
            prompt = first[: len(first) // 2 + 1] + prompt
        if len(prompt) + max_tokens > self.capacity:
            return  # the engine rejects these at submission (context check)
        seq = Sequence(next(self.ids), "r", list(prompt), len(prompt), priority=priority)
        self.requests[seq.seq_id] = {"seq": seq, "prompt": list(prompt), "max": max_tokens, "out": [],
                                     "done": False, "cancelled": False, "waited": 0}
        self.sched.add(seq)

    @precondition(lambda self: any(not r["done"] for r in self.requests.values()))
    @rule(data=st.data())
    def cancel(self, data):
        live = [k for k, r in self.requests.items() if not r["done"]]
        key = data.draw(st.sampled_from(live))
        self.sched.abort(self.requests[key]["seq"])
        self._end(key, cancelled=True)

    def _end(self, key: int, cancelled: bool = False) -> None:
        req = self.requests[key]
        assert not req["done"], "a request ended twice"
        req["done"], req["cancelled"] = True, cancelled
        self.ended.append(key)

    @rule()
    def step(self):
        out = self.sched.schedule()
        self.steps += 1
        assert out.num_tokens <= self.sched.config.max_num_batched_tokens
        assert len(out.batch) <= self.sched.config.max_num_seqs
        assert len(self.sched.running) <= self.sched.config.max_num_seqs
        assert len({s.seq_id for s, _ in out.batch}) == len(out.batch)
        for seq, n in out.batch:
            assert n >= 1 and seq.computed + n <= len(seq.tokens)
            self.sched.commit(seq, n)
            assert self.pages.length(seq.seq_id) == seq.computed
            if seq.pending == 0:
                req = self.requests[seq.seq_id]
                token = next_token(seq.tokens)
                seq.tokens.append(token)
                req["out"].append(token)
                if token == EOS or len(req["out"]) >= req["max"]:
                    self.sched.finish(seq)
                    self._end(seq.seq_id)
        if not out.batch and not out.preempted and self.sched.waiting and not self.sched.running:
            head = self.sched.waiting[0]  # cannot fit even in an empty cache: the engine rejects it
            assert -(-len(head.tokens) // self.pages.page_size) > self.pages.free_pages or len(head.tokens) > self.capacity
            self.sched.abort(head)
            self._end(head.seq_id, cancelled=True)
        self.sched.take_ops()

    @invariant()
    def pages_balance(self):
        if not hasattr(self, "pages"):
            return
        owned = self.pages.owned_pages()
        assert len(owned) == len(set(owned)), "a page is owned twice"
        assert len(owned) + self.pages.free_pages == self.pages.total_pages
        live = {s.seq_id for s in self.sched.running} | set(self.sched.prefix_cache.entries)
        assert set(self.pages.sequences()) == live

    @invariant()
    def no_starvation(self):
        """Admission only stops for a reason: the batch is full, or the head's pages are not free."""
        if not hasattr(self, "sched") or not self.sched.waiting:
            return
        for key, req in self.requests.items():
            if req["seq"].status is SeqStatus.WAITING and not req["done"]:
                req["waited"] += 1
                assert req["waited"] < 400, "a request waited unboundedly"

    def teardown(self):
        if not hasattr(self, "sched"):
            return
        for _ in range(2000):
            if not (self.sched.running or self.sched.waiting):
                break
            self.step()
        assert not self.sched.running and not self.sched.waiting
        for key, req in self.requests.items():
            assert req["done"], "a request never ended"
            if not req["cancelled"]:
                assert req["out"] == reference_output(req["prompt"], req["max"])
        while self.sched.evict_lru():
            pass
        self.sched.take_ops()
        assert self.pages.free_pages == self.pages.total_pages


TestScheduler = SchedulerMachine.TestCase
TestScheduler.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                  suppress_health_check=[HealthCheck.too_slow])
