"""OpenAI tool calling: ``tools``, ``tool_choice``, ``parallel_tool_calls`` and ``role: tool``
messages → prompt text and an output grammar; generated text → ``message.tool_calls``.

Calls are written in the Hermes format that Qwen, Hermes and SmolLM3 templates use::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

A chat template that mentions ``tools`` renders the tools and the conversation itself. One that
does not (SmolLM2's) gets Ferrum's default tool prompt (``DEFAULT_TOOL_PROMPT``) added to the system
message, earlier calls written back in the format above, and tool results as user turns wrapped in
``<tool_response>``. ``required`` and a named function are enforced by grammar (the output is
only calls, each naming a tool and carrying arguments that validate against its parameters);
``auto`` lets the model write text or calls, and a call it starts is constrained the same way;
``none`` renders no tools and constrains nothing.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from ferrum.errors import InvalidRequestError
from runtime.grammar import JSON_OPTIONS, lark_grammar
from runtime.server.limits import RequestLimits

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
_CALL = re.compile(re.escape(CALL_OPEN) + r"\s*(.*?)\s*" + re.escape(CALL_CLOSE), re.DOTALL)

DEFAULT_TOOL_PROMPT = """You can call functions. Their JSON definitions:
<tools>
{tools}
</tools>
To call a function, answer with nothing but the calls, each exactly in this form:
<tool_call>
{{"name": "<function name>", "arguments": <the arguments as a JSON object>}}
</tool_call>
Otherwise answer the user in plain text. A function's result comes back inside <tool_response></tool_response>."""


@dataclass(frozen=True)
class ToolSpec:
    """The request's tools and how they may be used; ``choice`` is none/auto/required or a name."""

    tools: list[dict[str, Any]]  # the functions as the client sent them ({"name", "description", "parameters"})
    choice: str
    named: str | None
    parallel: bool

    @property
    def active(self) -> bool:
        return self.choice != "none"

    @property
    def names(self) -> set[str]:
        return {t["name"] for t in self.tools}


def parse_tools(data: dict[str, Any], limits: RequestLimits) -> ToolSpec | None:
    """The body's ``tools``/``tool_choice``/``parallel_tool_calls``, checked; None without tools."""
    raw = data.get("tools")
    choice = data.get("tool_choice")
    if data.get("functions") is not None or data.get("function_call") is not None:
        raise InvalidRequestError("'functions'/'function_call' are deprecated; send 'tools' and 'tool_choice'",
                                  param="functions")
    if raw is None:
        if choice not in (None, "none"):
            raise InvalidRequestError("'tool_choice' needs 'tools'", param="tool_choice")
        return None
    if not isinstance(raw, list) or not raw:
        raise InvalidRequestError("'tools' must be a non-empty array", param="tools")
    if len(raw) > limits.max_tools:
        raise InvalidRequestError(f"'tools' may hold at most {limits.max_tools} entries, got {len(raw)}", param="tools")
    tools = [_function(i, t) for i, t in enumerate(raw)]
    if len({t["name"] for t in tools}) != len(tools):
        raise InvalidRequestError("tool names must be unique", param="tools")
    size = len(json.dumps(tools))
    if size > limits.max_grammar_chars:
        raise InvalidRequestError(f"'tools' may be at most {limits.max_grammar_chars} characters of JSON, got {size}",
                                  param="tools")
    named = None
    if choice is None:
        choice = "auto"
    elif isinstance(choice, dict):
        function = choice.get("function")
        if choice.get("type") != "function" or not isinstance(function, dict) or not isinstance(
                function.get("name"), str):
            raise InvalidRequestError("tool_choice must be 'none', 'auto', 'required' or "
                                      "{'type': 'function', 'function': {'name': ...}}", param="tool_choice")
        named = function["name"]
        if named not in {t["name"] for t in tools}:
            raise InvalidRequestError(f"tool_choice names function {named!r}, which is not in 'tools'",
                                      param="tool_choice")
        choice = "named"
    elif choice not in ("none", "auto", "required"):
        raise InvalidRequestError("tool_choice must be 'none', 'auto', 'required' or a named function",
                                  param="tool_choice")
    parallel = data.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise InvalidRequestError("'parallel_tool_calls' must be a boolean", param="parallel_tool_calls")
    return ToolSpec(tools, choice, named, parallel)


def _function(index: int, tool: Any) -> dict[str, Any]:
    where = f"tools[{index}]"
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
        raise InvalidRequestError(f"{where} must be {{'type': 'function', 'function': {{...}}}}", param="tools")
    function = tool["function"]
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidRequestError(f"{where}.function.name must be 1-64 letters, digits, '_' or '-'", param="tools")
    parameters = function.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, dict):
        raise InvalidRequestError(f"{where}.function.parameters must be a JSON schema object", param="tools")
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidRequestError(f"{where}.function.description must be a string", param="tools")
    out = {"name": name, "parameters": parameters}
    if description:
        out["description"] = description
    return out


