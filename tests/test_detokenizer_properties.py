"""Hypothesis properties of streamed text: the incremental detokenizer, the stop-string matcher,
and the two together as a sequence's output does them (runtime/generation.py ``SequenceOutput``).

Oracles, from definitions only (whole-sequence decodes, ``str.find``):

- the streamed pieces concatenate to the full decode, minus an incomplete final character; after
  each token that ends on a whole character, everything decoded so far has been released (text
  is held back only while a character is incomplete);
- a stop string ends the output where it is first *completed* (the earliest end; of several
  ending together, the longest), whatever the chunking; text is held back only while it could
  still become a stop string;
- a sequence ends at the first EOS, stop token id, released stop string or ``max_tokens``.

Two real byte-level BPE tokenizers: SmolLM2's, built from its GGUF (nothing is compiled), and the
tiny one the test models use.
"""

from __future__ import annotations

import pytest
from conftest import train_tokenizer
from hypothesis import given
from hypothesis import strategies as st
from hypothesis_profiles import costly

from ferrum.manifest import GenerationConfig
from ferrum.types import FinishReason, InferenceRequest, SamplingParams
from runtime.detokenizer import REPLACEMENT, IncrementalDetokenizer
from runtime.generation import SequenceOutput
from runtime.stop import StopStringMatcher
from runtime.tokenizer import ChatTokenizer

# characters of one to four UTF-8 bytes, so byte-level tokens split them
ALPHABET = "ab c\n.,é–日本🙂👩\u200d💻\ufffd"


@pytest.fixture(scope="module", params=["smollm2", "tiny-bpe"])
def tokenizer(request, tmp_path_factory) -> ChatTokenizer:
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "smollm2":
        from compile.sources.gguf_source import GGUFSource

        source = GGUFSource(request.getfixturevalue("smollm2_gguf"))
        (folder / "tokenizer.json").write_text(source.tokenizer_json)
        generation = source.generation
    else:
        (folder / "tokenizer.json").write_text(train_tokenizer())
        generation = GenerationConfig(bos_token_id=0, eos_token_ids=[1], context_length=512)
    return ChatTokenizer(str(folder / "tokenizer.json"), generation)


@st.composite
def token_ids(draw, tok: ChatTokenizer, max_pieces: int = 12) -> list[int]:
    """Token sequences mixing encoded text (multi-byte characters split over tokens), random ids
    (bytes that may never form a character) and special tokens."""
    vocab = tok.vocab_size
    specials = sorted(tok.eos_token_ids) + [tok.generation.bos_token_id or 0]
    piece = st.one_of(
        st.text(ALPHABET, max_size=6).map(lambda t: tok.encode(t, add_bos=False)),
        st.lists(st.integers(0, vocab - 1), min_size=1, max_size=3),
        st.sampled_from(specials).map(lambda t: [t]),
    )
    return [t for p in draw(st.lists(piece, max_size=max_pieces)) for t in p]


def decoded(tok: ChatTokenizer, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=True)


def final_text(tok: ChatTokenizer, ids: list[int]) -> str:
    """The full decode without an incomplete final character (what a finished stream holds)."""
    return decoded(tok, ids).rstrip(REPLACEMENT)


def released(tok: ChatTokenizer, ids: list[int], k: int) -> str:
    """What may have been streamed after ``k`` tokens: the longest decode of a prefix that ends
    on a whole character."""
    for j in range(k, 0, -1):
        text = decoded(tok, ids[:j])
        if not text.endswith(REPLACEMENT):
            return text
    return ""


def stop_cut(text: str, stops: list[str]) -> int | None:
    """Where output ends for ``stops``: the start of the occurrence completed first."""
    found = [(i + len(s), i) for s in stops if s and (i := text.find(s)) >= 0]
    return min(found)[1] if found else None


def held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of ``text`` that could still grow into a stop string."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


# -- detokenizer ----------------------------------------------------------------------------------

@costly(ci=40, deep=5_000)
@given(data=st.data())
def test_streamed_pieces_concatenate_to_the_full_decode(tokenizer, data):
    prompt = tokenizer.encode(data.draw(st.text(ALPHABET.replace("\ufffd", ""), max_size=12)), add_bos=False)
    ids = data.draw(token_ids(tokenizer))
    detok = IncrementalDetokenizer(tokenizer.tokenizer, prompt)
    streamed = ""
    for k, token in enumerate(ids, 1):
        streamed += detok.add(token)
        so_far = decoded(tokenizer, ids[:k])
        assert so_far.startswith(streamed), "released text that the full decode does not have"
        if not so_far.endswith(REPLACEMENT):
            assert streamed == so_far, "held back text that was already whole"
    streamed += detok.flush()
    assert streamed == final_text(tokenizer, ids)


