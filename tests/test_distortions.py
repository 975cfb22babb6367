"""Distortion kernels, the per-image and batched paths, levels and bad input."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate, ndimage

from robust_ft.data import distortions as D
from robust_ft.data.distortions import (
    BORDERS,
    KINDS,
    NOISE_SIGMA_PER_LEVEL,
    disk_kernel,
    distort,
    distort_array,
    distort_batch,
    gaussian_noise,
    level_tag,
    motion_kernel,
    parse_level,
)

RADII = [0.0, 0.4, 0.5, 0.51, 1.0, 1.5, 2.3, 3.0, 4.0]


def _images(n: int, h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    """Half smooth, half noisy uint8 images (N,H,W,C): flat areas, edges and texture."""
    rng = np.random.default_rng(seed)
    noisy = rng.integers(0, 256, (n, h, w, c))
    smooth = ndimage.uniform_filter(noisy.astype(float), size=(1, 5, 5, 1))
    edges = (np.arange(w) > w // 2) * 200 + 20
    out = np.where(rng.random((n, 1, 1, 1)) < 0.5, noisy, smooth + edges[None, None, :, None] / 4)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------- disc kernel


def _disc_pixel_area(radius: float, x0: float, x1: float, y0: float, y1: float) -> float:
    """Area of the disc inside a pixel by 1-D quadrature of the clipped chord length."""

    def chord(x: float) -> float:
        half = math.sqrt(max(radius * radius - x * x, 0.0))
        return max(0.0, min(y1, half) - max(y0, -half))

    cuts = [x for y in (y0, y1) for x in (-math.sqrt(max(radius**2 - y * y, 0)),)]
    cuts += [-c for c in cuts] + [-radius, radius]
    points = sorted({p for p in cuts if x0 < p < x1})
    return integrate.quad(chord, x0, x1, points=points or None, epsabs=1e-13, epsrel=1e-13)[0]


def _reference_disk(radius: float) -> np.ndarray:
    """fspecial('disk') by numerical integration, pixel by pixel."""
    if radius < 0.5:
        return np.ones((1, 1))
    half = math.ceil(radius - 0.5)
    c = np.arange(-half, half + 1)
    areas = np.array(
        [[_disc_pixel_area(radius, x - 0.5, x + 0.5, y - 0.5, y + 0.5) for x in c] for y in c]
    )
    assert areas.sum() == pytest.approx(math.pi * radius**2, rel=1e-9)  # the disc fits
    return areas / areas.sum()


@pytest.mark.parametrize("radius", RADII)
def test_disk_kernel_matches_numerical_integration(radius):
    kernel, reference = disk_kernel(radius), _reference_disk(radius)
    assert kernel.dtype == np.float64
    size = 1 if radius < 0.5 else 2 * math.ceil(radius - 0.5) + 1
    assert kernel.shape == reference.shape == (size, size)
    np.testing.assert_allclose(kernel, reference, atol=1e-10)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_array_equal(kernel, kernel.T)
    np.testing.assert_array_equal(kernel, kernel[::-1])


def test_disk_kernel_supersampled():
    """A second, cruder check: count sub-pixel samples inside the disc."""
    radius, sub = 2.3, 400
    k = disk_kernel(radius)
    offsets = (np.arange(sub) + 0.5) / sub - 0.5
    half = k.shape[0] // 2
    grid = np.arange(-half, half + 1)[:, None] + offsets[None, :]  # (k, sub) sample coordinates
    inside = grid.reshape(-1)[:, None] ** 2 + grid.reshape(-1)[None, :] ** 2 <= radius**2
    counts = inside.reshape(k.shape[0], sub, k.shape[0], sub).sum(axis=(1, 3))
    np.testing.assert_allclose(k, counts / counts.sum(), atol=2e-4)


def test_disk_kernel_matlab_values():
    expected = np.array(
        [[0.0251, 0.1453, 0.0251], [0.1453, 0.3183, 0.1453], [0.0251, 0.1453, 0.0251]]
    )
    np.testing.assert_allclose(disk_kernel(1), expected, atol=5e-5)


def test_disk_kernel_small_radius_is_identity():
    for radius in (0, 0.2, 0.49, 0.5):
        np.testing.assert_array_equal(disk_kernel(radius), [[1.0]])
    assert disk_kernel(0.5001).shape == (3, 3)


# ----------------------------------------------------------------------------- motion kernel


@pytest.mark.parametrize("size", [0, 0.4, 0.5, 1, 2, 2.5, 3, 4, 7])
def test_motion_kernel_properties(size):
    n = math.floor(size + 0.5)
    rng = np.random.default_rng(1)
    for _ in range(50):
        k = motion_kernel(size, rng)
        assert k.shape == (2 * n + 1, 2 * n + 1) and k.dtype == np.float64
        assert (k >= 0).all() and k.sum() == pytest.approx(1.0)
        assert k[n, n] > 0  # the start is visited
        counts = k * (n + 1)
        np.testing.assert_allclose(counts, np.rint(counts), atol=1e-12)  # visit counts
        rows, cols = np.nonzero(k)
        assert np.abs(rows - n).max() <= n and np.abs(cols - n).max() <= n


def _expected_motion_kernel(n: int) -> np.ndarray:
    """The exact mean kernel: every one of the 8^n walks, equally likely."""
    total = np.zeros((2 * n + 1, 2 * n + 1))
    for walk in itertools.product(D._STEPS, repeat=n):
        pos = np.array([n, n])
        total[tuple(pos)] += 1
        for step in walk:
            pos = pos + step
            total[tuple(pos)] += 1
    return total / (n + 1) / 8**n


@pytest.mark.parametrize("n", [1, 2])
def test_motion_kernel_mean_matches_exact_expectation(n):
    rng = np.random.default_rng(2)
    mean = np.mean([motion_kernel(n, rng) for _ in range(20000)], axis=0)
    np.testing.assert_allclose(mean, _expected_motion_kernel(n), atol=0.01)


@pytest.mark.parametrize("n", [1, 2])
def test_batched_motion_kernels_mean_matches_exact_expectation(n):
    g = torch.Generator().manual_seed(3)
    kernels = D._motion_kernels(torch.full((20000,), float(n), dtype=torch.float64), g)
    np.testing.assert_allclose(kernels.mean(0).numpy(), _expected_motion_kernel(n), atol=0.01)
    assert torch.allclose(kernels.sum((1, 2)), torch.ones(20000, dtype=torch.float64))


def test_batched_motion_kernels_mixed_lengths():
    """Each sample's walk stops after its own round(level) steps."""
    levels = torch.tensor([0.0, 0.49, 0.5, 1.4, 2.6, 4.0], dtype=torch.float64)
    kernels = D._motion_kernels(levels.repeat(500), torch.Generator().manual_seed(4))
    n = torch.floor(levels.repeat(500) + 0.5)
    center = kernels.shape[-1] // 2
    ys, xs = torch.meshgrid(*(torch.arange(kernels.shape[-1]) - center,) * 2, indexing="ij")
    reach = torch.maximum(ys.abs(), xs.abs())
    assert ((kernels > 0) * reach).amax((1, 2)).le(n).all()
    np.testing.assert_allclose((kernels * (n + 1)[:, None, None]).sum((1, 2)), n + 1)


