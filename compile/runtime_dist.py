"""``make dist``: wheels that install Ferrum's serving stage on a box without the TVM compiler.

Four wheels, written into one folder:

- ``ferrum-runtime``: the ``ferrum`` and ``runtime`` packages and the ``ferrum`` command (no
  ``compile``); it requires only what those packages import (``RUNTIME_DEPENDENCIES``, version
  specifiers taken from pyproject.toml) and ``ferrum-tvm-runtime``;
- ``ferrum-tvm-runtime``: the installed ``tvm`` package without its compiler
  (``runtime_bundle.runtime_files``), with apache-tvm's licence files and base requirements;
- ``apache-tvm-ffi``: the installed ``tvm_ffi``, repacked without what only builds extensions
  against it (``FFI_BUILD_ONLY``: headers, C++ and Cython sources, CMake files);
- ``ferrum-wgpu-native``: wgpu-native's shared library alone, at the path the runtime loads it
  from (``wgpu/resources/``, see ``runtime/tvm_env.py``), taken from the installed, pinned ``wgpu``
  (whose Python the runtime never imports), for vulkan artifacts.

The wheels hold no ``__pycache__`` and, where ``strip`` is on the PATH, their shared objects are
stripped (``strip --strip-unneeded``: the symbol tables a debugger reads, not the dynamic ones a
loader links against). The TVM wheels are built from the packages installed here, so they carry
this machine's Python version and platform tags and install only where the same wheels would.
Install them into an environment that does not also hold ``apache-tvm`` or ``wgpu``: they own the
``tvm`` and ``wgpu`` folders too.

    python -m compile.runtime_dist dist/
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import shutil
import subprocess
import tempfile
import tomllib
import zipfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

import ferrum
from compile.runtime_bundle import runtime_files

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_PACKAGES = ("ferrum", "runtime")
PACKAGE_DATA = {"runtime/server": ("*.html",)}
# distributions (as pyproject.toml names them) that ferrum/ and runtime/ import; TVM comes separately
# (ml_dtypes is TVM's, listed for pyproject.toml's pin on it)
RUNTIME_DEPENDENCIES = ("numpy", "ml_dtypes", "tokenizers", "aiohttp", "jinja2", "soundfile", "prometheus_client",
                        "llguidance")
TVM_DIST, TVM_FFI_DIST, TVM_RUNTIME_DIST = "apache-tvm", "apache-tvm-ffi", "ferrum-tvm-runtime"
WGPU_DIST, WGPU_NATIVE_DIST = "wgpu", "ferrum-wgpu-native"
WGPU_NATIVE_LIB = "wgpu/resources/libwgpu_native-release.so"
# tvm_ffi's folders and files that only compiling against it uses (its own Python imports none)
FFI_BUILD_ONLY = {"include", "src", "3rdparty", "cython", "share", "CMakeLists.txt"}
# dist-info files that describe one installation, not the package
_INSTALL_RECORDS = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
# zip timestamps fixed so that the same inputs give the same bytes
_EPOCH = (1980, 1, 1, 0, 0, 0)


def build_dist(out: Path) -> list[Path]:
    """Write the four wheels into ``out``, replacing earlier builds of them; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    ours = {_wheel_name(name) for name in ("ferrum-runtime", TVM_RUNTIME_DIST, TVM_FFI_DIST, WGPU_NATIVE_DIST)}
    for old in out.glob("*.whl"):  # another version beside the new one would make `pip install dist/*.whl` fail
        if old.name.split("-")[0] in ours:
            old.unlink()
    tvm = metadata.distribution(TVM_DIST)
    return [_ferrum_runtime_wheel(out, tvm.version), _tvm_runtime_wheel(out, tvm), _tvm_ffi_wheel(out),
            _wgpu_native_wheel(out)]


