"""Tokenizer built from the GGUF, chat templates, incremental detokenization, stop strings."""

from __future__ import annotations

import pytest

from compile.sources.gguf_source import GGUFSource
from ferrum.errors import UnsupportedFeatureError
from ferrum.manifest import GenerationConfig
from runtime.detokenizer import REPLACEMENT, IncrementalDetokenizer
from runtime.stop import StopStringMatcher
from runtime.tokenizer import ChatTokenizer

TEXTS = [
    "Hello, world! 12345",
    "Grüße aus Köln — naïve café, señor",
    "日本語のテキストと中文字符",
    "Emoji: 🙂🚀👩‍💻 and math ∑∫√ and Ελληνικά",
    "  leading spaces\n\ttabs and\r\nnewlines  ",
]


@pytest.fixture(scope="module")
def tokenizer(smollm2_artifact) -> ChatTokenizer:
    from runtime.artifact import LlmArtifact

    artifact = LlmArtifact.open(smollm2_artifact)
    return ChatTokenizer(artifact.tokenizer_path, artifact.generation)


@pytest.mark.parametrize("text", TEXTS)
def test_gguf_tokenizer_round_trips_unicode(tokenizer, text):
    ids = tokenizer.encode(text)
    assert ids and tokenizer.decode(ids) == text


def test_gguf_tokenizer_specials_and_digits(tokenizer, smollm2_gguf):
    source = GGUFSource(smollm2_gguf)
    assert source.generation.eos_token_ids == [2] and source.generation.bos_token_id == 1
    assert tokenizer.encode("<|im_start|>user\nhi<|im_end|>")[0] == 1  # special token, not split
    assert tokenizer.encode("<|im_start|>user\nhi<|im_end|>")[-1] == 2
    digits = tokenizer.encode("2024")
    assert len(digits) == 4  # the "smollm" pre-tokenizer splits numbers into single digits


def test_chat_template_from_gguf(tokenizer):
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi there"}])
    assert prompt.startswith("<|im_start|>system\n")  # SmolLM2's template adds its default system turn
    assert "<|im_start|>user\nHi there<|im_end|>\n" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    with_system = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], add_generation_prompt=False
    )
    assert with_system == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


def test_no_chat_template_is_a_clear_error(tokenizer, smollm2_artifact):
    bare = ChatTokenizer(smollm2_artifact / "tokenizer.json", GenerationConfig(None, [2], 8192, chat_template=None))
    with pytest.raises(UnsupportedFeatureError, match="no chat template"):
        bare.apply_chat_template([{"role": "user", "content": "x"}])


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_detokenizer_never_emits_broken_characters(tokenizer, text):
    ids = tokenizer.encode(text)
    detok = IncrementalDetokenizer(tokenizer.tokenizer, prompt_ids=[1, 4093, 198])
    pieces = [detok.add(t) for t in ids]
    pieces.append(detok.flush())
    assert all(REPLACEMENT not in p for p in pieces)
    assert "".join(pieces) == text


def test_detokenizer_holds_split_multibyte_character(tokenizer):
    emoji_ids = tokenizer.encode("🚀")
    assert len(emoji_ids) > 1  # byte-level BPE splits this character across tokens
    detok = IncrementalDetokenizer(tokenizer.tokenizer)
    assert [detok.add(t) for t in emoji_ids[:-1]] == [""] * (len(emoji_ids) - 1)
    assert detok.add(emoji_ids[-1]) == "🚀"
    cut = IncrementalDetokenizer(tokenizer.tokenizer)
    for t in emoji_ids[:-1]:
        cut.add(t)
    assert cut.flush() == ""  # generation ended mid-character: nothing broken is emitted


@pytest.mark.parametrize(
    "deltas, stops, emitted, stopped",
    [
        (["Hello", " wor", "ld"], ["world"], "Hello ", True),
        (["ab", "c", "d"], ["cd"], "ab", True),
        (["The end", "."], ["END"], "The end.", False),
        (["x", "<", "/s", "top>"], ["</stop>"], "x", True),
        (["partial <", "/s"], ["</stop>"], "partial </s", False),
    ],
)
def test_stop_strings_hold_back_prefixes(deltas, stops, emitted, stopped):
    matcher = StopStringMatcher(stops)
    out, hit = [], False
    for d in deltas:
        text, hit = matcher.feed(d)
        out.append(text)
        if hit:
            break
    if not hit:
        out.append(matcher.flush())
    assert "".join(out) == emitted and hit == stopped


def test_a_token_id_prompt_beyond_the_context_is_refused_before_its_ids_are_scanned():
    """A body of a million out-of-vocabulary ids is refused by its length (context_length_exceeded),
    without the per-id vocabulary scan that would hold the event loop."""
    from ferrum.errors import ContextLengthExceededError, InvalidRequestError
    from ferrum.types import InferenceRequest, SamplingParams
    from runtime.generation import prepare_prompt

    class Vocabulary:
        vocab_size = 100

    huge = InferenceRequest(prompt_token_ids=[-1] * 1_000_000, sampling_params=SamplingParams(max_tokens=4))
    with pytest.raises(ContextLengthExceededError):
        prepare_prompt(huge, Vocabulary(), max_model_len=2048)
    short = InferenceRequest(prompt_token_ids=[5, 100], sampling_params=SamplingParams(max_tokens=4))
    with pytest.raises(InvalidRequestError, match=r"\[0, 100\)"):
        prepare_prompt(short, Vocabulary(), max_model_len=2048)
    assert prepare_prompt(InferenceRequest(prompt_token_ids=[5, 99], sampling_params=SamplingParams(max_tokens=4)),
                          Vocabulary(), max_model_len=2048) == [5, 99]
