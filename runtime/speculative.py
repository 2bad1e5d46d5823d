"""Prompt-lookup (n-gram) drafting and greedy verification for speculative decoding.

The draft for a sequence is what followed the most recent earlier occurrence of its last ``n``
tokens (text that repeats the prompt — quotes, code, lists — is guessed well). The engine feeds
the last sampled token plus the draft in one forward (``batch_verify`` gives logits after every
position), keeps the draft's longest prefix that greedy decoding would have produced, adds the
model's own next token after it, and pops the rejected tokens off the KV cache. The output is
therefore exactly what plain greedy decoding gives, in fewer forwards when drafts are right.
"""

from __future__ import annotations

import numpy as np


def propose_ngram(tokens: list[int], ngram: int, depth: int) -> list[int]:
    """Up to ``depth`` draft tokens continuing ``tokens``, or [] when nothing matches."""
    for n in range(min(ngram, len(tokens) - 1), 0, -1):
        tail = tokens[-n:]
        for start in range(len(tokens) - n - 1, -1, -1):
            if tokens[start : start + n] == tail:
                return tokens[start + n : start + n + depth]
    return []


def accept_greedy(draft: list[int], logits: np.ndarray) -> tuple[int, int]:
    """Given logits after the last token and after each draft token (len(draft) + 1 rows),
    return (accepted draft tokens, the model's next token after them)."""
    choices = logits.argmax(axis=-1)
    accepted = 0
    while accepted < len(draft) and choices[accepted] == draft[accepted]:
        accepted += 1
    return accepted, int(choices[accepted])