def runtime_requirements() -> list[str]:
    """pyproject.toml's requirement strings for ``RUNTIME_DEPENDENCIES``."""
    specs = {_canonical(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0]): spec
             for spec in _pyproject()["project"]["dependencies"]}
    missing = [name for name in RUNTIME_DEPENDENCIES if _canonical(name) not in specs]
    if missing:
        raise ValueError(f"pyproject.toml does not list {missing}")
    return [specs[_canonical(name)] for name in RUNTIME_DEPENDENCIES]


def _ferrum_runtime_wheel(out: Path, tvm_version: str) -> Path:
    files = []
    for package in RUNTIME_PACKAGES:
        files += [(p.relative_to(ROOT).as_posix(), p) for p in sorted((ROOT / package).rglob("*.py"))
                  if "__pycache__" not in p.parts]
    for folder, patterns in PACKAGE_DATA.items():
        files += [(p.relative_to(ROOT).as_posix(), p) for pattern in patterns for p in sorted((ROOT / folder).glob(pattern))]
    fields = ["Name: ferrum-runtime", f"Version: {ferrum.__version__}",
              "Summary: Ferrum's serving stage: loads compiled artifacts with the TVM runtime alone",
              f"Requires-Python: {_pyproject()['project']['requires-python']}",
              *(f"Requires-Dist: {spec}" for spec in runtime_requirements()),
              f"Requires-Dist: {TVM_RUNTIME_DIST}=={tvm_version}"]
    return _write_wheel(out, "ferrum-runtime", ferrum.__version__, ["py3-none-any"], _metadata(fields), files,
                        purelib=True, entry_points="[console_scripts]\nferrum = ferrum.cli:main\n")


def _tvm_runtime_wheel(out: Path, tvm: metadata.Distribution) -> Path:
    site = Path(tvm.locate_file(""))
    dist_info = f"{_wheel_name(TVM_RUNTIME_DIST)}-{tvm.version}.dist-info"
    licenses = [f for f in tvm.files or [] if f.parts[0].endswith(".dist-info") and "licenses" in f.parts]
    files = [(rel.as_posix(), src) for rel, src in runtime_files()]
    files += [(f"{dist_info}/licenses/{f.name}", site / f) for f in licenses]
    fields = [f"Name: {TVM_RUNTIME_DIST}", f"Version: {tvm.version}",
              f"Summary: Apache TVM {tvm.version} without its compiler (libtvm_compiler.so), repacked by Ferrum",
              "License: Apache-2.0", f"Requires-Python: {tvm.metadata['Requires-Python']}",
              *(f"Requires-Dist: {req}" for req in tvm.requires or [] if "extra ==" not in req)]
    return _write_wheel(out, TVM_RUNTIME_DIST, tvm.version, _tags(tvm), _metadata(fields), files, purelib=False)


def _tvm_ffi_wheel(out: Path) -> Path:
    """The installed ``tvm_ffi`` as the wheel it was installed from, less ``FFI_BUILD_ONLY`` (files
    outside site-packages, such as generated scripts, are left out: pip makes them again from
    entry_points.txt)."""
    dist = metadata.distribution(TVM_FFI_DIST)
    site = Path(dist.locate_file(""))
    files = []
    for entry in dist.files or []:
        if entry.as_posix().startswith("..") or "__pycache__" in entry.parts:
            continue
        if entry.parts[0] == "tvm_ffi" and len(entry.parts) > 1 and entry.parts[1] in FFI_BUILD_ONLY:
            continue
        if entry.parts[0].endswith(".dist-info") and entry.name in _INSTALL_RECORDS | {"METADATA", "WHEEL"}:
            continue
        files.append((entry.as_posix(), site / entry))
    return _write_wheel(out, dist.metadata["Name"], dist.version, _tags(dist), dist.read_text("METADATA"), files,
                        purelib=False)


