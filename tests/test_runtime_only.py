"""The runtime works where TVM has no compiler, and never imports the compiler itself."""

from __future__ import annotations

import ast
import json
import os
import site
import subprocess
import sys
from pathlib import Path

from compile.runtime_bundle import link_runtime_tree

ROOT = Path(__file__).resolve().parents[1]
COMPILER_MODULES = ("tvm.relax", "tvm.tirx", "tvm.s_tir", "tvm.target", "tvm.te", "tvm.topi", "compile")


def test_runtime_sources_never_import_the_compiler():
    for path in sorted((ROOT / "runtime").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for name in names:
                assert not name.startswith(COMPILER_MODULES), f"{path.name} imports {name}"


SCRIPT = r"""
import asyncio, json, sys
import tvm
from tvm.base import _LOADED_LIBS
from ferrum.types import EngineConfig, InferenceRequest, SamplingParams
from runtime.batch_engine import ContinuousBatchEngine

engine = ContinuousBatchEngine(EngineConfig(artifact_path=sys.argv[1]))
prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
response = asyncio.run(engine.infer(InferenceRequest(prompt=prompt, sampling_params=SamplingParams.greedy(max_tokens=12))))
print(json.dumps({
    "runtime_only": tvm.base._RUNTIME_ONLY,
    "libs": sorted(_LOADED_LIBS),
    "tvm_file": tvm.__file__,
    "loaded": sorted(m for m in sys.modules if m.startswith(("tvm.relax", "tvm.s_tir", "compile"))),
    "tokens": response.tokens,
    "text": response.text,
}))
"""


def test_generation_with_a_tvm_that_has_no_compiler(tmp_path, smollm2_artifact):
    """A site folder with everything installed except TVM's compiler library and dist metadata,
    run with ``python -S`` so the full install is invisible."""
    site_dir = tmp_path / "site"
    link_runtime_tree(site_dir)
    packages = Path(site.getsitepackages()[0])
    for entry in packages.iterdir():
        if entry.name == "tvm" or entry.name.startswith("apache_tvm-") or entry.suffix == ".pth":
            continue
        (site_dir / entry.name).symlink_to(entry)
    env = {**os.environ, "PYTHONPATH": f"{site_dir}:{ROOT}"}
    env.pop("TVM_USE_RUNTIME_LIB", None)
    result = subprocess.run(
        [sys.executable, "-S", "-c", SCRIPT, str(smollm2_artifact)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["tvm_file"].startswith(str(site_dir))
    assert report["runtime_only"] is True
    assert "tvm_compiler" not in report["libs"]
    assert report["loaded"] == []
    assert "Paris" in report["text"]


def test_forced_runtime_only_mode_matches_full_tvm(smollm2_artifact):
    """``TVM_USE_RUNTIME_LIB=1`` in the full install gives the same greedy tokens."""
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(smollm2_artifact)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    forced = json.loads(result.stdout.strip().splitlines()[-1])
    assert forced["runtime_only"] is True and forced["loaded"] == []

    env.pop("TVM_USE_RUNTIME_LIB")
    full = subprocess.run([sys.executable, "-c", SCRIPT, str(smollm2_artifact)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]
    assert json.loads(full.stdout.strip().splitlines()[-1])["tokens"] == forced["tokens"]
