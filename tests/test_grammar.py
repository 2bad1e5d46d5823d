"""Output constraints without a model: request fields → llguidance grammars (and the 400s for bad
ones), token masks and their application, tool-call grammars, prompts and the split of text into
tool calls. The tokenizer is the tiny byte-level BPE the tiny Llama tests use."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from llguidance import LLMatcher
from llguidance.numpy import apply_token_bitmask_inplace
from tokenizers import Tokenizer

from ferrum.errors import InvalidRequestError, UnsupportedFeatureError
from ferrum.types import SamplingParams
from runtime.grammar import GrammarCompiler, apply_mask, choice_grammar, json_schema_grammar, mask_words
from runtime.sampling import SequenceSampler
from runtime.server.limits import RequestLimits
from runtime.server.openai_schema import parse_chat, parse_completion
from runtime.server.structured import output_grammar
from runtime.server.tools import CallStream, call_grammar, default_prompt_messages, extract_calls, parse_tools
from conftest import train_tokenizer

LIMITS = RequestLimits()
EOS = 1  # "</s>" in the tiny tokenizer
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"], "additionalProperties": False}}},
         {"type": "function", "function": {"name": "echo", "description": "say it back"}}]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_str(train_tokenizer())


@pytest.fixture(scope="module")
def compiler(tokenizer) -> GrammarCompiler:
    return GrammarCompiler(tokenizer, tokenizer.get_vocab_size() + 7, [EOS])  # logits wider than the vocabulary


def accepts(compiler: GrammarCompiler, tokenizer: Tokenizer, grammar: str, text: str) -> bool:
    """Whether the grammar takes ``text`` (as the tokenizer splits it) and may end after it."""
    matcher = compiler.matchers(grammar, 1)[0]
    ok = all(matcher.consume_token(t) for t in tokenizer.encode(text, add_special_tokens=False).ids)
    return ok and matcher.is_accepting()


def chat_body(**fields) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


# -- request fields → grammars --------------------------------------------------------------------
@pytest.mark.parametrize(("fields", "param", "good", "bad"), [
    ({"response_format": {"type": "json_object"}}, "response_format", '{"x": [1, 2]}', "[1]"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}},
     "response_format", '{"n": 3}', '{"n": "3"}'),
    ({"structured_outputs": {"regex": "[a-c]+"}}, "structured_outputs", "abcab", "abd"),
    ({"structured_outputs": {"choice": ["red", "blue"]}}, "structured_outputs", "blue", "green"),
    ({"structured_outputs": {"grammar": 'start: "x" NUM\nNUM: /[0-9]+/'}}, "structured_outputs", "x42", "x"),
    ({"guided_json": json.dumps({"type": "array", "items": {"type": "boolean"}})}, "guided_json", "[true]", "[1]"),
    ({"guided_regex": "[0-9]{3}"}, "guided_regex", "123", "12"),
    ({"guided_choice": ["a b", "c"]}, "guided_choice", "a b", "a"),
    ({"guided_grammar": 'root ::= "yes" | "no"'}, "guided_grammar", "no", "maybe"),  # GBNF
])
def test_each_constraint_becomes_a_grammar_that_holds(compiler, tokenizer, fields, param, good, bad):
    grammar, named = output_grammar(chat_body(**fields), LIMITS)
    assert named == param
    assert accepts(compiler, tokenizer, grammar, good)
    assert not accepts(compiler, tokenizer, grammar, bad)
    assert parse_chat(chat_body(**fields)).sampling.grammar == grammar
    assert parse_completion({"model": "m", "prompt": "p", **fields}).sampling.grammar == grammar


def test_no_constraint_and_text_format_give_no_grammar():
    assert output_grammar(chat_body(), LIMITS) is None
    assert output_grammar(chat_body(response_format={"type": "text"}), LIMITS) is None
    assert parse_chat(chat_body()).sampling.grammar is None


@pytest.mark.parametrize(("fields", "param", "words"), [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "propertyNames": {"pattern": "a"}}}}}, "response_format", "propertyNames"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "response_format", "name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": False}}},
     "response_format", "cannot be enforced"),
    ({"response_format": {"type": "yaml"}}, "response_format", "must be"),
    ({"response_format": "json"}, "response_format", "object"),
    ({"guided_regex": "(a"}, "guided_regex", "unclosed"),
    ({"guided_grammar": "start: nowhere"}, "guided_grammar", "nowhere"),
    ({"guided_grammar": "root ::= (("}, "guided_grammar", "GBNF"),
    ({"guided_choice": []}, "guided_choice", "non-empty"),
    ({"guided_choice": ["a", 1]}, "guided_choice", "strings"),
    ({"guided_json": "{not json"}, "guided_json", "not valid JSON"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs", "only one"),
    ({"response_format": {"type": "json_object"}, "guided_regex": "a"}, "guided_regex", "only one"),
    ({"guided_regex": "a" * (LIMITS.max_grammar_chars + 1)}, "guided_regex", "at most"),
    ({"guided_choice": ["a"] * (LIMITS.max_choices + 1)}, "guided_choice", "at most"),
])
def test_bad_constraints_are_400_naming_the_field(fields, param, words):
    with pytest.raises(InvalidRequestError) as caught:
        parse_chat(chat_body(**fields))
    assert caught.value.param == param and words in caught.value.message, caught.value.message


def test_structural_tag_is_refused_as_unsupported():
    with pytest.raises(UnsupportedFeatureError) as caught:
        parse_chat(chat_body(structured_outputs={"structural_tag": {"x": 1}}))
    assert caught.value.param == "structured_outputs"


# -- masks ----------------------------------------------------------------------------------------
@given(st.integers(1, 200), st.lists(st.integers(-(2 ** 31), 2 ** 31 - 1), min_size=7, max_size=7))
def test_apply_mask_keeps_exactly_the_allowed_tokens(vocab, words):
    mask = np.array(words[: mask_words(vocab)], dtype=np.int32)
    logits = np.arange(vocab, dtype=np.float32)
    expected = logits.copy()[None, :]
    apply_token_bitmask_inplace(expected, mask[None, :])  # llguidance's own numpy reference
    np.testing.assert_array_equal(apply_mask(logits, mask), expected[0])


def test_masks_match_each_matcher_and_sampling_obeys_them(compiler, tokenizer):
    grammars = [choice_grammar(["hello", "world"]), json_schema_grammar(True), None]
    matchers = [(compiler.matchers(g, 1)[0], i) for i, g in enumerate(grammars) if g is not None]
    masks = compiler.masks.start(matchers, len(grammars)).result()
    vocab = compiler.vocab_size
    for matcher, i in matchers:
        own = np.frombuffer(matcher.compute_bitmask(), dtype=np.int32)
        np.testing.assert_array_equal(masks[i, : own.shape[0]], own)
    assert (masks[2] == -1).all()  # an unconstrained row allows everything
    logits = np.random.default_rng(0).standard_normal(vocab).astype(np.float32)
    allowed = np.flatnonzero(np.isfinite(apply_mask(logits, masks[0])))
    starts = {tokenizer.decode([int(t)]) for t in allowed}
    assert starts and all("hello".startswith(s) or "world".startswith(s) for s in starts)
    for params in (SamplingParams.greedy(), SamplingParams(temperature=1.5, top_k=50, seed=3)):
        sampler = SequenceSampler(params, [])
        for _ in range(20):
            assert sampler.sample(logits, masks[0])[0] in allowed


def test_masks_never_allow_the_padding_past_the_vocabulary(compiler, tokenizer):
    """The LM head may be wider than the tokenizer (``compiler`` has 7 extra ids): its padding ids
    spell nothing, so even a grammar that takes any text never allows them; the GPU sampler, which
    applies the mask as given, relies on it."""
    matcher = compiler.matchers(LLMatcher.grammar_from_regex(r"(.|\n)*"), 1)[0]
    bits = np.unpackbits(compiler.masks.start([(matcher, 0)], 1).result()[0].view(np.uint8), bitorder="little")
    vocab = tokenizer.get_vocab_size()
    assert bits[:vocab].sum() > vocab // 2 and not bits[vocab:].any()


def test_matchers_of_n_completions_are_independent(compiler, tokenizer):
    first, second = compiler.matchers(choice_grammar(["ab", "cd"]), 2)
    for t in tokenizer.encode("ab", add_special_tokens=False).ids:
        assert first.consume_token(t)
    assert first.is_accepting() and not second.is_accepting()
    with pytest.raises(InvalidRequestError):
        compiler.matchers(LLMatcher.grammar_from_regex("(x"), 1)


# -- tools ----------------------------------------------------------------------------------------
def call_text(*calls: tuple[str, dict]) -> str:
    return "\n".join(f'<tool_call>\n{json.dumps({"name": n, "arguments": a})}\n</tool_call>' for n, a in calls)


def test_tool_grammars_enforce_the_choice(compiler, tokenizer):
    add = call_text(("add", {"a": 1, "b": 2}))
    two = call_text(("add", {"a": 1, "b": 2}), ("echo", {}))
    cases = {  # tool_choice, parallel → (accepted, refused)
        ("required", True): ([add, two, add + "\n"], ["hello", call_text(("add", {"a": 1})),
                                                      call_text(("nope", {}))]),
        ("required", False): ([add], [two]),
        (json.dumps({"type": "function", "function": {"name": "echo"}}), True): ([call_text(("echo", {}))], [add]),
        ("auto", True): ([add, two, "hello there"], ["<b>bold</b>", call_text(("add", {"a": "x", "b": 2}))]),
    }
    for (choice, parallel), (good, bad) in cases.items():
        body = {"tools": TOOLS, "tool_choice": json.loads(choice) if choice.startswith("{") else choice,
                "parallel_tool_calls": parallel}
        grammar = call_grammar(parse_tools(body, LIMITS))
        for text in good:
            assert accepts(compiler, tokenizer, grammar, text), (choice, text)
        for text in bad:
            assert not accepts(compiler, tokenizer, grammar, text), (choice, text)
    assert call_grammar(parse_tools({"tools": TOOLS, "tool_choice": "none"}, LIMITS)) is None


@pytest.mark.parametrize(("fields", "param"), [
    ({"tools": []}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools"),
    ({"tools": [{"type": "retrieval"}]}, "tools"),
    ({"tools": TOOLS + TOOLS[:1]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}, "tools"),
    ({"tools": TOOLS, "tool_choice": "always"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "missing"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": TOOLS * 100}, "tools"),
])
def test_bad_tools_are_400_naming_the_field(fields, param):
    with pytest.raises(InvalidRequestError) as caught:
        parse_chat(chat_body(**fields))
    assert caught.value.param == param


def test_tool_messages_and_the_default_prompt():
    body = chat_body(tools=TOOLS, messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "add 1 and 2"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "3"}])
    parsed = parse_chat(body)
    messages = default_prompt_messages(parsed.messages, parsed.tools)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"].startswith("Be brief.") and '"name": "add"' in messages[0]["content"]
    assert messages[2]["content"] == call_text(("add", {"a": 1, "b": 2}))
    assert messages[3]["content"] == "<tool_response>\n3\n</tool_response>"
    assert default_prompt_messages(parsed.messages, None)[0]["content"] == "Be brief."
    with pytest.raises(InvalidRequestError):
        parse_chat(chat_body(messages=[{"role": "tool", "content": "3"}]))
    with pytest.raises(InvalidRequestError):
        parse_chat(chat_body(messages=[{"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "add", "arguments": "{oops"}}]}]))


NAMES = {"add", "echo"}


@given(st.lists(st.sampled_from([("add", {"a": 1, "b": 2}), ("echo", {}), ("add", {"a": -5, "b": 0})]),
                min_size=1, max_size=3),
       st.lists(st.integers(1, 9), min_size=1, max_size=40), st.sampled_from(["", "\n", "<tool_call>\n{\"na"]))
def test_streamed_split_equals_the_whole_split(calls, cuts, tail):
    text = call_text(*calls) + tail
    pieces, at = [], 0
    for cut in cuts:
        pieces.append(text[at: at + cut])
        at += cut
    pieces.append(text[at:])
    split = CallStream(NAMES)
    content, deltas = "", []
    for piece in pieces:
        more, found = split.feed(piece)
        content += more
        deltas += found
    content += split.finish()
    assert [(d["function"]["name"], json.loads(d["function"]["arguments"])) for d in deltas] == calls
    assert [d["index"] for d in deltas] == list(range(len(calls)))
    assert content == tail.strip() and (tail.strip() == "" or content == tail)
    if not tail.strip():
        assert extract_calls(text, NAMES) == calls


def test_text_answers_stream_as_text():
    for text in ("Hello <b>", "  <tool", "<tool_call>\nnot json\n</tool_call> then text"):
        split = CallStream(NAMES)
        content, deltas = split.feed(text)
        assert deltas == [] and content + split.finish() == text
        assert extract_calls(text, NAMES) is None


def test_a_template_that_reads_tools_renders_them_itself(tmp_path):
    from ferrum.manifest import GenerationConfig
    from runtime.server.completions import _render_chat
    from runtime.tokenizer import ChatTokenizer

    path = tmp_path / "tokenizer.json"
    path.write_text(train_tokenizer())
    template = ("{% if tools %}TOOLS {{ tools | map(attribute='function.name') | join(',') }}\n{% endif %}"
                "{% for m in messages %}{{ m.role }}: {{ m.content }}"
                "{% for c in m.tool_calls or [] %}CALL {{ c.function.name }} {{ c.function.arguments.a }}{% endfor %}"
                "{% if m.tool_call_id %} FOR {{ m.tool_call_id }}{% endif %}|{% endfor %}")
    native = ChatTokenizer(path, GenerationConfig(0, [EOS], 64, chat_template=template))
    plain = ChatTokenizer(path, GenerationConfig(0, [EOS], 64, chat_template="{% for m in messages %}"
                                                 "{{ m.role }}: {{ m.content }}\n{% endfor %}"))
    assert native.renders_tools and not plain.renders_tools
    parsed = parse_chat(chat_body(tools=TOOLS, messages=[
        {"role": "user", "content": "add"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                              "function": {"name": "add", "arguments": '{"a": 4, "b": 1}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "5"}]))
    assert _render_chat(native, parsed) == "TOOLS add,echo\nuser: add|assistant: CALL add 4|tool: 5 FOR c1|"
    rendered = _render_chat(plain, parsed)
    assert rendered.startswith("system: You can call functions.") and "user: <tool_response>\n5\n" in rendered