def _wgpu_native_wheel(out: Path) -> Path:
    """wgpu-native's library from the installed ``wgpu`` (its version), with wgpu's licence file."""
    wgpu = metadata.distribution(WGPU_DIST)
    site = Path(wgpu.locate_file(""))
    library = site / WGPU_NATIVE_LIB
    if not library.is_file():
        raise FileNotFoundError(f"{library}: the installed wgpu {wgpu.version} has no wgpu-native library")
    dist_info = f"{_wheel_name(WGPU_NATIVE_DIST)}-{wgpu.version}.dist-info"
    licenses = [f for f in wgpu.files or [] if f.parts[0].endswith(".dist-info") and "licenses" in f.parts]
    files = [(WGPU_NATIVE_LIB, library), *((f"{dist_info}/licenses/{f.name}", site / f) for f in licenses)]
    fields = [f"Name: {WGPU_NATIVE_DIST}", f"Version: {wgpu.version}",
              f"Summary: wgpu-native's shared library from wgpu {wgpu.version}, without wgpu's Python, "
              "repacked by Ferrum", "License: wgpu-native: MIT OR Apache-2.0; wgpu-py: BSD-2-Clause",
              f"Requires-Python: {wgpu.metadata['Requires-Python']}"]
    return _write_wheel(out, WGPU_NATIVE_DIST, wgpu.version, _tags(wgpu), _metadata(fields), files, purelib=False)


def _shipped_bytes(src: Path) -> bytes:
    """A file's bytes as the wheel carries them: shared objects stripped where ``strip`` exists."""
    if not (src.suffix == ".so" or ".so." in src.name) or shutil.which("strip") is None:
        return src.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        stripped = Path(tmp) / src.name
        subprocess.run(["strip", "--strip-unneeded", "-o", str(stripped), str(src)], check=True,
                       capture_output=True, timeout=300)
        return stripped.read_bytes()


def _metadata(fields: list[str]) -> str:
    return "\n".join(["Metadata-Version: 2.1", *fields]) + "\n"


def _write_wheel(out: Path, name: str, version: str, tags: list[str], metadata_text: str,
                 files: Iterable[tuple[str, Path]], *, purelib: bool, entry_points: str | None = None) -> Path:
    stem = f"{_wheel_name(name)}-{version}"
    dist_info = f"{stem}.dist-info"
    path = out / f"{stem}-{_compressed_tags(tags)}.whl"
    wheel_text = "\n".join(["Wheel-Version: 1.0", "Generator: ferrum compile.runtime_dist",
                            f"Root-Is-Purelib: {'true' if purelib else 'false'}", *(f"Tag: {t}" for t in tags)]) + "\n"
    record: list[str] = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:

        def add(arcname: str, data: bytes, mode: int = 0o644, hashed: bool = True) -> None:
            info = zipfile.ZipInfo(arcname, _EPOCH)
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(info, data)
            if hashed:
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                record.append(f"{arcname},sha256={digest},{len(data)}")

        for arcname, src in files:
            add(arcname, _shipped_bytes(src), 0o755 if src.stat().st_mode & 0o111 else 0o644)
        add(f"{dist_info}/METADATA", metadata_text.encode())
        add(f"{dist_info}/WHEEL", wheel_text.encode())
        if entry_points:
            add(f"{dist_info}/entry_points.txt", entry_points.encode())
        record.append(f"{dist_info}/RECORD,,")
        add(f"{dist_info}/RECORD", ("\n".join(record) + "\n").encode(), hashed=False)
    return path


def _tags(dist: metadata.Distribution) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in dist.read_text("WHEEL").splitlines() if line.startswith("Tag:")]


def _compressed_tags(tags: list[str]) -> str:
    """``py3-none-a``, ``py3-none-b`` → ``py3-none-a.b`` (the wheel file name's tag set)."""
    parts = [sorted({t.split("-")[i] for t in tags}, key=[t.split("-")[i] for t in tags].index) for i in range(3)]
    return "-".join(".".join(p) for p in parts)


def _wheel_name(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=ROOT / "dist")
    args = parser.parse_args()
    for path in build_dist(args.out):
        print(f"{path}: {path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