# ----------------------------------------------------------------------------- noise


@pytest.mark.parametrize("sigma", [1.0, 4.0, 10.0])
def test_gaussian_noise_mean_and_std(sigma):
    grey = np.full((256, 256), 128, np.uint8)
    out = gaussian_noise(grey, sigma, np.random.default_rng(5))
    assert out.dtype == np.uint8 and out.shape == grey.shape
    diff = out.astype(float) - 128
    assert abs(diff.mean()) < 0.05
    # rounding to integers adds the variance of a uniform(-.5, .5): 1/12
    assert diff.std() == pytest.approx(math.sqrt(sigma**2 + 1 / 12), rel=0.02)


def test_noise_level_maps_to_sigma_on_0_255_scale():
    assert NOISE_SIGMA_PER_LEVEL == 1.0
    grey = np.full((256, 256, 3), 128, np.uint8)
    out = distort(grey, "noise", 4, np.random.default_rng(6))
    assert (out.astype(float) - 128).std() == pytest.approx(math.sqrt(16 + 1 / 12), rel=0.02)


def test_gaussian_noise_clips():
    out = gaussian_noise(np.array([[0, 255]], np.uint8), 50.0, np.random.default_rng(7))
    assert out.dtype == np.uint8


# ----------------------------------------------------------------------------- distort


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("shape", [(28, 28), (28, 28, 1), (32, 32, 3)])
def test_distort_keeps_shape_and_dtype(kind, shape):
    image = _images(1, *shape[:2], shape[2] if len(shape) == 3 else 1)[0].reshape(shape)
    out = distort(image, kind, 2.5, np.random.default_rng(8))
    assert out.shape == shape and out.dtype == np.uint8
    assert not np.array_equal(out, image)
    np.testing.assert_array_equal(distort(image, kind, 0, np.random.default_rng(8)), image)


