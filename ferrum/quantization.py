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

    @property
    def quantized(self) -> bool:
        return self.weight_bits > 0

    @property
    def dtype_bytes(self) -> int:
        return {"float32": 4, "float16": 2}[self.model_dtype]

    def unquantized(self) -> QuantSpec:
        """The scheme for layers this one keeps in the model dtype (embeddings, LM head)."""
        return QuantSpec(self.name, self.model_dtype, 0, 0)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


QUANTIZATIONS: dict[str, QuantSpec] = {
    "q0f32": QuantSpec("q0f32", "float32", 0, 0),
    "q0f16": QuantSpec("q0f16", "float16", 0, 0),
    "q4f16": QuantSpec("q4f16", "float16", 4, 32),
    # CPU int4: the q4f16 weights (Q4_1 blocks exactly, scale/min rounded to float16 then held as float32)
    # with float32 activations and accumulation, the dequantization fused into the matmul.
    "q4f32": QuantSpec("q4f32", "float32", 4, 32),
}


def get_quantization(name: str) -> QuantSpec:
    try:
        return QUANTIZATIONS[name]
    except KeyError:
        raise InvalidRequestError(
            f"unknown quantization {name!r}; choose one of {', '.join(QUANTIZATIONS)}",
            param="quantization",
        ) from None