# -- the grammar ----------------------------------------------------------------------------------
def call_grammar(spec: ToolSpec) -> str | None:
    """The output grammar the tool choice asks for (None for ``none``): calls only for
    ``required`` and a named function, text or calls for ``auto``."""
    if not spec.active:
        return None
    tools = [t for t in spec.tools if spec.named is None or t["name"] == spec.named]
    variants = [{"type": "object", "properties": {"name": {"const": t["name"]}, "arguments": t["parameters"]},
                 "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    schema = {"anyOf": variants, "x-guidance": JSON_OPTIONS} if len(variants) > 1 else {
        **variants[0], "x-guidance": JSON_OPTIONS}
    one = f'"{CALL_OPEN}\\n" %json {json.dumps(schema)} "\\n{CALL_CLOSE}"'
    # a newline may follow the last call (models write one), then only the end
    calls = "call (\"\\n\" call)* \"\\n\"?" if spec.parallel and spec.named is None else "call \"\\n\"?"
    rules = [f"call: {one}", f"calls: {calls}"]
    if spec.choice == "auto":  # text that does not open a call, or calls
        return lark_grammar("\n".join(["start: TEXT | calls", r"TEXT: /[^<](.|\n)*/", *rules]))
    return lark_grammar("\n".join(["start: calls", *rules]))


# -- the prompt -----------------------------------------------------------------------------------
def default_prompt_messages(messages: list[dict[str, Any]], spec: ToolSpec | None) -> list[dict[str, Any]]:
    """The conversation for a template without tool support: the default tool prompt in the
    system message (unless tool_choice is none), assistant calls written out, tool results as
    user turns."""
    out = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "assistant" and message.get("tool_calls"):
            calls = [CALL_OPEN + "\n" + json.dumps({"name": c["name"], "arguments": c["arguments"]}) + "\n" + CALL_CLOSE
                     for c in message["tool_calls"]]
            content = "\n".join(([content] if content else []) + calls)
        elif role == "tool":
            role, content = "user", f"<tool_response>\n{content}\n</tool_response>"
        out.append({"role": role, "content": content})
    if spec is not None and spec.active:
        listing = "\n".join(json.dumps({"type": "function", "function": t}) for t in spec.tools)
        prompt = DEFAULT_TOOL_PROMPT.format(tools=listing)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + prompt}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation for a template that renders tools: calls in the Hugging Face shape
    (``{"type": "function", "function": {"name", "arguments": dict}}``), tool results as they came."""
    out = []
    for message in messages:
        m = {"role": message["role"], "content": message["content"]}
        if message.get("tool_calls"):
            m["tool_calls"] = [{"type": "function", "id": c["id"],
                                "function": {"name": c["name"], "arguments": c["arguments"]}}
                               for c in message["tool_calls"]]
        if message.get("tool_call_id"):
            m["tool_call_id"] = message["tool_call_id"]
        out.append(m)
    return out


def parse_message_calls(index: int, raw: Any) -> list[dict[str, Any]]:
    """An assistant message's ``tool_calls`` (OpenAI's shape, arguments as JSON text) → id, name
    and arguments as an object."""
    where = f"messages[{index}].tool_calls"
    if not isinstance(raw, list):
        raise InvalidRequestError(f"{where} must be an array", param="messages")
    calls = []
    for call in raw:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequestError(f"{where} entries must be {{'id', 'type': 'function', 'function': "
                                      "{'name', 'arguments'}}}", param="messages")
        arguments = function.get("arguments", "{}")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                raise InvalidRequestError(f"{where}: arguments of {function['name']!r} are not valid JSON",
                                          param="messages") from None
        calls.append({"id": str(call.get("id", "")), "name": function["name"], "arguments": arguments})
    return calls


# -- the answer -----------------------------------------------------------------------------------
def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def call_json(index: int, name: str, arguments: Any) -> dict[str, Any]:
    """One entry of ``message.tool_calls`` (and of a stream delta: ``index`` set)."""
    return {"index": index, "id": new_call_id(), "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def extract_calls(text: str, names: set[str]) -> list[tuple[str, Any]] | None:
    """(name, arguments) of every call in ``text`` when the text is calls and nothing else (each a
    JSON object naming one of ``names`` with object arguments); None when it is an answer."""
    if not text.lstrip().startswith(CALL_OPEN):
        return None
    calls, end = [], 0
    for match in _CALL.finditer(text):
        if text[end: match.start()].strip():
            return None
        try:
            call = json.loads(match.group(1))
        except ValueError:
            return None
        if (not isinstance(call, dict) or call.get("name") not in names
                or not isinstance(call.get("arguments"), dict)):
            return None
        calls.append((call["name"], call["arguments"]))
        end = match.end()
    return calls if calls and not text[end:].strip() else None


class CallStream:
    """One streamed completion's text split into content deltas and whole tool calls.

    Text is held back while it could still be the start of a call; once it cannot, it streams as
    content. In a call, each call is released as one delta when its closing tag arrives."""

    def __init__(self, names: set[str]):
        self.names = names
        self.buffer = ""
        self.mode: str | None = None  # None: undecided, "text", "calls"
        self.count = 0

    def feed(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """(content to stream now, tool-call deltas to stream now) after ``text``."""
        if self.mode == "text":
            return text, []
        self.buffer += text
        if self.mode is None:
            head = self.buffer.lstrip()
            if len(head) < len(CALL_OPEN) and CALL_OPEN.startswith(head):
                return "", []
            self.mode = "calls" if head.startswith(CALL_OPEN) else "text"
            if self.mode == "text":
                out, self.buffer = self.buffer, ""
                return out, []
        return self._complete_calls()

    def _complete_calls(self) -> tuple[str, list[dict[str, Any]]]:
        deltas = []
        while (close := self.buffer.find(CALL_CLOSE)) >= 0:
            block, self.buffer = self.buffer[: close + len(CALL_CLOSE)], self.buffer[close + len(CALL_CLOSE):]
            parsed = extract_calls(block, self.names)
            if parsed is None:  # not a call after all: this and what follows is content
                self.mode, rest, self.buffer = "text", block + self.buffer, ""
                return rest, deltas
            for name, arguments in parsed:
                deltas.append(call_json(self.count, name, arguments))
                self.count += 1
        return "", deltas

    def finish(self) -> str:
        """Text still held back when the completion ends (an unfinished call), to send as content;
        the whitespace around calls is not content."""
        out, self.buffer = self.buffer, ""
        return out if out.strip() or self.mode == "text" else ""
