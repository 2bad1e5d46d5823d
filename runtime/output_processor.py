"""What happens to a step's results: sampled tokens appended, streamed, stopped; ``n`` > 1
siblings started; prompt-lookup drafts proposed and resolved; requests ended exactly once.

Runs on the engine's loop thread only (it owns the request table and the sequence → request
map); the loop hands it each sequence's logits rows or device-sampled token after a forward.
Scheduling decisions stay in ``runtime/scheduler.py``; this module only tells the scheduler
that a sequence finished, was aborted or spawned siblings.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

import numpy as np

from ferrum.errors import FerrumError, InvalidRequestError
from ferrum.manifest import IGNORED_SAMPLE_ROW
from ferrum.types import FinishReason, StreamChunk
from runtime.engine_requests import END_OF_STREAM, EngineRequest
from runtime.grammar import GrammarCompiler, PendingMasks
from runtime.scheduler import Scheduler, SeqStatus, Sequence
from runtime.speculative import accept_greedy, propose_ngram
from runtime.telemetry import EngineTelemetry

DEFAULT_NGRAM = 3  # prompt-lookup n-gram length when the speculation config names none
log = logging.getLogger("ferrum.engine")


class OutputProcessor:
    """The request table and everything that turns model outputs into stream chunks.

    ``on_request_end`` runs when a request ends, after its sequences are released and before its
    final event: the engine applies the freed KV pages and publishes its status there, so a caller
    that saw the end finds the engine as it left it."""

    def __init__(self, scheduler: Scheduler, telemetry: EngineTelemetry, max_model_len: int,
                 on_request_end: Callable[[], None]):
        self.scheduler = scheduler  # replaced by the engine when it rebuilds its KV cache
        self.telemetry = telemetry
        self.max_model_len = max_model_len
        self._on_request_end = on_request_end
        self.requests: dict[str, EngineRequest] = {}
        self._owner: dict[int, tuple[EngineRequest, int]] = {}
        self._drafts: dict[int, int] = {}  # seq id → draft tokens appended to it this step
        self._seq_ids = itertools.count()
        self._token_rids: list[str] = []  # request of each token delivered since telemetry last heard
        self.draft_tokens = {"proposed": 0, "accepted": 0}  # prompt-lookup speculation, all requests

    # -- intake -----------------------------------------------------------------------------------
    def admit(self, state: EngineRequest) -> None:
        """Queue the request's first sequence (its prompt); siblings follow its first token."""
        if state.done:
            return
        seq = Sequence(next(self._seq_ids), state.rid, list(state.prompt_ids), len(state.prompt_ids),
                       priority=int(state.request.priority))
        state.seqs.append(seq)
        self._owner[seq.seq_id] = (state, 0)
        self.requests[state.rid] = state
        self.scheduler.add(seq)

    def owner(self, seq: Sequence) -> EngineRequest:
        return self._owner[seq.seq_id][0]

    # -- speculation ------------------------------------------------------------------------------
    def propose_drafts(self) -> None:
        """Append prompt-lookup drafts to decoding sequences of speculative requests."""
        for seq in self.scheduler.running:
            state, index = self._owner[seq.seq_id]
            spec = state.speculation
            if spec is None or seq.prefilling or seq.pending != 1:
                continue
            room = min(state.request.sampling_params.max_tokens - len(state.outputs[index].tokens) - 1,
                       self.max_model_len - len(seq.tokens) - 1)
            ngram = int((spec.draft_model_config or {}).get("ngram", DEFAULT_NGRAM))
            draft = propose_ngram(seq.tokens, ngram, min(spec.speculation_depth, room)) if room > 0 else []
            if draft:
                seq.tokens.extend(draft)
                self._drafts[seq.seq_id] = len(draft)
                state.drafted += len(draft)

    def has_drafts(self, batch: list[tuple[Sequence, int]]) -> bool:
        drafts = self._drafts
        return bool(drafts) and any(seq.seq_id in drafts for seq, _ in batch)

    def undraft(self, seq: Sequence) -> None:
        """A preempted sequence drops the drafts it was carrying."""
        k = self._drafts.pop(seq.seq_id, 0)
        if k:
            del seq.tokens[-k:]

    def _resolve_draft(self, seq: Sequence, fed: int, rows: np.ndarray) -> None:
        k = self._drafts.pop(seq.seq_id)
        draft = seq.tokens[len(seq.tokens) - k:]
        fed_drafts = fed - 1
        accepted, bonus = accept_greedy(draft[:fed_drafts], rows[: fed_drafts + 1])
        del seq.tokens[len(seq.tokens) - k + accepted:]
        rejected = fed_drafts - accepted
        if rejected:
            seq.computed -= rejected
            self.scheduler.rollback(seq, rejected)
        state, index = self._owner[seq.seq_id]
        state.accepted += accepted
        output = state.outputs[index]
        for token in draft[:accepted]:
            self._deliver(state, seq, output.append(token))
            if output.finished:
                return
        seq.tokens.append(bonus)
        self._deliver(state, seq, output.append(bonus))

    # -- device sampling --------------------------------------------------------------------------
    def samples_on_device(self, batch: list[tuple[Sequence, int]], masked: bool = False) -> bool:
        """Whether every row that samples this step can be sampled on the device: not when one
        needs logit bias, penalties or logprobs, or is the first token of an ``n`` > 1 request
        (its siblings start from the same logits row and mask), or is constrained by a grammar
        while the device sampler takes no bitmask (``masked`` False: an artifact built before it
        did; such steps bring the logits back and apply the mask on the host)."""
        for seq, n in batch:
            if seq.pending != n:
                continue  # a prompt chunk that does not finish the prompt: nothing is sampled
            state, index = self._owner[seq.seq_id]
            if (not state.samplers[index].device_capable or (not state.spawned and index == 0)
                    or (not masked and state.matchers[index] is not None)):
                return False
        return True

    # -- grammars ---------------------------------------------------------------------------------
    def grammar_masks(self, batch: list[tuple[Sequence, int]], grammars: GrammarCompiler) -> PendingMasks | None:
        """Start computing the bitmasks of this step's constrained rows (they depend only on the
        tokens already accepted, so the forward can run meanwhile); None when no row has a grammar."""
        matchers = []
        for i, (seq, n) in enumerate(batch):
            if seq.pending == n and seq.seq_id not in self._drafts:
                state, index = self._owner[seq.seq_id]
                if state.matchers[index] is not None:
                    matchers.append((state.matchers[index], i))
        return grammars.masks.start(matchers, len(batch)) if matchers else None

    @staticmethod
    def _advance_grammar(state: EngineRequest, index: int, token: int) -> bool:
        """Feed ``token`` to the completion's matcher; whether the grammar now ends the output."""
        matcher = state.matchers[index]
        if matcher is None:
            return False
        if not matcher.consume_token(token):  # cannot happen for a token sampled under its mask
            log.warning("request %s: the grammar refused token %d: %s", state.rid, token, matcher.get_error()[:200])
            return True
        return matcher.is_stopped()

    def device_rows(self, batch: list[tuple[Sequence, int]]) -> np.ndarray:
        """The sampler's parameter row per batch entry (rows that sample nothing are ignored).
        Greedy rows are the constant greedy row (they draw no random number), so only sampling
        requests call into their sampler."""
        rows = np.empty((len(batch), len(IGNORED_SAMPLE_ROW)), dtype=np.float32)
        rows[:] = IGNORED_SAMPLE_ROW
        owner = self._owner
        for i, (seq, n) in enumerate(batch):
            if seq.pending == n:
                state, index = owner[seq.seq_id]
                sampler = state.samplers[index]
                if not sampler.params.is_greedy:
                    rows[i] = sampler.device_row()
        return rows

    # -- results of a step ------------------------------------------------------------------------
    def process(self, batch: list[tuple[Sequence, int]], segments: list[np.ndarray | None],
                tokens: np.ndarray | None, masks: PendingMasks | None = None) -> None:
        """Commit what the forward computed and act on each sequence that finished its tokens:
        ``segments`` are logits rows per batch entry (host sampling, drafts), ``tokens`` the
        device-sampled ids, ``masks`` the grammar bitmasks ``grammar_masks`` started."""
        grid = masks.result() if masks is not None else None
        ids = tokens.tolist() if tokens is not None else None  # Python ints, converted once
        commit, owner, drafts = self.scheduler.commit, self._owner, self._drafts
        for i, ((seq, n), rows) in enumerate(zip(batch, segments)):
            commit(seq, n)
            if seq.status is SeqStatus.FINISHED:  # its request ended earlier in this step
                continue
            if drafts and seq.seq_id in drafts:
                self._resolve_draft(seq, n, rows)
            elif seq.pending == 0:
                state, index = owner[seq.seq_id]
                mask = None
                if ids is not None:  # device-sampled, under the grammar's mask where the row has one
                    token, logprob = ids[i], None
                    state.samplers[index].record(token)
                else:
                    mask = grid[i] if grid is not None and state.matchers[index] is not None else None
                    token, logprob = state.samplers[index].sample(rows[-1], mask)
                self._append(state, index, seq, token, logprob, None if rows is None else rows[-1], mask)
        self._report_tokens()

    def _append(self, state: EngineRequest, index: int, seq: Sequence, token: int, logprob,
                row: np.ndarray | None = None, mask: np.ndarray | None = None) -> None:
        """Append a sampled token to ``seq`` (completion ``index`` of ``state``) and stream it; the
        first token of an ``n`` > 1 request also starts its siblings from the same ``row`` of logits
        (and the same grammar ``mask``)."""
        seq.tokens.append(token)
        first = not state.spawned and index == 0
        done = self._advance_grammar(state, index, token)
        self._deliver(state, seq, state.outputs[index].append(token, logprob, done))
        if first and not state.done:
            state.spawned = True
            self._spawn_siblings(state, seq, row, mask)

    def _spawn_siblings(self, state: EngineRequest, parent: Sequence, row: np.ndarray,
                        mask: np.ndarray | None) -> None:
        """``n`` > 1: the other completions start from the same prompt logits, each with its own
        sampler (and matcher, in the same start state as the parent's), and share the prompt's
        pages through forks."""
        children = []
        for index in range(1, len(state.outputs)):
            token, logprob = state.samplers[index].sample(row, mask)
            child = Sequence(next(self._seq_ids), state.rid, parent.tokens[: parent.prompt_len] + [token],
                             parent.prompt_len, computed=parent.prompt_len)
            state.seqs.append(child)
            self._owner[child.seq_id] = (state, index)
            chunk = state.outputs[index].append(token, logprob, self._advance_grammar(state, index, token))
            if state.outputs[index].finished:
                child.status = SeqStatus.FINISHED
            else:
                children.append(child)
            self._deliver(state, child, chunk, release=False)
        if parent.status is SeqStatus.FINISHED:  # the parent already ended: children start fresh
            for child in children:
                child.computed = 0
                self.scheduler.add(child)
        else:
            self.scheduler.spawn(parent, children)
        if state.finished and not state.done:
            self.end_request(state, "completed")

    def _deliver(self, state: EngineRequest, seq: Sequence, chunk: StreamChunk, release: bool = True) -> None:
        self._token_rids.append(state.rid)
        state.emit(chunk)
        if chunk.finish_reason is None:  # this completion goes on, so its request does too
            return
        if release and seq.status is SeqStatus.RUNNING:
            self.scheduler.finish(seq)
        if state.finished and state.spawned and not state.done:
            self.end_request(state, "completed")

    def _report_tokens(self) -> None:
        """Tell telemetry of the tokens delivered since it last heard (one call per step; also
        before a request's end, which closes its timing)."""
        if self._token_rids:
            rids, self._token_rids = self._token_rids, []
            self.telemetry.on_each_token(rids)

    # -- ending requests --------------------------------------------------------------------------
    def end_request(self, state: EngineRequest, status: str, error: BaseException | None = None) -> None:
        """End ``state`` once: release its sequences, close its stream (a final chunk per open
        completion when cancelled, the error when failed) and report it to telemetry."""
        self._report_tokens()
        for seq in state.seqs:
            if seq.status is not SeqStatus.FINISHED:
                self.scheduler.abort(seq)
            self._owner.pop(seq.seq_id, None)
            self._drafts.pop(seq.seq_id, None)
        state.done = True
        self.requests.pop(state.rid, None)
        self.draft_tokens["proposed"] += state.drafted
        self.draft_tokens["accepted"] += state.accepted
        self._on_request_end()
        if status == "cancelled":
            for output in state.outputs:
                if not output.finished:
                    state.emit(output.abort(FinishReason.Cancelled))
        if error is not None:
            state.emit(error)
        state.emit(END_OF_STREAM)
        self.telemetry.on_finish(state.rid, status, len(state.prompt_ids), state.produced,
                                 sum(len(o.text) for o in state.outputs), error)

    def reject_unfittable(self, cache_tokens: int) -> None:
        """Nothing could run: the head of the queue needs more KV pages than the whole cache has
        (requests are checked on submission; this catches a sequence that grew by preemption)."""
        if self.scheduler.running or not self.scheduler.waiting:
            return
        seq = self.scheduler.waiting[0]
        self.end_request(self.owner(seq), "failed", InvalidRequestError(
            f"the request needs {len(seq.tokens)} tokens of KV cache but the cache holds {cache_tokens}; "
            "lower max_tokens or start the engine with a larger cache"))

    def fail_all(self, exc: Exception) -> None:
        error = exc if isinstance(exc, FerrumError) else FerrumError(f"internal engine error: {exc}")
        for state in list(self.requests.values()):
            self.end_request(state, "failed", error)
        self._drafts.clear()

    def cancel_all(self) -> None:
        for state in list(self.requests.values()):
            self.end_request(state, "cancelled")
