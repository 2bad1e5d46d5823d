"""Token sampling from float32 logits on the host, one request at a time.

Each sequence owns a ``SequenceSampler``: its own RNG (seeded from the request's ``seed`` when
given, so the same seed and prompt give the same tokens whatever else shares the batch) and its
own token counts for the penalties. Order of operations, as in vLLM: logit bias → repetition /
presence / frequency penalties → grammar mask → (greedy argmax) or temperature → top-k → min-p →
top-p → draw. Log-probabilities, when asked for, are those of the model's raw distribution.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ferrum.manifest import sample_row
from ferrum.types import SamplingParams, TokenLogprob
from runtime.grammar import apply_mask


def log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max()
    return shifted - np.log(np.exp(shifted).sum())


def draw(x: np.ndarray, row: tuple[float, float, float, float, float]) -> int:
    """One token from logits ``x`` for a sampling row (temperature, top_p, top_k, min_p, uniform):
    the contract of the GPU sampler (``compile/kernels/cuda/sampling.cuh``), in float64.
    Temperature 0 is greedy; top_k 0 and top_p 1 switch those filters off."""
    temperature, top_p, top_k, min_p, uniform = row
    if temperature == 0:
        return int(np.argmax(x))
    x = x.astype(np.float64) / temperature
    vocab = x.shape[0]
    k = int(top_k)
    if 0 < k < vocab:
        kth = np.partition(x, vocab - k)[vocab - k]
        x = np.where(x >= kth, x, -np.inf)
    probs = np.exp(x - x.max())
    probs /= probs.sum()
    if min_p:
        probs = np.where(probs >= min_p * probs.max(), probs, 0.0)
    if top_p < 1.0:
        candidates = np.flatnonzero(probs > 0)
        order = candidates[np.argsort(-probs[candidates], kind="stable")]
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, top_p * cumulative[-1])) + 1]
        trimmed = np.zeros_like(probs)
        trimmed[keep] = probs[keep]
        probs = trimmed
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, uniform * cdf[-1], side="right"), vocab - 1))


class SequenceSampler:
    """Samples the next token of one sequence."""

    def __init__(self, params: SamplingParams, prompt_ids: list[int], rng: np.random.Generator | None = None):
        self.params = params
        self.rng = rng if rng is not None else np.random.default_rng(params.seed)
        self.prompt_ids = set(prompt_ids)
        self.output_counts: Counter[int] = Counter()

    def fork(self, seed_offset: int) -> SequenceSampler:
        """A sibling for ``n`` > 1: same parameters and prompt, its own reproducible RNG stream."""
        seed = None if self.params.seed is None else self.params.seed + seed_offset
        rng = np.random.default_rng(seed) if seed is not None else np.random.default_rng(self.rng.integers(1 << 63))
        child = SequenceSampler(self.params, [], rng)
        child.prompt_ids = self.prompt_ids
        return child

    def _processed(self, logits: np.ndarray) -> np.ndarray:
        p = self.params
        needs_copy = p.logit_bias or p.repetition_penalty != 1.0 or p.presence_penalty or p.frequency_penalty
        if not needs_copy:
            return logits
        x = logits.astype(np.float32, copy=True)
        vocab = x.shape[0]
        for token, bias in p.logit_bias.items():
            if token < vocab:
                x[token] += bias
        if p.repetition_penalty != 1.0:
            seen = np.fromiter(self.prompt_ids | set(self.output_counts), dtype=np.int64)
            seen = seen[seen < vocab]
            vals = x[seen]
            x[seen] = np.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if self.output_counts and (p.presence_penalty or p.frequency_penalty):
            ids = np.fromiter(self.output_counts.keys(), dtype=np.int64)
            counts = np.fromiter(self.output_counts.values(), dtype=np.float32)
            x[ids] -= p.presence_penalty + p.frequency_penalty * counts
        return x

    def _draw(self, x: np.ndarray) -> int:
        return draw(x, self.device_row())

    @property
    def device_capable(self) -> bool:
        """Whether the GPU sampler can stand in for this one: no logit bias, no penalties (they
        need the token history) and no log-probabilities (they need the whole row on the host)."""
        p = self.params
        return not (p.logprobs or p.logit_bias or p.repetition_penalty != 1.0 or p.presence_penalty
                    or p.frequency_penalty)

    def device_row(self) -> tuple[float, float, float, float, float]:
        """(temperature, top_p, top_k, min_p, uniform) for ``draw`` or the GPU sampler, taking the
        uniform number from this sequence's generator (greedy takes none), so a seeded request
        consumes the same random stream whichever side samples it."""
        p = self.params
        if p.is_greedy:
            return sample_row(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, uniform=0.0)
        return sample_row(temperature=p.temperature, top_p=p.top_p, top_k=p.top_k or 0, min_p=p.min_p or 0.0,
                          uniform=self.rng.random())

    def record(self, token: int) -> None:
        """Count a token chosen elsewhere (the GPU sampler) for the penalties."""
        self.output_counts[token] += 1

    def sample(self, logits: np.ndarray, mask: np.ndarray | None = None) -> tuple[int, TokenLogprob | None]:
        """Choose the next token from one row of logits and record it for the penalties; with a
        grammar's bitmask ``mask``, only among the tokens it allows (after bias and penalties)."""
        x = self._processed(logits)
        if mask is not None:
            x = apply_mask(x, mask)
        token = int(np.argmax(x)) if self.params.is_greedy else self._draw(x)
        self.record(token)
        logprob = None
        if self.params.logprobs:
            lp = log_softmax(logits.astype(np.float64))
            top = []
            if self.params.top_logprobs:
                k = self.params.top_logprobs
                best = np.argpartition(-lp, k - 1)[:k]
                best = best[np.argsort(-lp[best], kind="stable")]
                top = [(int(t), float(lp[t])) for t in best]
            logprob = TokenLogprob(token, float(lp[token]), top)
        return token, logprob
