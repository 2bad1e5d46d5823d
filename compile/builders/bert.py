"""Builder for BERT sentence-embedding models (Hugging Face / sentence-transformers folders).

Writes the library (one ``embed`` function, dynamic batch and length), the weights as a TVM
tensor cache in the order the compiled function takes them, and ``tokenizer.json``. The
manifest's ``extra`` carries what the runtime needs to feed the function and what a client sees:
the input spec, the embedding size, the longest input (``max_length`` tokens, longer ones are
truncated), the pooling and normalization the function applies, and the parameter names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from compile.build import build_library, export_module
from compile.builders import Builder, BuildOutput
from compile.model.bert import EXPORTED_FUNCTIONS, BertEmbedder
from compile.sources.bert_source import BertSource
from compile.targets import BuildTarget
from compile.tensor_cache import write_tensor_cache
from ferrum.errors import FerrumError
from ferrum.manifest_extra import EmbeddingExtra, EmbeddingInputs, EmbeddingOutput
from ferrum.quantization import QuantSpec

QKV_SUFFIX = "attention.self.qkv"


def _weights(source: BertSource, param_names: list[str], dtypes: dict[str, str]) -> Iterator[tuple[str, np.ndarray]]:
    """Each compiled parameter from the checkpoint, in call order and in the dtype it was declared with."""
    for name in param_names:
        prefix, _, kind = name.rpartition(".")
        if prefix.endswith(QKV_SUFFIX):
            base = prefix[: -len("qkv")]
            array = np.concatenate([source.tensor(f"{base}{part}.{kind}") for part in ("query", "key", "value")])
        else:
            array = source.tensor(name)
        yield name, array.astype(dtypes[name])


def build_bert(
    source: BertSource, quant: QuantSpec, target: BuildTarget, staging: Path, progress: Callable[[str], None]
) -> BuildOutput:
    cfg = source.config
    progress(
        f"{source.name}: bert, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.pooling} pooling"
        f"{', L2-normalized' if cfg.normalize else ''}; {quant.name} for {target.info.kind} {target.info.arch or ''}".rstrip()
    )
    model = BertEmbedder(cfg, quant)
    dtypes = {name: str(param.dtype) for name, param in model.named_parameters()}
    mod, param_names = export_module(model)
    progress("lowering and compiling the encoder")
    library = build_library(mod, target, staging, progress)
    progress(f"writing {len(param_names)} weights")
    written = write_tensor_cache(_weights(source, param_names, dtypes), staging / "weights")
    if written != param_names:
        raise FerrumError("internal error: converted weights do not match the compiled model's parameters")
    (staging / "tokenizer.json").write_text(source.tokenizer_json)
    return BuildOutput(
        modality="embedding",
        architecture=cfg.architecture,
        model=cfg.to_dict(),
        functions=list(EXPORTED_FUNCTIONS),
        kernels=library.kernels,
        extra=EmbeddingExtra(
            param_names=param_names,
            inputs=EmbeddingInputs(
                function="embed",
                tensors=["input_ids", "token_type_ids", "attention_mask"],
                shape=["batch", "seq"],
                dtype="int32",
                padding="right",
                max_length=cfg.max_length,
            ),
            output=EmbeddingOutput(dtype="float32", shape=["batch", cfg.hidden_size]),
            embedding_dim=cfg.hidden_size,
            max_length=cfg.max_length,
            pooling=cfg.pooling,
            normalize=cfg.normalize,
        ),
    )


BUILDER = Builder(build=build_bert, quantizations=("q0f32", "q0f16"))
