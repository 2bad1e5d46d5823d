"""``make dist``'s wheels installed into a fresh virtual environment (their small dependencies from
the package index): TVM without its compiler, none of the compile stage's packages, and
``ferrum serve`` from that environment answers a chat completion and embeddings through the
official openai client, the wheels' content stays under 35 MB, and (where a Vulkan driver is) a
vulkan artifact runs from there on the wgpu-native the wheels carry."""

from __future__ import annotations

import ast
import asyncio
import ctypes.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from server_harness import ServeProcess

from compile.runtime_dist import RUNTIME_DEPENDENCIES, RUNTIME_PACKAGES, TVM_FFI_DIST, TVM_RUNTIME_DIST, \
    WGPU_NATIVE_DIST, build_dist

ROOT = Path(__file__).resolve().parents[1]
# distributions of the full project that a serving box must not get
COMPILE_ONLY = {"apache-tvm", "onnx", "onnxruntime", "gguf", "safetensors", "ferrum", "wgpu"}
# the distributions `make dist` writes; their Python dependencies come from the package index
DIST_WHEELS = ("ferrum-runtime", TVM_RUNTIME_DIST, TVM_FFI_DIST, WGPU_NATIVE_DIST)


def test_the_runtime_wheel_requires_exactly_what_its_packages_import():
    """Every third-party module that ferrum/ and runtime/ import is a declared requirement, and
    nothing else is (TVM comes in its own wheels; ``compile`` is refused by the CLI there)."""
    imported = set()
    for package in RUNTIME_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - set(RUNTIME_PACKAGES) - {"tvm", "tvm_ffi", "compile"}
    assert third_party == {re.sub(r"[-.]", "_", name) for name in RUNTIME_DEPENDENCIES}


def in_venv(venv: Path, code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TVM_USE_RUNTIME_LIB")}
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, env=env,
                          cwd=venv, timeout=120)


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    wheels = build_dist(tmp_path_factory.mktemp("dist"))
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                              "--quiet", *map(str, wheels)], capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    return venv


@pytest.mark.slow
def test_the_install_has_the_runtime_and_nothing_of_the_compiler(venv):
    assert not list(venv.rglob("libtvm_compiler*"))
    listing = in_venv(venv, "import json, importlib.metadata as m; "
                            "print(json.dumps(sorted(d.metadata['Name'].lower() for d in m.distributions())))")
    names = set(json.loads(listing.stdout))
    assert {*DIST_WHEELS, "numpy", "tokenizers", "aiohttp"} <= names
    assert not names & COMPILE_ONLY, names & COMPILE_ONLY
    probe = in_venv(venv, "import json, sys, tvm, runtime.server.serve, ferrum.cli\n"
                          "try:\n    import compile\nexcept ModuleNotFoundError:\n    compile = None\n"
                          "print(json.dumps({'runtime_only': bool(tvm.base._RUNTIME_ONLY), 'tvm': tvm.__file__,"
                          " 'compile': compile is not None}))")
    assert probe.returncode == 0, probe.stderr
    report = json.loads(probe.stdout)
    assert report["runtime_only"] and report["tvm"].startswith(str(venv)) and not report["compile"]
    refused = subprocess.run([str(venv / "bin" / "ferrum"), "compile", "smollm2"], capture_output=True, text=True,
                             cwd=venv, timeout=120)
    assert refused.returncode == 1 and "runtime-only install" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.slow
def test_ferrum_serve_from_the_install_answers_chat_and_embeddings(venv, smollm2_artifact, minilm_artifact):
    openai = pytest.importorskip("openai")
    server = ServeProcess([str(smollm2_artifact), str(minilm_artifact)], "--max-model-len", "1024",
                          "--kv-cache-tokens", "4096", program=[str(venv / "bin" / "ferrum")], cwd=venv, timeout=240)
    try:
        libraries = {line.split()[-1] for line in Path(f"/proc/{server.proc.pid}/maps").read_text().splitlines()
                     if "libtvm" in line}
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        chat = client.chat.completions.create(model=smollm2_artifact.name, max_tokens=16, temperature=0,
                                              messages=[{"role": "user", "content": "What is the capital of France?"}])
        texts = ["A cat sits on the mat.", "A kitten rests on a rug.", "Stock markets fell sharply today."]
        vectors = [d.embedding for d in client.embeddings.create(model=minilm_artifact.name, input=texts).data]
    finally:
        rc = server.terminate()
    assert libraries and all(path.startswith(str(venv)) for path in libraries), libraries
    assert not any("libtvm_compiler" in path for path in libraries)
    assert "Paris" in chat.choices[0].message.content
    assert [len(v) for v in vectors] == [384] * 3
    assert all(math.isclose(math.hypot(*v), 1.0, rel_tol=1e-4) for v in vectors)

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b))

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2
    assert rc == 0, server.proc.stdout.read()


