"""What a cold start skips: re-hashing unchanged artifact files, reading the model and importing TVM
for ``--skip-existing``, and copying the weights on the CPU (they are memory-mapped)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ferrum import hash_cache

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FERRUM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(hash_cache, "_memory", None)
    return tmp_path / "cache" / "hashes.json"


def test_a_digest_is_remembered_and_reused_without_reading(tmp_path, fresh_cache, monkeypatch):
    path = tmp_path / "w.bin"
    path.write_bytes(b"weights" * 1000)
    assert hash_cache.file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert fresh_cache.is_file()
    monkeypatch.setattr(hash_cache, "_memory", None)  # as a new process: read back from the file

    def no_reading(_path):
        raise AssertionError("an unchanged file was hashed again")

    monkeypatch.setattr(hash_cache, "_hash", no_reading)
    assert hash_cache.file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_rewrite_that_restores_size_and_mtime_is_still_noticed(tmp_path, fresh_cache):
    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 4096)
    before = hash_cache.file_sha256(path)
    st = path.stat()
    path.write_bytes(b"b" * 4096)  # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # modification time put back; the change time moves
    after = hash_cache.file_sha256(path)
    assert after != before
    assert after == hashlib.sha256(b"b" * 4096).hexdigest()


def test_an_unwritable_cache_only_costs_hashing(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FERRUM_CACHE_DIR", str(blocker / "sub"))
    monkeypatch.setattr(hash_cache, "_memory", None)
    path = tmp_path / "w.bin"
    path.write_bytes(b"x")
    assert hash_cache.file_sha256(path) == hashlib.sha256(b"x").hexdigest()


def test_skip_existing_answers_from_the_index_without_tvm(tiny_llama, tiny_artifact, fresh_cache):
    """The compile recorded its request; the CLI finds the artifact again without importing TVM,
    and a changed source is a different request."""
    root = tiny_artifact.parent
    index = json.loads((root / ".compile-index.json").read_text())
    assert tiny_artifact.name in index.values()
    probe = (
        "import sys\n"
        "from ferrum.cli import main\n"
        f"code = main(['compile', {str(tiny_llama)!r}, '--target', 'llvm', '--quant', 'q0f32', "
        f"'--output', {str(root)!r}, '--skip-existing'])\n"
        "assert code == 0\n"
        "assert 'tvm' not in sys.modules and 'gguf' not in sys.modules, 'the quick path imported TVM'\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "FERRUM_CACHE_DIR": str(fresh_cache.parent)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tiny_artifact)

    from compile.compile_index import quick_skip

    assert quick_skip(str(tiny_llama), "llvm", "q0f32", None, root, None) == tiny_artifact
    assert quick_skip(str(tiny_llama), "llvm", "q4f32", None, root, None) is None  # other options
    config = tiny_llama / "config.json"
    st = config.stat()
    os.utime(config, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        assert quick_skip(str(tiny_llama), "llvm", "q0f32", None, root, None) is None  # the source changed
    finally:
        os.utime(config, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_request_with_defaults_finds_what_explicit_options_built(tiny_llama, tiny_artifact, fresh_cache,
                                                                      monkeypatch):
    """``make run`` asks with the defaults, ``make test`` with ``--target llvm``: the same artifact.
    The first defaults request reads the model, finds the resolved request's artifact without
    building, and records itself for the quick path."""
    from compile import compile_model as cm
    from compile.compile_index import quick_skip

    root = tiny_artifact.parent
    assert quick_skip(str(tiny_llama), "llvm", None, None, root, None) is None

    def no_build(*_args, **_kwargs):
        raise AssertionError("the artifact was built again")

    monkeypatch.setattr(cm, "get_builder", lambda arch, real=cm.get_builder: _NoBuild(real(arch), no_build))
    assert cm.compile_model(str(tiny_llama), "llvm", None, output_root=root, skip_existing=True) == tiny_artifact
    assert quick_skip(str(tiny_llama), "llvm", None, None, root, None) == tiny_artifact


class _NoBuild:
    """A builder whose ``build`` fails the test; everything else is the real builder's."""

    def __init__(self, real, build):
        self._real, self.build = real, build

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_cpu_weights_are_mapped_views_equal_to_tvms_loader(tiny_artifact):
    import tvm

    from ferrum.manifest import Manifest
    from runtime.vm_loader import load_params

    names = Manifest.load(tiny_artifact).extra.param_names
    weights = tiny_artifact / "weights"
    mapped = load_params(weights, names, tvm.cpu())
    get = tvm.get_global_func
    get("vm.builtin.tensor_cache.load")(str(weights), 1, 0)
    try:
        loaded = get("vm.builtin.param_array_from_cache_by_name")(names)
    finally:
        get("vm.builtin.tensor_cache.clear")()
    assert len(mapped) == len(loaded) == len(names)
    for a, b in zip(mapped, loaded, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    shards = {str(p.resolve()) for p in weights.glob("params_shard_*.bin")}
    for tensor in mapped:  # each tensor's data lies in a mapping of a shard file: nothing was copied
        address = np.from_dlpack(tensor).ctypes.data
        assert _mapped_file(address) in shards


def _mapped_file(address: int) -> str | None:
    """The file mapped at ``address`` in this process (Linux /proc/self/maps), or None."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= address < end:
            return fields[5] if len(fields) == 6 else None
    return None


@pytest.mark.slow
def test_an_artifact_the_index_does_not_record_for_this_request_is_rebuilt(tiny_llama, tmp_path):
    """Same name, unknown provenance (an older compiler, say): --skip-existing rebuilds it once."""
    from compile.compile_model import compile_model
    from ferrum.manifest import Manifest

    first = compile_model(str(tiny_llama), "llvm", "q0f32", output_root=tmp_path)
    built = Manifest.load(first).created_at
    assert compile_model(str(tiny_llama), "llvm", "q0f32", output_root=tmp_path, skip_existing=True) == first
    assert Manifest.load(first).created_at == built  # recorded: reused
    (tmp_path / ".compile-index.json").write_text("{}")
    again = compile_model(str(tiny_llama), "llvm", "q0f32", output_root=tmp_path, skip_existing=True)
    assert again == first and Manifest.load(again).created_at != built
