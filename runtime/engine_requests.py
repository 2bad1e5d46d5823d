"""What passes between the engine's async API and its loop thread.

``EngineRequest`` is one request inside the engine (its sequences, samplers, outputs and the
asyncio queue its stream reads); the command dataclasses are what the API puts on the loop's
intake queue. Only the loop thread mutates an ``EngineRequest`` after submission; the API side
reads nothing but its queue and ``done``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ferrum.metrics import SpeculationConfig
from ferrum.types import EngineConfig, InferenceRequest, SamplingParams
from runtime.generation import SequenceOutput
from runtime.sampling import SequenceSampler
from runtime.scheduler import Sequence
from runtime.stream_outbox import StreamOutbox
from runtime.tokenizer import ChatTokenizer

END_OF_STREAM = object()  # the last item a request's queue receives


def penalized(params: SamplingParams) -> bool:
    """Penalties and logit bias depend on each sequence's own history, so prompt-lookup drafts
    (verified greedily against unpenalized logits) cannot be used with them."""
    return params.repetition_penalty != 1.0 or bool(params.presence_penalty or params.frequency_penalty
                                                    or params.logit_bias)


class EngineRequest:
    """A request inside the engine: its sequences, their samplers and outputs, its stream."""

    def __init__(self, request: InferenceRequest, prompt_ids: list[int], tokenizer: ChatTokenizer,
                 loop: asyncio.AbstractEventLoop, speculation: SpeculationConfig | None, outbox: StreamOutbox):
        self.request = request
        self.rid = request.id
        self.prompt_ids = prompt_ids
        params = request.sampling_params
        base = SequenceSampler(params, prompt_ids)
        self.samplers = [base] + [base.fork(i) for i in range(1, params.n)]
        self.outputs = [SequenceOutput(request, prompt_ids, tokenizer, index=i) for i in range(params.n)]
        self.matchers: list[Any] = [None] * params.n  # llguidance matchers of a constrained request
        self.seqs: list[Sequence] = []
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self._outbox = outbox
        # drafts are not checked against a grammar: constrained requests decode without them
        self.speculation = (speculation if params.is_greedy and not penalized(params) and params.grammar is None
                            else None)
        self.spawned = params.n == 1  # siblings of an n > 1 request start after the first token
        self.done = False
        self.drafted = 0
        self.accepted = 0
        self.started = time.monotonic()

    def emit(self, item: object) -> None:
        """Hand ``item`` to the stream from the loop thread (delivered at the engine's next
        outbox flush, after the current step or command)."""
        self._outbox.put(self.loop, self.queue, item)

    @property
    def finished(self) -> bool:
        return all(o.finished for o in self.outputs)

    @property
    def produced(self) -> int:
        return sum(len(o.tokens) for o in self.outputs)


@dataclass(frozen=True)
class Submit:
    request: EngineRequest


@dataclass(frozen=True)
class Cancel:
    request: EngineRequest


@dataclass
class Reconfigure:
    """Apply ``config``; ``resize`` rebuilds the KV cache (only while idle)."""

    config: EngineConfig
    resize: bool
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


@dataclass
class Query:
    """Run ``read`` on the loop thread between steps, where the engine's state is consistent."""

    read: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.read()
        except Exception as exc:  # handed back to the caller's thread
            self.error = exc
        finally:
            self.done.set()


@dataclass(frozen=True)
class Stop:
    """Cancel everything in flight and end the loop."""


EngineCommand = Submit | Cancel | Reconfigure | Query | Stop