SIZES = """
import json, importlib.metadata as m
sizes = {}
for name in %r:
    dist = m.distribution(name)
    files = [dist.locate_file(f) for f in dist.files if "__pycache__" not in f.parts]
    sizes[name] = sum(f.stat().st_size for f in files if f.is_file())
print(json.dumps(sizes))
"""


@pytest.mark.slow
def test_the_wheels_content_installs_in_under_35_mb(venv):
    """What the four wheels put on disk: every file their RECORDs list except the bytecode pip
    compiles at install (``__pycache__``, ~12 MB more, none with ``pip install --no-compile``);
    ferrum-runtime's own dependencies from the package index (numpy, tokenizers, aiohttp, ...) are
    not counted. Untrimmed (tvm_ffi's headers and sources, unstripped libraries) it was 34.7 MB
    without ferrum-runtime."""
    probe = in_venv(venv, SIZES % (DIST_WHEELS,))
    assert probe.returncode == 0, probe.stderr
    sizes = json.loads(probe.stdout)
    assert sizes[WGPU_NATIVE_DIST] > 5e6 and sizes[TVM_RUNTIME_DIST] > 10e6, sizes  # the libraries are there
    assert sum(sizes.values()) < 35e6, sizes
    ffi = next(venv.rglob("site-packages/tvm_ffi"))
    assert not (ffi / "include").exists() and not list(ffi.rglob("*.pyx")) and (ffi / "lib" / "libtvm_ffi_testing.so").exists()


VULKAN = r"""
import asyncio, json, sys
from ferrum.types import EngineConfig, InferenceRequest, SamplingParams
from runtime.batch_engine import ContinuousBatchEngine

engine = ContinuousBatchEngine(EngineConfig(artifact_path=sys.argv[1], device="vulkan", max_model_len=256))
request = InferenceRequest(prompt="hello world", sampling_params=SamplingParams.greedy(max_tokens=8, ignore_eos=True))
tokens = asyncio.run(engine.infer(request)).tokens
maps = open("/proc/self/maps").read().splitlines()
print(json.dumps({"tokens": tokens, "wgpu_python": "wgpu" in sys.modules,
                  "wgpu_native": sorted({l.split()[-1] for l in maps if "libwgpu_native" in l})}))
"""


@pytest.mark.slow
@pytest.mark.skipif(ctypes.util.find_library("vulkan") is None,
                    reason="no Vulkan loader (apt-get install mesa-vulkan-drivers)")
def test_a_vulkan_artifact_runs_from_the_install_on_the_wheels_wgpu_native(venv, tiny_vulkan, tiny_artifact):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TVM_USE_RUNTIME_LIB")}
    result = subprocess.run([str(venv / "bin" / "python"), "-c", VULKAN, str(tiny_vulkan)], capture_output=True,
                            text=True, env=env, cwd=venv, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(report["wgpu_native"]) == 1 and report["wgpu_native"][0].startswith(str(venv)), report
    assert not report["wgpu_python"]
    from ferrum.types import EngineConfig, InferenceRequest, SamplingParams
    from runtime.batch_engine import ContinuousBatchEngine

    cpu = ContinuousBatchEngine(EngineConfig(artifact_path=str(tiny_artifact), max_model_len=256))
    try:
        request = InferenceRequest(prompt="hello world",
                                   sampling_params=SamplingParams.greedy(max_tokens=8, ignore_eos=True))
        want = asyncio.run(cpu.infer(request)).tokens
    finally:
        asyncio.run(cpu.shutdown())
    assert report["tokens"] == want and len(want) == 8
