"""Run a compiled LLM artifact: weights on the device, paged KV cache, prefill/decode/verify.

This is the only module that calls the artifact's functions. Sequence ids are the KV cache's:
the caller adds a sequence, runs forwards on it, and removes it. Every forward is bracketed by
``kv_state_begin_forward`` / ``kv_state_end_forward`` with the sequences and how many tokens each
appends, which is how the paged cache knows where the new K/V go.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import tvm
from tvm.runtime import ShapeTuple

from ferrum.errors import ArtifactError, InvalidRequestError
from ferrum.manifest import SAMPLE_PARAMS, mask_words
from runtime.artifact import LlmArtifact, resolve_device
from runtime.dummy_weights import LOAD_FORMATS, dummy_params

_builtin = tvm.get_global_func
# The FFI's shape constructor itself: ``ShapeTuple(list)`` checks every element against
# ``numbers.Integral`` in Python, ~0.2 ms for a 256-sequence batch, twice a step.
_shape = _builtin("ffi.Shape")


class KVCacheConfig:
    """Sizes fixed when the cache is created (all chosen at run time, not compile time)."""

    def __init__(self, max_batch_size: int, max_total_tokens: int, prefill_chunk_size: int, page_size: int):
        self.max_batch_size = max_batch_size
        self.max_total_tokens = max_total_tokens
        self.prefill_chunk_size = prefill_chunk_size
        self.page_size = page_size


class ModelRunner:
    """The compiled model on one device.

    CUDA artifacts built with Ferrum's kernels also export ``sample_tokens``: ``decode_sample`` /
    ``prefill_sample`` then sample on the GPU and return token ids, so only ids cross to the host.
    Those built since the sampler took a grammar bitmask also export ``sample_tokens_masked``
    (``samples_masked``): a constrained step then samples on the GPU too, the bitmask uploaded
    once the forward is queued. Their decode runs as CUDA graphs captured per batch size, planned
    for at most ``max_decode_batch`` sequences."""

    def __init__(self, artifact: LlmArtifact, device: str = "auto", params: list | None = None,
                 load_format: str = "auto"):
        """``params``: the weights as device tensors in the manifest's ``param_names`` order, for
        callers that make their own; otherwise ``load_format`` says where they come from: ``auto``
        the artifact's ``weights/``, ``dummy`` generated on the device (``runtime/dummy_weights.py``)."""
        if load_format not in LOAD_FORMATS:
            raise InvalidRequestError(f"load_format must be one of {', '.join(LOAD_FORMATS)}, got {load_format!r}",
                                      param="load_format")
        self.artifact = artifact
        self.config = artifact.config
        self.device = resolve_device(artifact.manifest, device)
        self.device_kind = artifact.manifest.target.device_type
        self._vm = artifact.load_library(self.device)
        if params is None:
            params = dummy_params(artifact, self.device) if load_format == "dummy" else self._load_params()
        self.params = params
        self._embed = self._vm["embed"]
        self._prefill = self._vm["batch_prefill"]
        self._decode = self._vm["batch_decode"]
        self._verify = self._vm["batch_verify"]
        functions = artifact.manifest.functions
        self._sample = self._vm["sample_tokens"] if "sample_tokens" in functions else None
        self._sample_masked = self._vm["sample_tokens_masked"] if "sample_tokens_masked" in functions else None
        self.max_decode_batch: int | None = artifact.manifest.extra.decode_max_batch
        self._begin = _builtin("vm.builtin.kv_state_begin_forward")
        self._end = _builtin("vm.builtin.kv_state_end_forward")
        self._free_pages = _builtin("vm.builtin.attention_kv_cache_get_num_available_pages")
        self._ones: dict[int, ShapeTuple] = {}  # decode append lengths per batch size
        self._token_buffer: tvm.runtime.Tensor | None = None
        self._param_buffer: tvm.runtime.Tensor | None = None
        self._mask_buffer: tvm.runtime.Tensor | None = None
        self.cache = None
        self.kv: KVCacheConfig | None = None
        self.total_pages = 0

    def _load_params(self):
        if not (self.artifact.weights_path / "tensor-cache.json").exists():
            raise ArtifactError(f"artifact {self.artifact.manifest.name} has no weights "
                                f"({self.artifact.manifest.extra.weights or 'weights/ missing'}); "
                                "--load-format dummy generates weights of its shapes")
        return self.artifact.load_weights(self.device)

    # -- KV cache ---------------------------------------------------------------------------
    def create_kv_cache(self, kv: KVCacheConfig) -> None:
        """(Re)create the paged KV cache; every sequence in the old one is gone."""
        self.cache = self._vm["create_paged_kv_cache"](
            ShapeTuple([kv.max_batch_size]),
            ShapeTuple([kv.max_total_tokens]),
            ShapeTuple([kv.prefill_chunk_size]),
            ShapeTuple([kv.page_size]),
            ShapeTuple([0]),
        )
        self.kv = kv
        self.total_pages = self.available_pages()  # TVM may allocate a spare page beyond the request
        # Each forward's token ids and sampling rows go through device buffers made once here:
        # a fresh device tensor per step is a device allocation and free every step.
        self._token_buffer = tvm.runtime.empty((max(kv.prefill_chunk_size, kv.max_batch_size),), "int32", self.device)
        self._param_buffer = tvm.runtime.empty((kv.max_batch_size, len(SAMPLE_PARAMS)), "float32", self.device)
        if self._sample_masked is not None:
            self._mask_buffer = tvm.runtime.empty((kv.max_batch_size, mask_words(self.config.vocab_size)), "int32",
                                                  self.device)

    def add_sequence(self, seq_id: int) -> None:
        _builtin("vm.builtin.kv_state_add_sequence")(self.cache, seq_id)

    def remove_sequence(self, seq_id: int) -> None:
        _builtin("vm.builtin.kv_state_remove_sequence")(self.cache, seq_id)

    def fork_sequence(self, parent: int, child: int, fork_pos: int = -1) -> None:
        """``child`` shares ``parent``'s first ``fork_pos`` tokens (all if -1) without copying pages."""
        _builtin("vm.builtin.kv_state_fork_sequence")(self.cache, parent, child, fork_pos)

    def popn(self, seq_id: int, n: int) -> None:
        """Drop the last ``n`` tokens of a sequence (rejected speculative tokens)."""
        _builtin("vm.builtin.kv_state_popn")(self.cache, seq_id, n)

    def sequence_length(self, seq_id: int) -> int:
        return int(_builtin("vm.builtin.attention_kv_cache_get_sequence_length")(self.cache, seq_id))

    def available_pages(self) -> int:
        return int(self._free_pages(self.cache))

    # -- forwards ---------------------------------------------------------------------------
    def _staged(self, buffer: tvm.runtime.Tensor | None, host: np.ndarray) -> tvm.runtime.Tensor:
        """``host`` on the device: in the front of ``buffer`` when it fits (the copy is synchronous
        and every forward ends by reading its results back, so no kernel still reads the buffer)."""
        if buffer is None or host.shape[0] > buffer.shape[0]:
            return tvm.runtime.tensor(host, self.device)
        view = buffer._create_view(host.shape, buffer.dtype)
        view.copyfrom(host)
        return view

    def _embed_tokens(self, tokens: np.ndarray) -> tvm.runtime.Tensor:
        vocab = self.config.vocab_size
        if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab):
            raise InvalidRequestError(f"token ids must be in [0, {vocab})")
        return self._embed(self._staged(self._token_buffer, tokens.astype(np.int32)), self.params)

    def _prefill_logits(self, seq_ids: Sequence[int], chunks: Sequence[Sequence[int]]) -> tvm.runtime.Tensor:
        lengths = [len(c) for c in chunks]
        total = sum(lengths)
        if total > self.kv.prefill_chunk_size:
            raise ValueError(f"prefill of {total} tokens exceeds the chunk size {self.kv.prefill_chunk_size}")
        tokens = np.concatenate([np.asarray(c, dtype=np.int32) for c in chunks])
        embeds = self._embed_tokens(tokens)._create_view((1, total, self.config.hidden_size))
        last = np.cumsum(lengths, dtype=np.int32) - 1
        self._begin(self.cache, _shape(*seq_ids), _shape(*lengths))
        logits, self.cache = self._prefill(embeds, tvm.runtime.tensor(last, self.device), self.cache, self.params)
        self._end(self.cache)
        return logits._create_view((len(seq_ids), self.config.vocab_size))

    def _decode_logits(self, seq_ids: Sequence[int], tokens: Sequence[int]) -> tvm.runtime.Tensor:
        b = len(seq_ids)
        if self.max_decode_batch is not None and b > self.max_decode_batch:
            raise ValueError(f"decode batch of {b} exceeds the artifact's maximum of {self.max_decode_batch}")
        embeds = self._embed_tokens(np.asarray(tokens, dtype=np.int32))._create_view((b, 1, self.config.hidden_size))
        ones = self._ones.get(b)
        if ones is None:
            ones = self._ones[b] = _shape(*([1] * b))
        self._begin(self.cache, _shape(*seq_ids), ones)
        logits, self.cache = self._decode(embeds, self.cache, self.params)
        self._end(self.cache)
        return logits._create_view((b, self.config.vocab_size))

    def prefill(self, seq_ids: Sequence[int], chunks: Sequence[Sequence[int]]) -> np.ndarray:
        """Append each sequence's chunk of tokens; return float32 logits (len(seq_ids), vocab)
        of each chunk's last token."""
        return self._prefill_logits(seq_ids, chunks).numpy()

    def decode(self, seq_ids: Sequence[int], tokens: Sequence[int]) -> np.ndarray:
        """Append one token to each sequence; return float32 logits (len(seq_ids), vocab)."""
        return self._decode_logits(seq_ids, tokens).numpy()

    @property
    def samples_on_device(self) -> bool:
        return self._sample is not None

    @property
    def samples_masked(self) -> bool:
        """Whether the device sampler takes a grammar bitmask (``masks`` of the ``*_sample`` calls)."""
        return self._sample_masked is not None

    def _require_sampler(self, masked: bool) -> None:
        if self._sample is None:
            raise InvalidRequestError("this artifact has no on-device sampler (rebuild it for CUDA)")
        if masked and self._sample_masked is None:
            raise InvalidRequestError("this artifact's on-device sampler takes no grammar mask (rebuild it)")

    def _sample_ids(self, logits: tvm.runtime.Tensor, params: np.ndarray,
                    masks: Callable[[], np.ndarray] | None) -> np.ndarray:
        rows = logits.shape[0]
        if params.shape != (rows, len(SAMPLE_PARAMS)):
            raise ValueError(f"sampling parameters must have shape ({rows}, {len(SAMPLE_PARAMS)}): {SAMPLE_PARAMS}")
        staged = self._staged(self._param_buffer, params.astype(np.float32))
        if masks is None:
            return self._sample(logits, staged).numpy()
        grid = masks()  # the forward is queued on the device: waiting here overlaps it
        words = mask_words(self.config.vocab_size)
        if grid.shape != (rows, words) or grid.dtype != np.int32:
            raise ValueError(f"grammar masks must be int32 of shape ({rows}, {words}), got {grid.dtype} {grid.shape}")
        return self._sample_masked(logits, staged, self._staged(self._mask_buffer, grid)).numpy()

    def prefill_sample(self, seq_ids: Sequence[int], chunks: Sequence[Sequence[int]], params: np.ndarray,
                       masks: Callable[[], np.ndarray] | None = None) -> np.ndarray:
        """``prefill``, then one token per sequence sampled on the device; ``params`` rows are
        (temperature, top_p, top_k, min_p, uniform), temperature 0 meaning greedy. ``masks``, when
        given, is called once the forward is queued and returns the int32 grammar bitmask rows
        ``[len(seq_ids), mask_words(vocab)]`` (all ones for a row without a grammar): the CPU
        computes them while the device runs the forward, and the device samples under them."""
        self._require_sampler(masks is not None)
        return self._sample_ids(self._prefill_logits(seq_ids, chunks), params, masks)

    def decode_sample(self, seq_ids: Sequence[int], tokens: Sequence[int], params: np.ndarray,
                      masks: Callable[[], np.ndarray] | None = None) -> np.ndarray:
        """``decode``, then one token per sequence sampled on the device (see ``prefill_sample``)."""
        self._require_sampler(masks is not None)
        return self._sample_ids(self._decode_logits(seq_ids, tokens), params, masks)

    def verify(self, seq_ids: Sequence[int], chunks: Sequence[Sequence[int]]) -> np.ndarray:
        """Like ``prefill``, but return logits after every appended token: (total tokens, vocab),
        chunks concatenated in order. Speculative decoding checks draft tokens with it."""
        lengths = [len(c) for c in chunks]
        total = sum(lengths)
        tokens = np.concatenate([np.asarray(c, dtype=np.int32) for c in chunks])
        embeds = self._embed_tokens(tokens)._create_view((1, total, self.config.hidden_size))
        self._begin(self.cache, _shape(*seq_ids), _shape(*lengths))
        logits, self.cache = self._verify(embeds, self.cache, self.params)
        self._end(self.cache)
        return logits.numpy().reshape(total, -1)

    def kv_bytes_per_token(self) -> int:
        return self.config.kv_bytes_per_token(np.dtype(self.artifact.model_dtype).itemsize)