def test_registry():
    assert list(KINDS) == ["motion", "defocus", "noise", "combined"]
    assert [s.name for s in KINDS["combined"]] == ["motion", "defocus", "noise"]


def test_defocus_is_rounded_correlation_with_disk():
    image = _images(1, 20, 24, 3)[0]
    expected = ndimage.correlate(image.astype(float), disk_kernel(1.7)[:, :, None], mode="reflect")
    expected = np.clip(np.floor(expected + 0.5), 0, 255)
    np.testing.assert_array_equal(distort(image, "defocus", 1.7, np.random.default_rng()), expected)


def test_combined_is_motion_then_defocus_then_noise():
    image = _images(1, 16, 16, 3)[0]
    out = distort(image, "combined", 2, np.random.default_rng(9))
    rng = np.random.default_rng(9)
    step = distort(distort(image, "motion", 2, rng), "defocus", 2, rng)
    np.testing.assert_array_equal(out, distort(step, "noise", 2, rng))


def test_combined_range_draws_each_stage_independently():
    """With a range, the three stages draw three levels (in order) from the one rng."""
    image = _images(1, 16, 16, 1)[0, :, :, 0]
    out = distort(image, "combined", (0, 4), np.random.default_rng(10))
    rng = np.random.default_rng(10)
    x = image
    for kind in ("motion", "defocus", "noise"):
        x = distort(x, kind, rng.uniform(0, 4), rng)
    np.testing.assert_array_equal(out, x)


def test_float_images_stay_float_and_unrounded():
    image = _images(1, 16, 16, 3)[0].astype(np.float32) + 0.25
    out = distort(image, "defocus", 1.3, np.random.default_rng())
    assert out.dtype == np.float32 and out.shape == image.shape
    assert not np.allclose(out, np.round(out))
    noisy = distort(image, "noise", 4, np.random.default_rng())
    assert noisy.min() >= 0 and noisy.max() <= 255


# ----------------------------------------------------------------------------- batched


@pytest.mark.parametrize("channels", [1, 3])
def test_batch_defocus_equals_per_image(channels):
    images = _images(48, 28, 32, channels)
    levels = torch.tensor(RADII + list(np.linspace(0, 4, 39)), dtype=torch.float64)
    out = distort_batch(_nchw(images), "defocus", levels)
    assert out.dtype == torch.uint8 and out.shape == (48, channels, 28, 32)
    expected = np.stack(
        [distort(im, "defocus", float(lv), None) for im, lv in zip(images, levels, strict=True)]
    )
    np.testing.assert_array_equal(out.permute(0, 2, 3, 1).numpy(), expected)


@pytest.mark.parametrize("level", [1.0, 2.5, 4.0])
def test_batch_defocus_fixed_level_equals_per_image(level):
    images = _images(16, 32, 32, 3, seed=11)
    out = distort_batch(_nchw(images), "defocus", level).permute(0, 2, 3, 1).numpy()
    for im, o in zip(images, out, strict=True):
        np.testing.assert_array_equal(o, distort(im, "defocus", level, None))


@pytest.mark.parametrize("kind", list(KINDS))
def test_float32_and_float64_compute_give_same_bytes(kind, monkeypatch):
    """The CPU's float32 path (float64 repair of the blur's rounding, float64 noise sum) gives
    the bytes of the float64 path other devices take: a cache is the same made on a GPU."""
    images = _images(256, 24, 24, 3, seed=12)
    fast = distort_array(images, kind, "U(0,4)", seed=5, progress=False)
    monkeypatch.setattr(D, "FLOAT32_DEVICES", set())
    slow = distort_array(images, kind, "U(0,4)", seed=5, progress=False)
    np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize("border", list(BORDERS))
@pytest.mark.parametrize("shape", [(9, 11), (2, 3)])
def test_batch_borders_match_scipy(border, shape):
    """Every border mode pads like scipy.ndimage, also when the pad exceeds the image."""
    images = _images(4, *shape, 2, seed=13)
    out = distort_batch(_nchw(images), "defocus", 3.2, border=border)
    for im, o in zip(images, out.permute(0, 2, 3, 1).numpy(), strict=True):
        np.testing.assert_array_equal(o, distort(im, "defocus", 3.2, None, border=border))


