"""The distorted-split cache: keys, hit, miss, corruption, atomic writes."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from robust_ft.data import cache
from robust_ft.data.cache import CODE_VERSION, cache_path, load_or_create

KEY = dict(dataset="fashion_mnist", split="train", kind="defocus", level=2.5, seed=0, n=100)
ARRAY = np.arange(2 * 5 * 4, dtype=np.uint8).reshape(2, 5, 4)


class Creator:
    """A create() that counts its calls."""

    def __init__(self, array: np.ndarray = ARRAY):
        self.array, self.calls = array, 0

    def __call__(self) -> np.ndarray:
        self.calls += 1
        return self.array


def test_cache_path_is_readable_and_keyed(tmp_path):
    path = cache_path(tmp_path, **KEY)
    assert path.parent == tmp_path and path.suffix == ".npy"
    assert path.name.startswith("fashion_mnist-train-defocus-2.5-0-")
    assert cache_path(tmp_path, **dict(reversed(list(KEY.items())))) == path  # order-free
    assert cache_path(tmp_path, **{**KEY, "seed": 1}) != path
    assert cache_path(tmp_path, **{**KEY, "n": 101}) != path
    assert cache_path(tmp_path, **{**KEY, "pipeline": {"p": 1.0}}) != path
    ranged = cache_path(tmp_path, **{**KEY, "level": [0, 4], "subset": None})
    assert ranged.name.startswith("fashion_mnist-train-defocus-0-4-0-")


def test_cache_path_depends_on_code_version(tmp_path, monkeypatch):
    path = cache_path(tmp_path, **KEY)
    monkeypatch.setattr(cache, "CODE_VERSION", CODE_VERSION + "-next")
    assert cache_path(tmp_path, **KEY) != path


def test_miss_then_hit(tmp_path):
    path = cache_path(tmp_path / "nested", **KEY)
    create = Creator()
    first = load_or_create(path, create, expected_shape=ARRAY.shape)
    second = load_or_create(path, create, expected_shape=ARRAY.shape)
    assert create.calls == 1
    assert isinstance(second, np.memmap) and not second.flags.writeable
    np.testing.assert_array_equal(first, ARRAY)
    np.testing.assert_array_equal(second, ARRAY)
    assert os.listdir(path.parent) == [path.name]  # no temp files left


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-7])


def _garbage(path):
    path.write_bytes(b"this is not a numpy file")


def _empty(path):
    path.write_bytes(b"")


def _wrong_dtype(path):
    np.save(path, ARRAY.astype(np.int16))


def _wrong_shape(path):
    np.save(path, ARRAY[:1])


def _half_header(path):
    path.write_bytes(path.read_bytes()[:20])


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_truncate, r"161 bytes, expected 168 \(truncated"),
        (_garbage, "unreadable header"),
        (_empty, "unreadable header"),
        (_half_header, "unreadable header"),
        (_wrong_dtype, "dtype int16"),
        (_wrong_shape, r"shape \(1, 5, 4\)"),
    ],
)
def test_corrupt_file_is_regenerated_with_warning(tmp_path, damage, reason):
    path = cache_path(tmp_path, **KEY)
    load_or_create(path, Creator(), expected_shape=ARRAY.shape)
    damage(path)
    create = Creator()
    with pytest.warns(
        UserWarning, match=rf"cache file .*{path.name} is unusable: {reason}.*regenerating"
    ):
        out = load_or_create(path, create, expected_shape=ARRAY.shape)
    assert create.calls == 1
    np.testing.assert_array_equal(out, ARRAY)
    assert load_or_create(path, create, expected_shape=ARRAY.shape) is not None
    assert create.calls == 1


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    path = cache_path(tmp_path, **KEY)

    def disk_full(file, array, **kwargs):
        file.write(b"\x93NUMPY partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        load_or_create(path, Creator())
    assert list(tmp_path.iterdir()) == []


def test_failed_create_leaves_nothing(tmp_path):
    path = cache_path(tmp_path, **KEY)

    def boom():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        load_or_create(path, boom)
    assert not path.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [(ARRAY.astype(np.float32), "must be a uint8 numpy array"), (ARRAY[:1], "expected")],
)
def test_create_must_return_expected_uint8(tmp_path, content, message):
    path = cache_path(tmp_path, **KEY)
    with pytest.raises(ValueError, match=message):
        load_or_create(path, Creator(content), expected_shape=ARRAY.shape)
    assert not path.exists()


def test_without_expected_shape_any_uint8_array_is_a_hit(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, ARRAY)
    create = Creator()
    np.testing.assert_array_equal(load_or_create(path, create), ARRAY)
    assert create.calls == 0
