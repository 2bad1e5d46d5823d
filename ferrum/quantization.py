"""The quantization schemes an artifact can be built with.

Names follow MLC-LLM's convention: ``q<weight bits>f<activation float bits>``; ``q0`` means
unquantized weights. The spec is recorded in the manifest so the runtime knows the model dtype.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ferrum.errors import InvalidRequestError


@dataclass(frozen=True)
class QuantSpec:
    name: str
    model_dtype: str
    weight_bits: int
    group_size: int
    # int4 only: output rows interleaved in blocks of this many at compile time, so a CPU GEMV
    # loads one vector of words for that many rows at once (compile/quantize.py); 0 keeps (out, in).
    interleave: int = 0
    # Bits of the LM head: 0 keeps it in the model dtype (see compile/model/layers.py Embedding); 8 is
    # int8 with a scale per group (GGUF Q8_0, which SmolLM2's GGUF stores its tied embeddings in).
    head_bits: int = 0

    @property
    def quantized(self) -> bool:
        return self.weight_bits > 0

    @property
    def dtype_bytes(self) -> int:
        return {"float32": 4, "float16": 2}[self.model_dtype]

    def unquantized(self) -> QuantSpec:
        """The scheme for layers this one keeps in the model dtype (embeddings, LM head)."""
        return QuantSpec(self.name, self.model_dtype, 0, 0)

    def head(self) -> QuantSpec:
        """The scheme of the LM head (also when the embeddings are tied to it)."""
        if not self.head_bits:
            return self.unquantized()
        return QuantSpec(self.name, self.model_dtype, self.head_bits, self.group_size, self.interleave)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


QUANTIZATIONS: dict[str, QuantSpec] = {
    "q0f32": QuantSpec("q0f32", "float32", 0, 0),
    "q0f16": QuantSpec("q0f16", "float16", 0, 0),
    "q4f16": QuantSpec("q4f16", "float16", 4, 32),
    # CPU int4: the q4f16 weights (Q4_1 blocks exactly, scale/min rounded to float16 then held as
    # float32), rows interleaved by 16 (one AVX-512 vector), float32 activations and accumulation;
    # the LM head in int8 (Q8_0 blocks exactly). CPU builds only.
    "q4f32": QuantSpec("q4f32", "float32", 4, 32, interleave=16, head_bits=8),
}

# GPU builds of a scheme whose CPU layout is for CPU kernels. q4f32 on a GPU (vulkan adapters
# without ``shader-f16``): the q4f16 weights (Q4_1 blocks, scale/min rounded to float16, held as
# float32) in their stored (out, in) order, which the GPU's GEMV reads; the LM head in float32.
GPU_LAYOUTS: dict[str, QuantSpec] = {
    "q4f32": QuantSpec("q4f32", "float32", 4, 32),
}


def get_quantization(name: str, gpu: bool = False) -> QuantSpec:
    """The scheme ``name``; ``gpu``: as a GPU target builds it (``GPU_LAYOUTS``)."""
    if gpu and name in GPU_LAYOUTS:
        return GPU_LAYOUTS[name]
    try:
        return QUANTIZATIONS[name]
    except KeyError:
        raise InvalidRequestError(
            f"unknown quantization {name!r}; choose one of {', '.join(QUANTIZATIONS)}",
            param="quantization",
        ) from None