def test_batch_float_input_keeps_dtype():
    images = _nchw(_images(8, 16, 16, 3)).double() * 0.9 + 0.5
    out = distort_batch(images, "defocus", 2.0)
    assert out.dtype == torch.float64
    expected = [distort(im.permute(1, 2, 0).numpy(), "defocus", 2.0, None) for im in images]
    np.testing.assert_allclose(out.permute(0, 2, 3, 1).numpy(), np.stack(expected), atol=1e-9)
    assert distort_batch(images.float(), "noise", 2.0).dtype == torch.float32


def test_batch_motion_matches_per_image_distribution():
    """Mean blurred image over many draws: batched, per-image and the exact mean kernel agree."""
    image = _images(1, 12, 12, 1, seed=14)[0]
    batch = _nchw(np.repeat(image[None], 4000, 0))
    mean_batch = (
        distort_batch(batch, "motion", 2, torch.Generator().manual_seed(15)).double().mean(0)
    )
    rng = np.random.default_rng(16)
    mean_numpy = np.mean([distort(image, "motion", 2, rng) for _ in range(4000)], axis=0)
    exact = ndimage.correlate(
        image[:, :, 0].astype(float), _expected_motion_kernel(2), mode="reflect"
    )
    np.testing.assert_allclose(mean_batch[0].numpy(), exact, atol=2.5)
    np.testing.assert_allclose(mean_numpy[:, :, 0], exact, atol=2.5)
    np.testing.assert_allclose(mean_batch[0].numpy(), mean_numpy[:, :, 0], atol=3.0)


def test_batch_motion_exact_for_fixed_kernels():
    """Given the same kernels, the batched blur equals the per-image one bit for bit."""
    images = _images(64, 20, 20, 3, seed=17)
    levels = torch.linspace(0, 4, 64, dtype=torch.float64)
    kernels = D.MOTION.sample(levels, None, torch.Generator().manual_seed(18))
    out = D._apply_batch(_nchw(images), [D.MOTION], [kernels], "reflect")
    size = kernels.shape[-1]
    for im, o, k in zip(images, out.permute(0, 2, 3, 1).numpy(), kernels.numpy(), strict=True):
        blurred = D._finish(D._correlate(im.astype(float), k, "reflect"), True)
        np.testing.assert_array_equal(o, blurred, err_msg=f"kernel size {size}")


def test_batch_noise_std_per_sample():
    grey = torch.full((3, 1, 128, 128), 128, dtype=torch.uint8)
    levels = torch.tensor([0.0, 2.0, 4.0])
    out = distort_batch(grey, "noise", levels, torch.Generator().manual_seed(19)).double() - 128
    stds = out.flatten(1).std(1)
    assert stds[0] == 0
    for std, level in zip(stds[1:], levels[1:], strict=True):
        assert std.item() == pytest.approx(math.sqrt(level.item() ** 2 + 1 / 12), rel=0.03)
    assert out.mean().abs() < 0.05


def test_batch_range_levels_are_drawn_per_sample_and_stage():
    draw = D._draw_batch((1.0, 3.0), 20000, torch.Generator().manual_seed(20), torch.device("cpu"))
    a, b = draw(), draw()
    assert a.min() >= 1 and a.max() <= 3 and abs(a.mean().item() - 2) < 0.02
    assert not torch.equal(a, b)
    grey = torch.full((400, 1, 32, 32), 128, dtype=torch.uint8)
    stds = (distort_batch(grey, "noise", "U(0,4)").double() - 128).flatten(1).std(1)
    assert stds.min() < 0.6 and stds.max() > 3.5


def test_batch_generator_is_deterministic():
    images = _nchw(_images(16, 16, 16, 3))
    for kind in KINDS:
        a = distort_batch(images, kind, (0, 4), torch.Generator().manual_seed(21))
        b = distort_batch(images, kind, (0, 4), torch.Generator().manual_seed(21))
        assert torch.equal(a, b)


def test_batch_empty():
    empty = torch.zeros((0, 3, 8, 8), dtype=torch.uint8)
    assert distort_batch(empty, "combined", 2).shape == (0, 3, 8, 8)


# ----------------------------------------------------------------------------- distort_array