# -- stop strings -----------------------------------------------------------------------------------

stop_lists = st.lists(st.text("abc", min_size=1, max_size=4), max_size=3)


@given(st.lists(st.text("abc", max_size=5), max_size=8), stop_lists)
def test_stop_strings_cut_where_first_completed_whatever_the_chunking(chunks, stops):
    matcher = StopStringMatcher(stops)
    out, seen = "", ""
    for i, chunk in enumerate(chunks):
        seen += chunk
        emitted, hit = matcher.feed(chunk)
        out += emitted
        cut = stop_cut(seen, stops)
        assert hit == (cut is not None)
        if hit:
            assert out == seen[:cut]
            return
        assert out == seen[: len(seen) - held_back(seen, stops)], "held back more or less than a stop prefix"
    assert out + matcher.flush() == seen


@given(st.text("abc", max_size=20), stop_lists, st.data())
def test_stop_output_does_not_depend_on_chunking(text, stops, data):
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    matcher, whole = StopStringMatcher(stops), StopStringMatcher(stops)
    out, hit = "", False
    for chunk in chunks:
        emitted, hit = matcher.feed(chunk)
        out += emitted
        if hit:
            break
    whole_out, whole_hit = whole.feed(text)
    assert (out, hit) == (whole_out, whole_hit)


# -- the two together: SequenceOutput -------------------------------------------------------------

def expected_end(tok: ChatTokenizer, ids: list[int], params: SamplingParams, eos: set[int]):
    """(tokens consumed, finish reason, text) from the definitions."""
    for k in range(1, len(ids) + 1):
        token = ids[k - 1]
        if token in eos or token in params.stop_token_ids:
            text = final_text(tok, ids[: k - 1])
            cut = stop_cut(text, params.stop_sequences)
            if cut is not None:
                return k, FinishReason.Stop, text[:cut]
            return k, FinishReason.EOS if token in eos else FinishReason.Stop, text
        cut = stop_cut(released(tok, ids, k), params.stop_sequences)
        if cut is not None:
            return k, FinishReason.Stop, released(tok, ids, k)[:cut]
        if k == params.max_tokens:
            text = final_text(tok, ids[:k])
            cut = stop_cut(text, params.stop_sequences)
            return k, FinishReason.Stop if cut is not None else FinishReason.Length, text[:cut]
    raise AssertionError("ids must hold max_tokens tokens")


@costly(ci=40, deep=5_000)
@given(data=st.data())
def test_sequence_output_streams_and_stops_as_defined(tokenizer, data):
    ids = data.draw(token_ids(tokenizer, max_pieces=10))
    full = decoded(tokenizer, ids).replace(REPLACEMENT, "")
    substrings = st.builds(lambda a, n: full[a: a + n], st.integers(0, max(len(full) - 1, 0)), st.integers(1, 4))
    stops = data.draw(st.lists(st.one_of(substrings, st.text(ALPHABET, min_size=1, max_size=3)), max_size=3))
    stops = [s for s in stops if s]
    stop_ids = data.draw(st.lists(st.sampled_from(ids), max_size=1)) if ids else []
    params = SamplingParams(max_tokens=max(len(ids), 1), stop_sequences=stops, stop_token_ids=stop_ids)
    ids = ids or [tokenizer.encode("a", add_bos=False)[0]]
    request = InferenceRequest(prompt="", sampling_params=params)
    output = SequenceOutput(request, [], tokenizer)
    chunks = []
    for token in ids:
        chunks.append(output.append(token))
        if output.finished:
            break
    consumed, reason, text = expected_end(tokenizer, ids, params, set(tokenizer.eos_token_ids))
    assert (len(chunks), output.finish_reason, output.text) == (consumed, reason, text)
    assert "".join(c.text for c in chunks) == text
    assert [c.token for c in chunks] == ids[:consumed]
    assert all(c.finish_reason is None for c in chunks[:-1]) and chunks[-1].finish_reason is reason
    assert chunks[-1].usage.completion_tokens == consumed
