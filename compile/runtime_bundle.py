"""Package the TVM runtime a serving box needs: the ``tvm`` package without its compiler.

A serving box gets ``tvm`` minus ``lib/libtvm_compiler.so`` (250 MB), ``3rdparty/``, ``src/`` and
``include/``, plus ``tvm_ffi``. ``import tvm`` then runs runtime-only. Used by the runtime-only
test, by ``make dist`` (``compile/runtime_dist.py``, as a wheel) and to carry the runtime to the GPU
machine (as this tarball).

    python -m compile.runtime_bundle OUT.tar.gz [--tvm-ffi-wheel apache_tvm_ffi-...-cp312-...whl]
"""

from __future__ import annotations

import argparse
import io
import os
import tarfile
import zipfile
from pathlib import Path

import tvm

COMPILER_ONLY = {"3rdparty", "src", "include", "__pycache__"}
COMPILER_LIBS = {"libtvm_compiler.so"}


def tvm_package_dir() -> Path:
    return Path(tvm.__file__).resolve().parent


def runtime_files(pkg: Path | None = None):
    """(path in package, absolute path) of every runtime file of the ``tvm`` package."""
    pkg = pkg or tvm_package_dir()
    for root, dirs, files in os.walk(pkg):
        rel_root = Path(root).relative_to(pkg)
        dirs[:] = [d for d in dirs if not (rel_root == Path(".") and d in COMPILER_ONLY) and d != "__pycache__"]
        for name in files:
            if name in COMPILER_LIBS:
                continue
            yield Path("tvm") / rel_root / name, Path(root) / name


def link_runtime_tree(dest: Path) -> Path:
    """Recreate ``tvm`` under ``dest`` as symlinks to the installed files, compiler left out."""
    for rel, src in runtime_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(src)
    return dest / "tvm"


def write_bundle(out: Path, tvm_ffi_wheel: Path | None = None) -> None:
    """A tar.gz holding ``tvm`` (runtime only) and, from a wheel, ``tvm_ffi`` for the target Python."""
    with tarfile.open(out, "w:gz") as tar:
        for rel, src in runtime_files():
            tar.add(src, arcname=str(rel))
        if tvm_ffi_wheel:
            with zipfile.ZipFile(tvm_ffi_wheel) as wheel:
                for info in wheel.infolist():
                    if info.is_dir():
                        continue
                    data = wheel.read(info)
                    member = tarfile.TarInfo(info.filename)
                    member.size = len(data)
                    member.mode = 0o755 if info.filename.endswith(".so") else 0o644
                    tar.addfile(member, io.BytesIO(data))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--tvm-ffi-wheel", type=Path, default=None)
    args = parser.parse_args()
    write_bundle(args.out, args.tvm_ffi_wheel)
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