def test_distort_array_deterministic_and_batch_size_independent():
    images = _images(600, 12, 12, 3, seed=22)
    a = distort_array(images, "combined", (0, 4), seed=5, batch_size=256, progress=False)
    b = distort_array(images, "combined", (0, 4), seed=5, batch_size=1024, progress=False)
    c = distort_array(images, "combined", (0, 4), seed=6, batch_size=256, progress=False)
    assert a.shape == images.shape and a.dtype == np.uint8
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, c)


def test_distort_array_grey_and_defocus_exact(capsys):
    images = _images(300, 14, 14, 1, seed=23)[..., 0]
    out = distort_array(images, "defocus", 2.3, seed=0, batch_size=100)
    assert out.shape == images.shape
    for im, o in zip(images, out, strict=True):
        np.testing.assert_array_equal(o, distort(im, "defocus", 2.3, None))
    assert "distort defocus L2.3" in capsys.readouterr().err


def test_distort_array_reads_memmap(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, _images(10, 8, 8, 3))
    images = np.load(path, mmap_mode="r")
    out = distort_array(images, "noise", 2, seed=1, progress=False)
    assert out.shape == images.shape


# ----------------------------------------------------------------------------- levels


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2, 2.0),
        (2.5, 2.5),
        ("2", 2.0),
        (" 3.5 ", 3.5),
        (np.float32(1.5), 1.5),
        ("U(0,4)", (0.0, 4.0)),
        ("U(0, 4)", (0.0, 4.0)),
        ("u( 0.5 , 2 )", (0.5, 2.0)),
        ((0, 4), (0.0, 4.0)),
        ([0, 4], (0.0, 4.0)),
        ((2, 2), (2.0, 2.0)),
    ],
)
def test_parse_level(value, expected):
    assert parse_level(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "finite number >= 0"),
        (float("nan"), "finite number >= 0"),
        (float("inf"), "finite number >= 0"),
        ("nan", "finite number >= 0"),
        ("-2", "finite number >= 0"),
        ("two", "cannot read a level from 'two'"),
        ("U(0,)", "cannot read a level"),
        ("U(4,0)", "low <= high"),
        ((4, 0), "low <= high"),
        ((0, -1), "level range bound"),
        ((0, 1, 2), r"needs \(low, high\)"),
        (None, "must be a number"),
        (True, "must be a number"),
    ],
)
def test_parse_level_rejects(value, message):
    with pytest.raises(ValueError, match=message):
        parse_level(value)


@pytest.mark.parametrize(
    ("level", "tag"),
    [(0, "L0"), (2, "L2"), (2.5, "L2.5"), ("U(0,4)", "LU0-4"), ((0.5, 3.25), "LU0.5-3.25")],
)
def test_level_tag(level, tag):
    assert level_tag(level) == tag


@given(
    st.one_of(
        st.floats(0, 1e6, allow_nan=False),
        st.tuples(st.floats(0, 10), st.floats(10, 1e6)),
    )
)
def test_level_tag_is_a_valid_mlflow_name(level):
    assert re.fullmatch(r"L[A-Za-z0-9_\-. /]+", level_tag(level))


# ----------------------------------------------------------------------------- bad input

