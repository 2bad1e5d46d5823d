"""Compile the CUDA kernels with nvcc: an object file to link into model.so, or a standalone
shared library for the tuning harness (``python -m compile.kernels.build --out lib.so``).

The tile configurations measured on a GPU (``tuning/<sm>.json``) are compiled in as a table, so a
build never re-tunes, and the constants shared with Python (``constants.py``) as a generated
header. Outputs are cached under ``build/kernels`` keyed by the sources, the generated files, the
architectures and the flags: recompiling a model does not rebuild the kernels.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import tvm_ffi

from compile.cxx import compile_cxx
from compile.kernels.constants import HEADER_NAME, KINDS, OPS, constants_header
from ferrum.errors import FerrumError

KERNEL_DIR = Path(__file__).resolve().parent
SOURCE_DIR = KERNEL_DIR / "cuda"
TUNING_DIR = KERNEL_DIR / "tuning"
CACHE_DIR = KERNEL_DIR.parents[1] / "build" / "kernels"
TABLE_NAME = "tuning_table.inc"


def find_nvcc() -> str:
    nvcc = shutil.which("nvcc") or next((str(p) for p in sorted(Path("/usr/local").glob("cuda*/bin/nvcc"))), None)
    if nvcc is None:
        raise FerrumError("CUDA build needs nvcc (the CUDA toolkit) on PATH to compile device code")
    return nvcc


def cuda_root(nvcc: str) -> Path:
    """The toolkit folder of ``nvcc`` as nvcc itself reports it (nvcc is often a wrapper script)."""
    run = subprocess.run([nvcc, "--dryrun", "-c", "probe.cu"], capture_output=True, text=True, check=False)
    for line in (run.stdout + run.stderr).splitlines():
        if line.startswith("#$ TOP="):
            return Path(line.split("=", 1)[1].strip()).resolve()
    return Path(nvcc).resolve().parents[1]


def cudart_static(nvcc: str) -> Path:
    """The static CUDA runtime of the toolkit: model.so carries its own copy, so loading it needs
    only the driver."""
    root = cuda_root(nvcc)
    for candidate in (root / "lib64" / "libcudart_static.a", root / "lib" / "libcudart_static.a",
                      *root.glob("targets/*/lib/libcudart_static.a")):
        if candidate.exists():
            return candidate
    raise FerrumError(f"libcudart_static.a not found under {root}")


def tuning_table(archs: tuple[str, ...]) -> str:
    """C initializers ``{sm, kind, op, n, k, m_max, config}`` from the measured databases."""
    rows = []
    for arch in archs:
        path = TUNING_DIR / f"{arch}.json"
        if not path.exists():
            continue
        sm = int(arch[3:5])
        for entry in json.loads(path.read_text())["entries"]:
            rows.append(f"    {{{sm}, {KINDS[entry['kind']]}, {OPS[entry['op']]}, {entry['n']}, {entry['k']}, "
                        f"{entry['m_max']}, {entry['config']}}},")
    return "// generated from compile/kernels/tuning/*.json\n" + "".join(row + "\n" for row in rows)


def gencode_flags(archs: tuple[str, ...]) -> list[str]:
    """nvcc flags that embed machine code for each of ``archs`` (``sm_90a``)."""
    flags = []
    for arch in archs:
        flags += ["-gencode", f"arch=compute_{arch[3:]},code={arch}"]
    return flags


def _build(archs: tuple[str, ...], kind: str) -> Path:
    nvcc = find_nvcc()
    generated = {TABLE_NAME: tuning_table(archs), HEADER_NAME: constants_header()}
    sources = sorted(SOURCE_DIR.glob("*.cu*"))
    # hidden: only the __tvm_ffi_ exports leave model.so, so two artifacts in one process share nothing
    flags = ["-O3", "-std=c++17", "-Xcompiler=-fPIC", "-Xcompiler=-fvisibility=hidden", "-diag-suppress=177",
             *gencode_flags(archs),
             "-I", tvm_ffi.libinfo.find_include_path(), "-I", tvm_ffi.libinfo.find_dlpack_include_path()]
    digest = hashlib.sha256()
    for path in sources:
        digest.update(path.name.encode() + path.read_bytes())
    for name, text in generated.items():
        digest.update(name.encode() + text.encode())
    digest.update(" ".join([kind, *flags[:-4]]).encode())
    out = CACHE_DIR / f"ferrum_kernels-{digest.hexdigest()[:20]}.{kind}"
    if out.exists():
        return out
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for path in sources:
            shutil.copy(path, work / path.name)
        for name, text in generated.items():
            (work / name).write_text(text)
        target = work / f"out.{kind}"
        if kind == "o":
            cmd = [nvcc, "-c", *flags, "-o", str(target), str(work / "ferrum_kernels.cu")]
        else:
            cmd = [nvcc, "-shared", *flags, "-o", str(target), str(work / "ferrum_kernels.cu"),
                   "-cudart", "static"]
        run = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if run.returncode != 0:
            raise FerrumError(f"nvcc failed compiling Ferrum's CUDA kernels:\n{run.stderr[-4000:]}")
        partial = out.with_suffix(out.suffix + ".partial")
        shutil.copy(target, partial)
        partial.rename(out)
    return out


def build_object(archs: tuple[str, ...]) -> Path:
    """Relocatable object with the kernels for ``archs`` (e.g. ``("sm_90a",)``)."""
    return _build(tuple(archs), "o")


def build_shared(archs: tuple[str, ...]) -> Path:
    """Standalone shared library (static CUDA runtime) exporting the same functions."""
    return _build(tuple(archs), "so")


GLUE = """// generated by compile/kernels/build.py: this model's RoPE constants bound to the split-rotary kernel
#include <dlpack/dlpack.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/function.h>
namespace ferrum {{
void split_rotary(DLTensor*, DLTensor*, DLTensor*, DLTensor*, DLTensor*, int64_t, float, float);
}}
namespace {{
void split_rotary_model(DLTensor* qkv, DLTensor* pos, DLTensor* q, DLTensor* k, DLTensor* v, int64_t apply) {{
  ferrum::split_rotary(qkv, pos, q, k, v, apply, {theta!r}f, {scale!r}f);
}}
}}
TVM_FFI_DLL_EXPORT_TYPED_FUNC(ferrum_split_rotary, split_rotary_model);
"""


def build_rope_glue(theta: float, scale: float) -> Path:
    """Object exporting ``ferrum_split_rotary`` with this model's RoPE base and position scale:
    the paged KV cache calls its split-rotary function with tensors only."""
    source = GLUE.format(theta=float(theta), scale=float(scale))
    out = CACHE_DIR / f"rope_glue-{hashlib.sha256(source.encode()).hexdigest()[:20]}.o"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "glue.cc"
        src.write_text(source)
        return compile_cxx(out, src, ["-c", "-O2", "-fPIC", "-fvisibility=hidden", "-std=c++17",
                                      "-I", tvm_ffi.libinfo.find_include_path(),
                                      "-I", tvm_ffi.libinfo.find_dlpack_include_path()], "the RoPE glue")


def link_options(nvcc: str | None = None) -> list[str]:
    """Extra inputs for linking model.so around the kernel object: the static CUDA runtime."""
    return [str(cudart_static(nvcc or find_nvcc())), "-ldl", "-lrt", "-lpthread"]


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Build the standalone kernel library (for bench/kernel_bench.py)")
    parser.add_argument("--arch", nargs="+", default=["sm_90a"])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(build_shared(tuple(args.arch)), args.out)
    print(args.out)


if __name__ == "__main__":
    main()
