"""Every bound the HTTP server puts on the size of a request, in one place.

The engines trust what they are handed: a chat request with ``"n": 100000`` was once accepted and
the engine spawned siblings until nobody else was answered. So every parameter whose size a client
chooses is bounded here and checked while the body is parsed (``openai_schema``, ``media``,
``completions.build_request``), before any engine sees the request; a value out of bounds is a 400
(413 for bytes) with the OpenAI error body naming the parameter. Where the OpenAI API documents a
limit we use it; the others sit far above real use and far below what would stall the server.
What depends on the served model (context length, KV cache, ``max_num_seqs``) is the engine's to
refuse; value ranges that are not sizes (temperature, top_p, penalties) are checked by
``SamplingParams.validate``.

``ferrum serve`` sets the ones an operator may want to change (``--max-body-bytes``,
``--max-audio-seconds``); the README's "Request limits" table lists them all.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ferrum.errors import InvalidRequestError
from ferrum.types import MAX_COMPLETIONS, MAX_SEED, MAX_TOP_LOGPROBS


@dataclass(frozen=True)
class RequestLimits:
    """Named request limits; the defaults are what ``ferrum serve`` uses unless told otherwise."""

    max_body_bytes: int = 32 << 20
    """Largest request body (aiohttp's ``client_max_size``), JSON or multipart, so also the largest
    audio upload: OpenAI takes uploads up to 25 MB, and this leaves room for the form around one.
    Over it: 413. ``--max-body-bytes``."""

    max_n: int = MAX_COMPLETIONS
    """``n`` (and ``best_of``, which must equal ``n``): OpenAI allows 1–128 completions per request."""

    max_stop_sequences: int = 16
    """Entries of ``stop``. OpenAI allows 4; more are accepted, but each one is matched against every
    new piece of text of every sequence."""

    max_stop_chars: int = 256
    """Characters of one stop string: the tail of every sequence's new text is compared with each
    stop string's prefixes on every token, so the work grows with their length."""

    max_stop_token_ids: int = 64
    """Entries of ``stop_token_ids`` (vLLM's extension; each must be a token of the vocabulary)."""

    max_logit_bias: int = 300
    """Entries of ``logit_bias`` (OpenAI caps it at 300); keys must be tokens of the vocabulary."""

    max_top_logprobs: int = MAX_TOP_LOGPROBS
    """Chat ``top_logprobs``: OpenAI allows 0–20 alternatives per token."""

    max_completion_logprobs: int = 5
    """Completions ``logprobs``: the legacy OpenAI completions API allows 0–5."""

    max_messages: int = 2048
    """Entries of a chat request's ``messages``: OpenAI refuses arrays longer than 2048."""

    max_prompt_chars: int = 1 << 20
    """Characters of a completions ``prompt``, or of all chat message texts together. The prompt is
    tokenized on the server's event loop, so a bound keeps one request from blocking the others; a
    mebicharacter is well above any context the served models have (~4 characters per token)."""

    max_seed: int = MAX_SEED
    """``seed`` must be in [0, 2^64 - 1]: it seeds numpy's generator, which takes no negative seed."""

    max_top_k: int = (1 << 31) - 1
    """``top_k`` up to int32's maximum (values at or above the vocabulary size mean no top-k); the
    sampling row carries it as a 32-bit number."""

    max_grammar_chars: int = 65536
    """Characters of an output constraint: a JSON schema (as JSON), a regular expression, a Lark
    grammar, all ``choice`` strings together, or all ``tools`` definitions together. llguidance
    compiles it when the request arrives, and its work grows with the size."""

    max_choices: int = 256
    """Strings of a ``choice`` constraint (vLLM's extension)."""

    max_tools: int = 128
    """Entries of ``tools``: OpenAI's limit."""

    max_embedding_inputs: int = 2048
    """Strings in one embeddings ``input`` array: OpenAI's limit."""

    max_embedding_input_chars: int = 65536
    """Characters of one embeddings input: OpenAI refuses inputs over 8192 tokens, which this exceeds
    at ~8 characters per token (our encoders truncate at their own ``max_length`` beyond that)."""

    max_audio_seconds: float = 1800.0
    """Duration of an uploaded audio file (from its header, before decoding): 30 minutes, about what
    OpenAI's 25 MB upload limit holds as 128 kbit/s MP3. Transcription time grows with it.
    ``--max-audio-seconds``."""

    max_speech_chars: int = 4096
    """Characters of ``/v1/audio/speech`` ``input``: OpenAI's limit."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InvalidRequestError(f"request limit {f.name} must be a positive number, got {value!r}",
                                          param=f.name)


DEFAULT_LIMITS = RequestLimits()