IMAGE = np.zeros((8, 8, 3), np.uint8)
KIND_LIST = "accepted: motion, defocus, noise, combined"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: distort(IMAGE, "blur", 1, None), f"unknown distortion kind 'blur'; {KIND_LIST}"),
        (lambda: distort(IMAGE, "noise", -1, None), "finite number >= 0"),
        (lambda: distort(IMAGE, "noise", float("nan"), None), "finite number >= 0"),
        (lambda: distort(IMAGE, "defocus", 1, None, border="zero"), "unknown border mode 'zero'"),
        (lambda: distort(IMAGE.astype(np.float32) - 1, "noise", 1, None), "values in 0..255"),
        (lambda: distort(IMAGE.astype(np.float32) + 300, "noise", 1, None), "values in 0..255"),
        (lambda: distort(IMAGE.astype(np.float64) * np.nan, "noise", 1, None), "values in 0..255"),
        (lambda: distort(IMAGE[None], "noise", 1, None), r"\(H,W\) or \(H,W,C\)"),
        (lambda: distort(IMAGE[0, 0], "noise", 1, None), r"\(H,W\) or \(H,W,C\)"),
        (lambda: distort(IMAGE.astype(np.int32), "noise", 1, None), "dtype must be uint8"),
        (lambda: distort(IMAGE.tolist(), "noise", 1, None), "must be a numpy array"),
        (lambda: gaussian_noise(IMAGE, -2, None), "sigma must be a finite number >= 0"),
        (lambda: disk_kernel(-1), "radius must be a finite number >= 0"),
        (lambda: motion_kernel(float("nan"), None), "size must be a finite number >= 0"),
        (lambda: distort_batch(torch.zeros(2, 1, 4, 4), "blur", 1), "unknown distortion kind"),
        (lambda: distort_batch(torch.zeros(1, 4, 4), "noise", 1), r"\(N,C,H,W\)"),
        (lambda: distort_batch(torch.zeros(1, 1, 4, 4).int(), "noise", 1), "dtype must be uint8"),
        (lambda: distort_batch(torch.full((1, 1, 4, 4), 256.0), "noise", 1), "values in 0..255"),
        (lambda: distort_batch(IMAGE, "noise", 1), "must be a torch.Tensor"),
        (lambda: distort_batch(torch.zeros(3, 1, 4, 4), "noise", [1, 2, 3, 4]), r"shape \(3,\)"),
        (
            lambda: distort_batch(torch.zeros(3, 1, 4, 4), "noise", [1, -2, 3]),
            "finite numbers >= 0",
        ),
        (lambda: distort_batch(torch.zeros(2, 1, 4, 4), "noise", -1), "finite number >= 0"),
        (lambda: distort_array(IMAGE[0], "noise", 1, seed=0), r"\(N,H,W\) or \(N,H,W,C\)"),
        (lambda: distort_array(IMAGE[None].astype(float), "noise", 1, seed=0), "uint8"),
        (lambda: distort_array(IMAGE[None], "blur", 1, seed=0), "unknown distortion kind"),
        (lambda: distort_array(IMAGE[None], "noise", 1, seed=-1), "seed must be an integer >= 0"),
    ],
)
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_rounding_is_half_up_like_matlab():
    """A tie (2.5) rounds up in both paths, as MATLAB's uint8 conversion does (not to even)."""
    image = np.array([[2, 3]], np.uint8)
    kernel = np.array([[0.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 0.0]])
    assert (
        D._finish(D._correlate(image[:, :, None].astype(float), kernel, "reflect"), True)[0, 0] == 3
    )
    batched = D._apply_batch(
        torch.from_numpy(image)[None, None], [D.MOTION], [torch.from_numpy(kernel)[None]], "reflect"
    )
    assert batched[0, 0, 0, 0] == 3


def test_render_distortion_grid(tmp_path):
    from robust_ft.data.figures import render_distortion_grid

    out = render_distortion_grid(
        _images(2, 28, 28, 1)[..., 0], tmp_path / "fig" / "grid.png", levels=(0, 2, 4)
    )
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="uint8"):
        render_distortion_grid(np.zeros((1, 8, 8)), tmp_path / "x.png")


@pytest.mark.parametrize("border", sorted(BORDERS))
def test_batched_padding_equals_numpy_pad(border):
    """The torch padding (copied edges for 'reflect', a gather otherwise) is numpy.pad exactly,
    for pads smaller and larger than the image, for channels-last input, and converting uint8 to
    float32 on the way."""
    from robust_ft.data.distortions import _pad

    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).view(2, 3, 5, 7)
    for inp in (x, x.to(memory_format=torch.channels_last), x.to(torch.uint8)):
        for p in range(9):
            got = _pad(inp, p, border, torch.float32)
            want = np.pad(x.numpy(), ((0, 0), (0, 0), (p, p), (p, p)), mode=BORDERS[border])
            assert got.dtype == torch.float32
            assert got.is_contiguous() or border == "constant"
            np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.parametrize("shape", [(5, 7, 9), (5, 7, 9, 3), (0, 7, 9), (0, 7, 9, 3)])
def test_images_to_nchw_and_back(shape):
    """(N,H,W) and (N,H,W,C) uint8 images, empty ones too, to (N,C,H,W) and back, unchanged;
    the tensor is a copy (a read-only memmap can be distorted in place)."""
    from robust_ft.data.distortions import images_to_nchw, nchw_to_images

    images = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    images.flags.writeable = False
    t = images_to_nchw(images)
    c = shape[3] if len(shape) == 4 else 1
    assert t.shape == (shape[0], c, *shape[1:3])
    np.testing.assert_array_equal(t.numpy(), images.reshape(*shape[:3], c).transpose(0, 3, 1, 2))
    t.add_(0)  # writable
    np.testing.assert_array_equal(nchw_to_images(t, shape).numpy(), images)
