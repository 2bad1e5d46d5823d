"""Hypothesis state machine over the scheduler, driven by a fake executor (no TVM).

The fake model's next token is a fixed function of all previous tokens, so a request's output
does not depend on how it was batched, chunked, preempted or forked from the prefix cache: any
lost, duplicated or misplaced token changes it. After every rule the invariants are checked.

Pages are checked two ways. The KV operations the scheduler lists are replayed, as the engine
replays them into TVM, on a second page model, which must agree page for page. And every live
sequence (running, or a prefix-cache entry) keeps the pages it had (appending may add some,
never swap or free one), none of them free, and a page two sequences share holds the same tokens
for both: a page freed or handed over while referenced would break one of these.
"""

from __future__ import annotations

import itertools

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from hypothesis_profiles import costly

from runtime.kv_pages import PagedKVModel
from runtime.scheduler import KVOp, Scheduler, SchedulerConfig, SeqStatus, Sequence

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


def page_table(pages: PagedKVModel, seq_id: int) -> list[int]:
    """The page ids holding ``seq_id``'s positions, in order (its block chain, root first; only
    the last block of a chain may end mid-page)."""
    chain, block_id = [], pages._seqs[seq_id].last_block
    while block_id != -1:
        chain.append(pages._blocks[block_id])
        block_id = chain[-1].parent
    return [page for block in reversed(chain) for page in block.pages]


def replay(model: PagedKVModel, ops: list[KVOp]) -> None:
    """Apply KV operations as the engine applies them to TVM's cache."""
    for op in ops:
        if op.kind == "add":
            model.add(op.seq_id)
        elif op.kind == "fork":
            model.fork(op.parent, op.seq_id, op.pos)
        elif op.kind == "remove":
            model.remove(op.seq_id)
        else:
            model.popn(op.seq_id, op.pos)


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
        self.mirror = PagedKVModel(total_pages, page_size)  # what the engine's replay of the ops builds
        self.tables: dict[tuple[int, int], list[int]] = {}  # (seq id, preemptions) -> its pages last check
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
        replay(self.mirror, out.ops)
        for seq, n in out.batch:
            self.mirror.append(seq.seq_id, n)
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
        replay(self.mirror, self.sched.take_ops())
        assert self.mirror.free_pages == self.pages.free_pages
        assert sorted(self.mirror.sequences()) == sorted(self.pages.sequences())
        for seq_id in self.pages.sequences():
            assert self.mirror.length(seq_id) == self.pages.length(seq_id)

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
    def referenced_pages_stay_put(self):
        if not hasattr(self, "pages"):
            return
        ps, free = self.pages.page_size, set(self.pages._free_pages)
        held = {(s.seq_id, s.preemptions): s.tokens[: s.computed] for s in self.sched.running}
        held |= {(sid, self.requests[sid]["seq"].preemptions): list(toks)
                 for sid, toks in self.sched.prefix_cache.entries.items()}
        tables, owner = {}, {}
        for key, toks in held.items():
            assert self.pages.length(key[0]) == len(toks)
            table = tables[key] = page_table(self.pages, key[0])
            assert len(table) == -(-len(toks) // ps), "pages do not cover the sequence"
            assert not free.intersection(table), "a referenced page is free"
            old = self.tables.get(key)
            assert old is None or table[: len(old)] == old, "a live sequence's page was swapped or freed"
            for j, page in enumerate(table):
                if page in owner:  # shared: same position, same tokens in both
                    other_key, other_j = owner[page]
                    assert other_j == j, "a page is shared at different positions"
                    a, b = toks[j * ps: (j + 1) * ps], held[other_key][j * ps: (j + 1) * ps]
                    assert len(a) == len(b) == ps and a == b, "a shared page holds different tokens"
                owner[page] = (key, j)
        self.tables = tables

    @invariant()
    def no_starvation(self):
        """Admission only stops for a reason: the batch is full, or the head's pages are not free."""
        if not hasattr(self, "sched") or not self.sched.waiting:
            return
        for req in self.requests.values():
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
        for req in self.requests.values():
            assert req["done"], "a request never ended"
            if not req["cancelled"]:
                assert req["out"] == reference_output(req["prompt"], req["max"])
        while self.sched.evict_lru():
            pass
        replay(self.mirror, self.sched.take_ops())
        assert self.pages.free_pages == self.mirror.free_pages == self.pages.total_pages


TestScheduler = SchedulerMachine.TestCase
TestScheduler.settings = costly(ci=150, deep=2_000, ci_steps=40)
