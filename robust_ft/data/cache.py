"""On-disk cache of distorted splits: uint8 ``.npy`` files, memory-mapped, written atomically.

A file's name is a readable prefix plus a sha256 of its key (dataset, split, kind, level, seed,
...) and ``CODE_VERSION``; a file that is truncated, corrupt, or of the wrong dtype or shape is
reported with a warning and regenerated.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

CODE_VERSION = "distortions-1"
"""Bump when the distortion maths changes: every cached split is then regenerated."""

_PREFIX_KEYS = ("dataset", "split", "kind", "level", "seed")
_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _slug(value: Any) -> str:
    """A short filename-safe rendering of a key value."""
    text = "-".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_")[:40]


def cache_path(cache_dir: str | Path, **key_parts: Any) -> Path:
    """The cache file of a key: ``<dataset>-<split>-<kind>-<level>-<seed>-<sha256[:16]>.npy``."""
    blob = json.dumps({"key": key_parts, "code_version": CODE_VERSION}, sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    prefix = [_slug(key_parts[k]) for k in _PREFIX_KEYS if k in key_parts]
    return Path(cache_dir) / ("-".join([*prefix, digest]) + ".npy")


def _problem(path: Path, expected_shape: tuple | None) -> str | None:
    """Why the .npy at path is unusable (None when it is a complete uint8 array of that shape)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in _HEADER_READERS:
                return f"unsupported .npy format version {version}"
            shape, _, dtype = _HEADER_READERS[version](f)
            data_start = f.tell()
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        return f"unreadable header ({err})"
    if dtype != np.uint8:
        return f"dtype {dtype}, expected uint8"
    if expected_shape is not None and tuple(shape) != tuple(expected_shape):
        return f"shape {tuple(shape)}, expected {tuple(expected_shape)}"
    size, expected_size = path.stat().st_size, data_start + int(np.prod(shape)) * dtype.itemsize
    if size != expected_size:
        return f"{size} bytes, expected {expected_size} (truncated or padded)"
    return None


def _umask() -> int:
    """The process's umask (read, not changed, where /proc has it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc: the classic read-by-setting (briefly process-wide)
    os.umask(mask)
    return mask


def _temp_file(path: Path) -> tuple[int, str]:
    """A temp file next to ``path``, mode 0666 minus the umask (``mkstemp`` makes it 0600)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise CacheNotWritableError(
            f"cannot write the cache in {path.parent} ({err.strerror}); the data directory is "
            "read-only or not yours. Point the cache at a writable directory with "
            "--data.init_args.cache_dir DIR (or ROBUST_FT_CACHE_DIR=DIR for own ImageFolder data)"
        ) from None
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


class CacheNotWritableError(ValueError):
    """The cache directory cannot be written; the message says which option moves it."""


def _save_atomically(path: Path, array: np.ndarray) -> None:
    """Write array to path via a temp file in the same directory and os.replace."""
    fd, tmp = _temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write a small cache file atomically, mode 0666 minus the umask like every cache file."""
    fd, tmp = _temp_file(Path(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_or_create(
    path: Path, create: Callable[[], np.ndarray], expected_shape: tuple | None = None
) -> np.ndarray:
    """The cached uint8 array at path (memory-mapped), created and saved first if needed."""
    path = Path(path)
    if path.exists():
        problem = _problem(path, expected_shape)
        if problem is None:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        warnings.warn(f"cache file {path} is unusable: {problem}; regenerating it", stacklevel=2)
        path.unlink(missing_ok=True)
    array = create()
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
        raise ValueError(
            f"cache content must be a uint8 numpy array, got {getattr(array, 'dtype', type(array))}"
        )
    if expected_shape is not None and array.shape != tuple(expected_shape):
        raise ValueError(f"cache content has shape {array.shape}, expected {tuple(expected_shape)}")
    _save_atomically(path, array)
    return np.load(path, mmap_mode="r", allow_pickle=False)
