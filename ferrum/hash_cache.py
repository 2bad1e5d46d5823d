"""sha256 of artifact files, remembered per inode so opening an artifact does not re-hash it.

Every open verifies each file's sha256 against the manifest. Hashing the weights costs ~0.2 s per
100 MB on a small CPU, paid on every ``ferrum generate``/``chat``/``serve`` start and by the compile
stage's ``--skip-existing`` check. Like git's index and make, the cache trusts a file whose identity
and status are unchanged: it keys a digest by (device, inode) and keeps it only while the size,
modification time and *change* time are the same. The change time cannot be set from user space,
so any write to the file, or a ``touch`` that puts the old modification time back, invalidates it.

The cache is one JSON file in the user's cache folder (``$FERRUM_CACHE_DIR``, else
``$XDG_CACHE_HOME/ferrum``, else ``~/.cache/ferrum``); artifacts stay read-only. An unreadable or
unwritable cache only means hashing again. ``FERRUM_HASH_CACHE=0`` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path

_lock = threading.Lock()
_memory: dict[str, list] | None = None  # the file's entries, read once per process
_MAX_ENTRIES = 4096


def cache_path() -> Path:
    """Where the digests are kept (see the module docstring)."""
    root = os.environ.get("FERRUM_CACHE_DIR")
    if root:
        return Path(root) / "hashes.json"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ferrum" / "hashes.json"


def _enabled() -> bool:
    return os.environ.get("FERRUM_HASH_CACHE", "1") != "0"


def _stamp(st: os.stat_result) -> list:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _key(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}"


def _entries() -> dict[str, list]:
    global _memory
    if _memory is None:
        try:
            data = json.loads(cache_path().read_text())
            _memory = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            _memory = {}
    return _memory


def _hash(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """The file's sha256: from the cache while the file is unchanged, else hashed (and remembered)."""
    if not _enabled():
        return _hash(path)
    before = os.stat(path)
    with _lock:
        entry = _entries().get(_key(before))
    if entry is not None and entry[:3] == _stamp(before):
        return entry[3]
    digest = _hash(path)
    after = os.stat(path)
    if _stamp(after) == _stamp(before):  # not written to while it was read
        with _lock:
            _entries()[_key(after)] = [*_stamp(after), digest]
            _save()
    return digest


def _save() -> None:
    """Write the entries atomically (merged with what other processes wrote meanwhile)."""
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            on_disk = json.loads(path.read_text())
        except (OSError, ValueError):
            on_disk = {}
        if isinstance(on_disk, dict):
            on_disk.update(_entries())
            _entries().update(on_disk)
        while len(_entries()) > _MAX_ENTRIES:  # the oldest first: files long deleted or rewritten
            del _entries()[next(iter(_entries()))]
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".hashes-", suffix=".json")
        with os.fdopen(fd, "w") as handle:
            json.dump(_entries(), handle)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: the cache is an optimisation, hashing still verifies
