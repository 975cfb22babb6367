"""Property-based tests (hypothesis) of the distortion functions."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robust_ft.data.distortions import KINDS, disk_kernel, distort, distort_batch, motion_kernel

kinds = st.sampled_from(list(KINDS))
levels = st.floats(min_value=0.0, max_value=4.0, allow_nan=False)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def images(draw):
    h = draw(st.integers(1, 12))
    w = draw(st.integers(1, 12))
    shape = (h, w) if draw(st.booleans()) else (h, w, draw(st.sampled_from([1, 3])))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


@SETTINGS
@given(img=images(), kind=kinds, level=levels, seed=st.integers(0, 1000))
def test_distort_keeps_shape_dtype_and_range(img, kind, level, seed):
    out = distort(img, kind, level, np.random.default_rng(seed))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert out.min() >= 0 and out.max() <= 255


@SETTINGS
@given(img=images(), kind=kinds, seed=st.integers(0, 1000))
def test_level_zero_is_identity(img, kind, seed):
    assert np.array_equal(distort(img, kind, 0.0, np.random.default_rng(seed)), img)


@SETTINGS
@given(radius=st.floats(0, 6, allow_nan=False))
def test_disk_kernel_is_a_normalised_symmetric_density(radius):
    k = disk_kernel(radius)
    assert k.ndim == 2 and k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
    assert (k >= 0).all() and abs(k.sum() - 1) < 1e-12
    assert np.allclose(k, k.T) and np.allclose(k, k[::-1])


@SETTINGS
@given(size=st.floats(0, 8, allow_nan=False), seed=st.integers(0, 10_000))
def test_motion_kernel_is_a_normalised_density(size, seed):
    k = motion_kernel(size, np.random.default_rng(seed))
    assert (k >= 0).all() and abs(k.sum() - 1) < 1e-12
    n = int(np.floor(size + 0.5))  # MATLAB round: half away from zero
    assert k.shape == (2 * n + 1, 2 * n + 1)


@SETTINGS
@given(
    n=st.integers(1, 5),
    c=st.sampled_from([1, 3]),
    hw=st.integers(4, 12),
    kind=kinds,
    level=levels,
    seed=st.integers(0, 1000),
)
def test_distort_batch_keeps_shape_dtype_and_range(n, c, hw, kind, level, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, c, hw, hw), generator=g, dtype=torch.uint8)
    out = distort_batch(x, kind, level, generator=g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    if level == 0:
        assert torch.equal(out, x)
