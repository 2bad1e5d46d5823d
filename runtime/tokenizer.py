"""The artifact's tokenizer plus its chat template.

Chat templates are Jinja, rendered the way Hugging Face's ``apply_chat_template`` does (sandboxed,
``trim_blocks``/``lstrip_blocks``, ``raise_exception`` and ``tojson`` available). A templated
prompt already holds whatever BOS the template writes, so BOS is added only to raw prompts and
only when the model asks for it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from ferrum.errors import InvalidRequestError, UnsupportedFeatureError
from ferrum.manifest import GenerationConfig


def _raise(message: str) -> None:
    raise TemplateError(message)


class ChatTokenizer:
    def __init__(self, tokenizer_path: str, generation: GenerationConfig):
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.generation = generation
        self.eos_token_ids = set(generation.eos_token_ids)
        self._template = None
        if generation.chat_template:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise
            env.filters["tojson"] = lambda v, indent=None: json.dumps(v, ensure_ascii=False, indent=indent)
            self._template = env.from_string(generation.chat_template)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_text(self, token_id: int | None) -> str:
        return "" if token_id is None else (self.tokenizer.id_to_token(token_id) or "")

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of ``text``; ``add_bos`` None means: as the model's defaults say."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        bos = self.generation.bos_token_id
        if add_bos is None:
            add_bos = self.generation.add_bos_token
        if add_bos and bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    @property
    def has_chat_template(self) -> bool:
        return self._template is not None

    @property
    def renders_tools(self) -> bool:
        """Whether the chat template renders tool definitions itself (Hugging Face templates that
        do read a ``tools`` variable); others get the server's default tool prompt."""
        source = self.generation.chat_template or ""
        return re.search(r"\btools\b", source) is not None

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            tools: list[dict[str, Any]] | None = None) -> str:
        """Render a conversation into the model's prompt text (``tools``: OpenAI tool definitions,
        for templates that render them)."""
        if self._template is None:
            raise UnsupportedFeatureError("this model has no chat template; use the completions API", status=400)
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise InvalidRequestError(f"messages[{i}] must be an object with a 'role'", param="messages")
            if not isinstance(message.get("content"), str):
                raise InvalidRequestError(f"messages[{i}].content must be text", param="messages")
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                tools=tools,
                bos_token=self.token_text(self.generation.bos_token_id),
                eos_token=self.token_text(self.generation.eos_token_ids[0]),
            )
        except TemplateError as exc:
            raise InvalidRequestError(f"chat template rejected the messages: {exc}", param="messages") from None
