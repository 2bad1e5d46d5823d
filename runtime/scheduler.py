"""Continuous-batching scheduler: which sequences run each step, and with how many tokens.

Pure Python and deterministic: it imports nothing from TVM, so it is tested with a fake
executor. Each ``schedule()`` call plans one engine step:

1. Running sequences, highest priority and oldest first, each get up to their pending tokens
   (1 for a decoding sequence; a chunk of the prompt for one still prefilling) within the step's
   token budget (``max_num_batched_tokens``), so a long prompt is split over steps instead of
   stalling decodes. If the KV pages for a sequence's tokens are not free, prefix-cache entries
   are evicted (least recently used first), then running sequences are preempted by recompute,
   lowest priority and newest first: their KV is freed and they go back to the waiting queue
   with the tokens they already produced, to be prefilled again later.
2. Waiting sequences are admitted in order (no skipping, so none starves) while the batch has
   room (``max_num_seqs``), budget remains and their first chunk's pages are free. A new
   sequence whose prompt shares a prefix with a cached one forks it instead of recomputing.

Page accounting is ``PagedKVModel``, which mirrors TVM's cache exactly; every KV operation the
plan implies (add, fork, remove) is listed in the output, in order, for the engine to apply
before running the batch. Cancellation (``abort``) frees a sequence's pages in the next step.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

from runtime.kv_pages import PagedKVModel
from runtime.prefix_cache import PrefixCache


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One token sequence as the scheduler sees it (a request has ``n`` of them)."""

    seq_id: int
    request_id: str
    tokens: list[int]
    prompt_len: int
    priority: int = 0
    arrival: int = 0
    computed: int = 0
    status: SeqStatus = SeqStatus.WAITING
    preemptions: int = 0
    in_cache: bool = False

    @property
    def pending(self) -> int:
        """Tokens whose KV is not yet in the cache (the last sampled token counts)."""
        return len(self.tokens) - self.computed

    @property
    def prefilling(self) -> bool:
        return self.computed < self.prompt_len


@dataclass(frozen=True)
class KVOp:
    """A KV cache operation for the engine to apply: ``add``, ``fork`` (``parent`` at position
    ``pos``), ``remove``, or ``popn`` (drop the last ``pos`` tokens)."""

    kind: str
    seq_id: int
    parent: int | None = None
    pos: int = -1


@dataclass
class SchedulerOutput:
    ops: list[KVOp] = field(default_factory=list)
    batch: list[tuple[Sequence, int]] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.batch)

    @property
    def is_decode(self) -> bool:
        """Every sequence feeds exactly its last sampled token (batch_decode can run it)."""
        return all(n == 1 and seq.pending == 1 for seq, n in self.batch)


@dataclass
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    enable_prefix_caching: bool = True


