"""Rebuild an artifact's ``weights/`` from its model source, and prove they are the same bytes.

Weights are most of an artifact (270 MB for SmolLM2 in fp16) while the library is a few MB. Where
moving the whole artifact is costly, move the library and manifest, regenerate the weights from the
source next to it, and the manifest's sha256s confirm the result is identical. Numpy only: works
on a machine with just the TVM runtime.

    python -m compile.restore_weights ARTIFACT_DIR MODEL_SOURCE
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from compile.reshard import reshard
from compile.sources import open_source
from compile.tensor_cache import write_tensor_cache
from compile.weights import convert_weights
from ferrum.errors import ArtifactError, FerrumError
from ferrum.manifest import Manifest, verify_files
from ferrum.model_config import DecoderConfig
from ferrum.quantization import QuantSpec


def restore_weights(artifact: Path, source: str) -> None:
    manifest = Manifest.load(artifact)
    model = open_source(source)
    if model.config != DecoderConfig.from_dict(manifest.model):  # older manifests lack newer fields
        raise ArtifactError(f"{source} is not the model {manifest.name} was compiled from")
    weights = artifact / "weights"
    shutil.rmtree(weights, ignore_errors=True)
    arrays = convert_weights(model, QuantSpec(**manifest.quantization))
    if manifest.extra.param_splits:  # parameters split under a binding limit (compile/model/split.py)
        layout = {name: (src, int(a), int(b)) for name, (src, a, b) in manifest.extra.param_splits.items()}
        arrays = reshard(arrays, manifest.extra.param_names, layout)
    names = write_tensor_cache(arrays, weights)
    if names != manifest.extra.param_names:
        raise ArtifactError("regenerated parameters differ from the compiled model's")
    verify_files(artifact, manifest)


def main() -> int:
    parser = argparse.ArgumentParser(description="Regenerate an artifact's weights from its source.")
    parser.add_argument("artifact", type=Path)
    parser.add_argument("source")
    args = parser.parse_args()
    try:
        restore_weights(args.artifact, args.source)
    except FerrumError as exc:
        print(f"restore_weights: error: {exc.message}", file=sys.stderr)
        return 1
    print(f"{args.artifact}: weights regenerated and verified against the manifest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