class Scheduler:
    def __init__(self, config: SchedulerConfig, pages: PagedKVModel):
        self.config = config
        self.pages = pages
        self.prefix_cache = PrefixCache()
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self._ops: list[KVOp] = []
        self._arrivals = itertools.count()
        self.preemptions = 0

    # -- intake -------------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        seq.arrival = next(self._arrivals)
        seq.status = SeqStatus.WAITING
        self._enqueue(seq)

    def _enqueue(self, seq: Sequence) -> None:
        key = (-seq.priority, seq.arrival)
        index = next((i for i, w in enumerate(self.waiting) if (-w.priority, w.arrival) > key), len(self.waiting))
        self.waiting.insert(index, seq)

    def _release(self, seq: Sequence) -> None:
        if seq.in_cache:
            self.pages.remove(seq.seq_id)
            self._ops.append(KVOp("remove", seq.seq_id))
            seq.in_cache = False
        seq.computed = 0

    def abort(self, seq: Sequence) -> None:
        """Drop a sequence wherever it is; its pages are freed by the next step's ops."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._release(seq)
        seq.status = SeqStatus.FINISHED

    def finish(self, seq: Sequence) -> None:
        """A sequence completed: keep its KV as a prefix-cache entry, or free it."""
        self.running.remove(seq)
        seq.status = SeqStatus.FINISHED
        if self.config.enable_prefix_caching and seq.in_cache and seq.computed > 0:
            for redundant in self.prefix_cache.insert(seq.seq_id, seq.tokens[: seq.computed]):
                self.pages.remove(redundant)
                self._ops.append(KVOp("remove", redundant))
            seq.in_cache = False  # owned by the prefix cache now
        else:
            self._release(seq)

    def spawn(self, parent: Sequence, children: list[Sequence]) -> None:
        """Siblings of ``parent`` (``n`` > 1) sharing its prompt: forked from it where pages allow,
        queued to be prefilled otherwise."""
        for child in children:
            child.arrival = parent.arrival
            child.priority = parent.priority
            fits = len(self.running) < self.config.max_num_seqs
            if fits and parent.in_cache and self.pages.pages_to_fork(parent.seq_id, child.computed) <= self.pages.free_pages:
                self.pages.fork(parent.seq_id, child.seq_id, child.computed)
                self._ops.append(KVOp("fork", child.seq_id, parent.seq_id, child.computed))
                child.in_cache = True
                child.status = SeqStatus.RUNNING
                self.running.append(child)
            else:
                child.computed = 0
                child.status = SeqStatus.WAITING
                self._enqueue(child)

    # -- planning -----------------------------------------------------------------------------
    def evict_lru(self, keep: int | None = None) -> bool:
        """Evict the least recently used prefix-cache entry (not ``keep``); False if none."""
        victim = self.prefix_cache.lru(exclude=keep)
        if victim is None:
            return False
        self.prefix_cache.drop(victim)
        self.prefix_cache.evictions += 1
        self.pages.remove(victim)
        self._ops.append(KVOp("remove", victim))
        return True

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        self._release(seq)
        seq.status = SeqStatus.WAITING
        seq.preemptions += 1
        self.preemptions += 1
        out.preempted.append(seq)
        self._enqueue(seq)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        order = sorted(self.running, key=lambda s: (-s.priority, s.arrival))
        for seq in order:
            if budget == 0:
                break
            if seq.status is not SeqStatus.RUNNING:  # preempted earlier in this loop
                continue
            n = min(seq.pending, budget)
            while self.pages.pages_to_append(seq.seq_id, n) > self.pages.free_pages:
                if self.evict_lru():
                    continue
                victim = max(
                    (s for s in self.running if s not in (b for b, _ in out.batch)),
                    key=lambda s: (-s.priority, s.arrival),
                )
                self._preempt(victim, out)
                if victim is seq:
                    break
            if seq.status is not SeqStatus.RUNNING:
                continue
            self.pages.append(seq.seq_id, n)
            out.batch.append((seq, n))
            budget -= n
        if not out.preempted:
            self._admit(out, budget)
        out.ops, self._ops = self._ops, []
        return out

    def _admit(self, out: SchedulerOutput, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            parent, shared = None, 0
            if self.config.enable_prefix_caching:
                parent, shared = self.prefix_cache.lookup(seq.tokens)
            chunk = min(len(seq.tokens) - shared, budget)
            needed = self._admission_pages(parent, shared, chunk)
            while needed > self.pages.free_pages and self.evict_lru(keep=parent):
                pass
            if needed > self.pages.free_pages:
                return
            self.waiting.pop(0)
            if self.config.enable_prefix_caching:
                self.prefix_cache.record(parent, shared)
            if parent is not None:
                self.pages.fork(parent, seq.seq_id, shared)
                self._ops.append(KVOp("fork", seq.seq_id, parent, shared))
            else:
                self.pages.add(seq.seq_id)
                self._ops.append(KVOp("add", seq.seq_id))
            seq.in_cache = True
            seq.computed = shared
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            self.pages.append(seq.seq_id, chunk)
            out.batch.append((seq, chunk))
            budget -= chunk

    def _admission_pages(self, parent: int | None, shared: int, chunk: int) -> int:
        size = self.pages.page_size
        in_page = shared % size if parent is not None else 0
        fork_pages = 1 if in_page else 0
        room = size - in_page if in_page else 0
        return fork_pages + max(0, -(-(chunk - room) // size))

    # -- views ----------------------------------------------------------------------------------
    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def commit(self, seq: Sequence, fed: int) -> None:
        """The engine ran ``fed`` tokens of ``seq``: their KV is now in the cache."""
        seq.computed += fed

    def take_ops(self) -> list[KVOp]:
        """KV operations decided outside ``schedule()`` (finish, abort, rollback) not yet applied."""
        ops, self._ops = self._ops, []
        return ops

    def rollback(self, seq: Sequence, n: int) -> None:
        """Drop the last ``n`` tokens of ``seq``'s KV (rejected speculative tokens)."""
        self.pages.popn(seq.seq_id, n)
        self._ops.append(KVOp("popn", seq.seq_id, pos=n))
