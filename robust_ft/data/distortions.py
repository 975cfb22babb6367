"""The paper's four distortions: motion blur, defocus blur, Gaussian noise and all three combined.

A distortion is a function of (image, level, rng). ``KINDS`` is the registry: every kind is a
sequence of stages applied in order (``combined`` = motion -> defocus -> noise), and every other
place derives the list of kinds from it.

Levels (the paper's x-axes run 0..4):

- motion: a random walk of ``n = floor(level + 0.5)`` steps (MATLAB ``round``), ``motion_kernel``;
- defocus: the anti-aliased disc of radius ``level``, ``disk_kernel`` (MATLAB ``fspecial('disk')``);
- noise: additive N(0, sigma^2) with ``sigma = level * NOISE_SIGMA_PER_LEVEL`` on the 0..255 scale.
  ``NOISE_SIGMA_PER_LEVEL = 1.0`` because the paper says so in as many words (Sec. 3, "standard
  deviation sigma sampled from [0, 4] on a color image with an integer value in [0, 255]"): level 4
  is a std of 4 grey levels, not 4/255 of the range nor 4 on a 0..1 scale (which would saturate
  every pixel). This is mild noise (PSNR ~36 dB at level 4), in line with the paper's finding that
  noise barely moves MNIST error.

A level is a number (every image at that level) or a range ``(low, high)`` / ``"U(low,high)"``
(each image, and each stage of ``combined``, draws its own level uniformly).

Images: uint8 ``(H,W)`` or ``(H,W,C)`` in, same shape and dtype out; each stage correlates every
channel with its kernel ('same' size, border ``reflect`` = MATLAB 'symmetric' = ``d c b a | a b c
d``) and the result is rounded half up and clipped to 0..255 after every stage, as MATLAB's
``imfilter``/``imnoise`` do on uint8 images. Float images with values in 0..255 are accepted too and
come back in their own float dtype, clipped to 0..255 but not rounded.

``distort`` is the per-image numpy path; ``distort_batch`` does the same to an (N,C,H,W) tensor
with per-sample kernels in one grouped convolution, on the tensor's device. On CPU it convolves in
float32 and recomputes in float64 every pixel whose value lies within float32 error of a rounding
boundary (elsewhere it convolves in float64), so uint8 results equal the float64 per-image path
(defocus: identical; motion and noise are random, with the same distribution). ``distort_array``
distorts a whole split for the cache. On a busy machine one torch thread is often fastest.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from robust_ft.levels import (  # noqa: F401
    Level,
    LevelSpec,
    check_level,
    check_range,
    level_tag,
    parse_level,
)

NOISE_SIGMA_PER_LEVEL = 1.0
"""Noise std (0..255 scale) per unit of level: the paper's sigma in [0, 4] on integer 0..255 images."""

BORDERS: dict[str, str] = {
    "reflect": "symmetric",
    "mirror": "reflect",
    "nearest": "edge",
    "wrap": "wrap",
    "constant": "constant",
}
"""Border modes (scipy.ndimage names; ``reflect`` is MATLAB 'symmetric') -> numpy.pad names."""

DEFAULT_BORDER = "reflect"

RNG_BLOCK = 256
"""Images per random-number block in ``distort_array`` (fixed, so results ignore batch_size)."""

# The 8 neighbours of a pixel, (row, col) offsets: one random-walk step each.
_STEPS = np.array([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)])
_FLOAT_IMAGE_RANGE = "float images must have finite values in 0..255"


# ----------------------------------------------------------------------------- kernels


def _disc_quadrant_area(x: np.ndarray, y: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed area of the disc of radius r (centre 0) inside the rectangle [0,x] x [0,y]."""
    ax, ay = np.minimum(np.abs(x), r), np.minimum(np.abs(y), r)

    def primitive(t: np.ndarray) -> np.ndarray:  # integral of sqrt(r^2 - s^2) ds from 0 to t
        return 0.5 * (t * np.sqrt(np.maximum(r * r - t * t, 0.0)) + r * r * np.arcsin(t / r))

    # Columns s < m are cut by the rectangle's top (height ay); columns in [m, ax] by the circle.
    m = np.minimum(ax, np.sqrt(np.maximum(r * r - ay * ay, 0.0)))
    return np.sign(x) * np.sign(y) * (m * ay + primitive(ax) - primitive(m))


def _disk_kernels(radii: np.ndarray, size: int) -> np.ndarray:
    """Exact-area disc kernels (N, size, size) float64 for N radii; radius < 0.5 gives identity."""
    radii = np.asarray(radii, dtype=np.float64).reshape(-1, 1, 1)
    r = np.maximum(radii, 0.5)
    # The area depends on |centre| only, symmetric in x and y: computing it from the sorted
    # absolute centre coordinates makes the kernel exactly 8-fold symmetric.
    c = np.abs(np.arange(size) - size // 2).astype(np.float64)
    near, far = np.minimum(c[:, None], c[None, :])[None], np.maximum(c[:, None], c[None, :])[None]
    area = (
        _disc_quadrant_area(near + 0.5, far + 0.5, r)
        - _disc_quadrant_area(near - 0.5, far + 0.5, r)
        - _disc_quadrant_area(near + 0.5, far - 0.5, r)
        + _disc_quadrant_area(near - 0.5, far - 0.5, r)
    )
    gap = np.maximum(c - 0.5, 0.0)  # distance from the disc centre to a pixel's nearest edge
    area = np.where(gap[None, :, None] ** 2 + gap[None, None, :] ** 2 < r * r, area, 0.0)
    kernels = area / area.sum(axis=(1, 2), keepdims=True)
    identity = np.zeros((size, size))
    identity[size // 2, size // 2] = 1.0
    return np.where(radii < 0.5, identity, kernels)


def _disk_size(radius: float) -> int:
    """Side of MATLAB's disc kernel: 2*ceil(radius - 0.5) + 1 (1 for radius < 0.5)."""
    return 2 * math.ceil(radius - 0.5) + 1 if radius >= 0.5 else 1


def disk_kernel(radius: float) -> np.ndarray:
    """MATLAB ``fspecial('disk', radius)``: exact pixel areas inside the disc, summing to 1."""
    radius = check_level(radius, "radius")
    return _disk_kernels(np.array([radius]), _disk_size(radius))[0]


def _walk_length(size: float) -> int:
    """Steps of the random walk for a motion size: MATLAB round (half away from zero)."""
    return math.floor(size + 0.5)


def motion_kernel(size: float, rng: np.random.Generator) -> np.ndarray:
    """Random-walk motion kernel: visit counts of n = round(size) 8-neighbour steps, / (n+1)."""
    n = _walk_length(check_level(size, "size"))
    path = np.vstack([np.zeros((1, 2), int), np.cumsum(_STEPS[rng.integers(0, 8, n)], axis=0)]) + n
    kernel = np.zeros((2 * n + 1, 2 * n + 1))
    np.add.at(kernel, (path[:, 0], path[:, 1]), 1.0)
    return kernel / (n + 1)


def _motion_kernels(levels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Random-walk kernels (N, K, K) float64 for N levels, all walks drawn at once."""
    n = torch.floor(levels + 0.5).long()
    longest = int(n.max()) if len(n) else 0
    size = 2 * longest + 1
    moves = torch.randint(0, 8, (len(n), longest), generator=generator, device=levels.device)
    steps = torch.as_tensor(_STEPS, device=levels.device)[moves]  # (N, longest, 2)
    path = torch.cat([steps.new_zeros(len(n), 1, 2), steps.cumsum(1)], 1) + longest
    visited = (torch.arange(longest + 1, device=levels.device) <= n[:, None]).double()
    counts = visited.new_zeros(len(n), size * size)
    counts.scatter_add_(1, path[..., 0] * size + path[..., 1], visited)
    return (counts / (n + 1)[:, None]).view(-1, size, size)


# ----------------------------------------------------------------------------- stages


def _correlate(image: np.ndarray, kernel: np.ndarray, border: str) -> np.ndarray:
    """2-D correlation of every channel of a float (H,W,C) image, 'same' size."""
    return ndimage.correlate(image, kernel[:, :, None], mode=border, cval=0.0)


def _pad(x: torch.Tensor, p: int, border: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Pad the last two dims of x by p on every side, exactly as scipy.ndimage's ``border``;
    the result in ``dtype`` (default x's), converted while it is copied."""
    dtype = dtype or x.dtype
    if border == "constant":
        return F.pad(x.to(dtype), (p, p, p, p))
    *lead, h, w = x.shape
    if border == "reflect" and 0 < p <= min(h, w):  # edge repeated: flipped slices, no gather
        out = torch.empty((*lead, h + 2 * p, w + 2 * p), dtype=dtype, device=x.device)
        out[..., p : p + h, p : p + w] = x
        mid = out[..., p : p + h, :]
        for j in range(p):  # column by column: cheaper than flipping strided slices
            mid[..., p - 1 - j] = mid[..., p + j]
            mid[..., p + w + j] = mid[..., p + w - 1 - j]
        for i in range(p):
            out[..., p - 1 - i, :] = out[..., p + i, :]
            out[..., p + h + i, :] = out[..., p + h - 1 - i, :]
        return out
    rows, cols = (np.pad(np.arange(s), p, mode=BORDERS[border]) for s in (h, w))
    flat = torch.from_numpy((rows[:, None] * w + cols[None, :]).ravel()).to(x.device)
    out = x.reshape(-1, h * w).index_select(1, flat).view(*lead, h + 2 * p, w + 2 * p)
    return out.to(dtype)


def _correlate_batch(
    x: torch.Tensor, kernels: torch.Tensor, border: str, dtype: torch.dtype, integer: bool
) -> torch.Tensor:
    """Correlate sample i of x (N,C,H,W) with kernels[i] in one grouped conv, in ``dtype``.

    integer: round half up; values within float error of a .5 boundary are redone in float64
    (except for kernels whose weights are multiples of 2^-12, which ``dtype`` sums exactly), so the
    result depends neither on the convolution's precision nor on its summation order.
    """
    n, c, h, w = x.shape
    k = kernels.shape[-1]
    padded = _pad(x, k // 2, border, dtype)
    weight = kernels.to(dtype).repeat_interleave(c, 0).unsqueeze(1)
    with _ieee_conv(x.device, dtype):
        y = F.conv2d(padded.view(1, n * c, h + k - 1, w + k - 1), weight, groups=n * c)
    y = y.view(n, c, h, w)
    if not integer:
        return y.clamp_(0, 255)
    shifted = y.add_(0.5)
    rounded = torch.floor(shifted)
    check = ~(kernels * 4096).frac().eq(0).flatten(1).all(1).to(x.device)  # non-dyadic kernels
    if not check.any():
        return rounded
    # a sum of k*k products of integers <= 255 with weights of sum 1, each rounded once, in any
    # order, plus the weights' own rounding and the +0.5: error <= (k*k + 2) * 255 * eps / 2;
    # tol keeps a factor 2 over that bound
    tol = (k * k + 2) * 255 * torch.finfo(dtype).eps
    near = shifted.sub_(rounded).sub_(0.5).abs_() >= 0.5 - tol
    if not check.all():
        near &= check.view(n, 1, 1, 1)
    flat = near.view(-1).nonzero().squeeze(1)
    if len(flat):
        # the k x k window of output pixel (plane, row, col) starts at the same (row, col) of
        # the padded plane: one flat gather of padded offsets
        hp, wp = h + k - 1, w + k - 1
        plane, rc = flat.div(h * w, rounding_mode="floor"), flat.remainder(h * w)
        start = plane * (hp * wp) + rc.div(w, rounding_mode="floor") * wp + rc.remainder(w)
        span = torch.arange(k, device=x.device)
        window = (span[:, None] * wp + span[None, :]).view(1, -1)
        patches = padded.view(-1)[start[:, None] + window].view(-1, k, k)
        i = plane.div(c, rounding_mode="floor")
        exact = (patches.double() * kernels.to(x.device, torch.float64)[i]).sum((1, 2))
        rounded.view(-1)[flat] = torch.floor(exact + 0.5).to(dtype)
    return rounded


@dataclass(frozen=True)
class Blur:
    """A blur stage: a kernel per level, applied by correlation."""

    name: str
    kernel: Callable[[float, np.random.Generator], np.ndarray]
    kernels: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]

    def __call__(self, image: np.ndarray, level: float, rng: np.random.Generator, border: str):
        """Blur a float64 (H,W,C) image (unrounded result)."""
        return _correlate(image, self.kernel(level, rng), border)

    def sample(self, levels: torch.Tensor, shape, generator) -> torch.Tensor:
        """Per-sample kernels (N,K,K) float64 for the levels (on the generator's device)."""
        return self.kernels(levels, generator)

    def apply(self, x: torch.Tensor, params: torch.Tensor, border: str, dtype, integer: bool):
        """Blur a batch (N,C,H,W) with its sampled kernels; ``dtype`` result, rounded if integer."""
        return _correlate_batch(x, params.to(x.device), border, dtype, integer)

    @staticmethod
    def concat(params: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stack kernel batches of different sizes, zero-padded to the largest (centred)."""
        k = max(p.shape[-1] for p in params)
        return torch.cat([F.pad(p, [(k - p.shape[-1]) // 2] * 4) for p in params])


@dataclass(frozen=True)
class Noise:
    """The noise stage: additive Gaussian noise with std ``level * NOISE_SIGMA_PER_LEVEL``."""

    name: str = "noise"

    def __call__(self, image: np.ndarray, level: float, rng: np.random.Generator, border: str):
        """Add noise to a float64 (H,W,C) image (unrounded, unclipped result)."""
        return image + rng.normal(0.0, level * NOISE_SIGMA_PER_LEVEL, image.shape)

    def sample(self, levels: torch.Tensor, shape, generator) -> torch.Tensor:
        """Per-sample noise (N,C,H,W) float32."""
        noise = torch.randn(tuple(shape), generator=generator, device=levels.device)
        return noise.mul_((levels * NOISE_SIGMA_PER_LEVEL).float().view(-1, 1, 1, 1))

    def apply(self, x: torch.Tensor, params: torch.Tensor, border: str, dtype, integer: bool):
        """Add the sampled noise (consumed: updated in place) to a batch (N,C,H,W), in ``dtype``.

        Integer images get the noise rounded (half to even) and then added: integer + integer
        is exact in float32 and float64 alike, so the bytes do not depend on ``dtype``; with
        continuous noise this is rounding the sum, except at exact .5 ties (probability ~0).
        """
        if integer:
            return params.to(x.device, dtype).round_().add_(x).clamp_(0, 255)
        return params.to(x.device, dtype).add_(x).clamp_(0, 255)

    @staticmethod
    def concat(params: Sequence[torch.Tensor]) -> torch.Tensor:
        """Concatenate noise batches."""
        return torch.cat(list(params))


MOTION = Blur("motion", motion_kernel, _motion_kernels)


def _defocus_kernels(levels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Disc kernels (N, K, K) float64 for N radii (each distinct radius computed once)."""
    radii, index = np.unique(levels.cpu().numpy(), return_inverse=True)
    size = _disk_size(float(radii.max())) if len(radii) else 1
    return torch.from_numpy(_disk_kernels(radii, size)[index.reshape(-1)]).to(levels.device)


DEFOCUS = Blur("defocus", lambda level, rng: disk_kernel(level), _defocus_kernels)
NOISE = Noise()

KINDS: dict[str, tuple[Blur | Noise, ...]] = {
    "motion": (MOTION,),
    "defocus": (DEFOCUS,),
    "noise": (NOISE,),
    "combined": (MOTION, DEFOCUS, NOISE),
}
"""The registry: kind -> stages applied in order, each at its own draw of the level."""


def _draw(level: Level, rng: np.random.Generator) -> float:
    """One level: the number itself, or a uniform draw from a range."""
    return float(rng.uniform(*level)) if isinstance(level, tuple) else level


def _draw_batch(
    levels: Any, n: int, generator: torch.Generator | None, device: torch.device
) -> Callable[[], torch.Tensor]:
    """A function giving one stage's per-sample levels (N,) float64: fixed, or drawn per call."""
    if isinstance(levels, (torch.Tensor, np.ndarray)) or (
        isinstance(levels, Sequence) and not isinstance(levels, str) and len(levels) != 2
    ):
        per_sample = torch.as_tensor(levels, dtype=torch.float64).to(device)
        if per_sample.shape != (n,):
            raise ValueError(
                f"per-sample levels must have shape ({n},), got {tuple(per_sample.shape)}"
            )
        if not (torch.isfinite(per_sample).all() and (per_sample >= 0).all()):
            raise ValueError("per-sample levels must be finite numbers >= 0")
        return lambda: per_sample
    level = parse_level(levels)
    if isinstance(level, tuple):
        low, high = level
        return lambda: (
            low
            + (high - low) * torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        )
    return lambda: torch.full((n,), level, dtype=torch.float64, device=device)


# ----------------------------------------------------------------------------- validation


def check_kind(kind: Any) -> str:
    """A registered kind, else ValueError listing the kinds."""
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"unknown distortion kind {kind!r}; accepted: {', '.join(KINDS)}")
    return kind


def _stages(kind: Any) -> tuple[Blur | Noise, ...]:
    """The stages of a kind, else ValueError listing the kinds."""
    return KINDS[check_kind(kind)]


def _check_border(border: Any) -> str:
    """A valid border mode, else ValueError listing them."""
    if border not in BORDERS:
        raise ValueError(f"unknown border mode {border!r}; accepted: {', '.join(BORDERS)}")
    return border


def _check_image(image: Any) -> np.ndarray:
    """A uint8 or float (0..255) image (H,W) or (H,W,C), else ValueError."""
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f"image must be a numpy array (H,W) or (H,W,C), got {type(image).__name__}"
        )
    if image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"image must be (H,W) or (H,W,C), got shape {image.shape}")
    if image.dtype != np.uint8:
        if not np.issubdtype(image.dtype, np.floating):
            raise ValueError(f"image dtype must be uint8 (or float in 0..255), got {image.dtype}")
        if not (np.isfinite(image).all() and image.min() >= 0 and image.max() <= 255):
            raise ValueError(f"{_FLOAT_IMAGE_RANGE}; got min {image.min()}, max {image.max()}")
    return image


def _check_batch(images: Any) -> torch.Tensor:
    """A uint8 or float (0..255) tensor (N,C,H,W), else ValueError."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor (N,C,H,W), got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must be (N,C,H,W), got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        if not images.is_floating_point():
            raise ValueError(f"images dtype must be uint8 (or float in 0..255), got {images.dtype}")
        if images.numel() and not (
            torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 255
        ):
            raise ValueError(_FLOAT_IMAGE_RANGE)
    return images


# ----------------------------------------------------------------------------- per image


def _finish(x: np.ndarray, integer: bool) -> np.ndarray:
    """Round half up (integer images) and clip to 0..255."""
    return np.clip(np.floor(x + 0.5) if integer else x, 0.0, 255.0)


def gaussian_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Add N(0, sigma^2) noise on the 0..255 scale; round and clip (uint8 in, uint8 out)."""
    image = _check_image(image)
    sigma = check_level(sigma, "sigma")
    noisy = image.astype(np.float64) + rng.normal(0.0, sigma, image.shape)
    return _finish(noisy, image.dtype == np.uint8).astype(image.dtype)


def distort(
    image: np.ndarray,
    kind: str,
    level: LevelSpec,
    rng: np.random.Generator | None,
    border: str = DEFAULT_BORDER,
) -> np.ndarray:
    """Distort one image (H,W) or (H,W,C) by a kind at a level (number or range); same shape/dtype.

    ``rng=None`` draws from a fresh, unseeded generator.
    """
    stages, image = _stages(kind), _check_image(image)
    level, border = check_range(kind, parse_level(level)), _check_border(border)
    rng = np.random.default_rng() if rng is None else rng
    integer = image.dtype == np.uint8
    x = image.astype(np.float64).reshape(image.shape[0], image.shape[1], -1)
    for stage in stages:
        x = _finish(stage(x, _draw(level, rng), rng, border), integer)
    return x.reshape(image.shape).astype(image.dtype)


# ----------------------------------------------------------------------------- batched


FLOAT32_DEVICES = {"cpu", "cuda"}
"""Device types whose uint8 batches are blurred in float32 (exact rounding restored in
``_correlate_batch``; IEEE float32, no TF32, on CUDA); others use float64. Both give the same
bytes: tested on the CPU (tests/test_distortions.py), and on an H200 by ``benchmarks/gpu.py``
(there float32 was up to 1.5x faster) before the last CPU speed-ups, which keep that argument."""


def _compute_dtype(images: torch.Tensor) -> torch.dtype:
    if images.dtype == torch.float64 or images.device.type not in FLOAT32_DEVICES:
        return torch.float64
    return torch.float32


@contextmanager
def _ieee_conv(device: torch.device, dtype: torch.dtype):
    """cuDNN convolutions in full float32 (TF32 would break the rounding bound) while inside."""
    if device.type != "cuda" or dtype != torch.float32:
        yield
        return
    # torch >= 2.9 has per-operator precision flags; mixing them with allow_tf32 is an error
    owner, name, value = torch.backends.cudnn, "allow_tf32", False
    conv = getattr(owner, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        owner, name, value = conv, "fp32_precision", "ieee"
    before = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, before)


def _sample_batch(
    stages: Sequence[Blur | Noise],
    levels: Any,
    shape: Sequence[int],
    generator: torch.Generator | None,
    device: torch.device,
) -> list[torch.Tensor]:
    """Draw every stage's per-sample parameters (kernels or noise) for a batch of this shape."""
    draw = _draw_batch(levels, shape[0], generator, generator.device if generator else device)
    return [stage.sample(draw(), shape, generator) for stage in stages]


def _apply_batch(
    images: torch.Tensor,
    stages: Sequence[Blur | Noise],
    params: Sequence[torch.Tensor],
    border: str,
) -> torch.Tensor:
    """Apply the stages with their sampled parameters; same dtype out."""
    integer, dtype, x = images.dtype == torch.uint8, _compute_dtype(images), images
    for stage, p in zip(stages, params, strict=True):
        x = stage.apply(x, p, border, dtype, integer)
    return x.to(images.dtype)


def distort_batch(
    images: torch.Tensor,
    kind: str,
    levels: LevelSpec | torch.Tensor | np.ndarray | Sequence[float],
    generator: torch.Generator | None = None,
    border: str = DEFAULT_BORDER,
) -> torch.Tensor:
    """Distort a batch (N,C,H,W) with per-sample kernels on its device; same dtype out.

    ``levels``: a number, a range ``(low, high)``/``"U(a,b)"`` drawn per sample (and per stage),
    or N per-sample levels (a tensor, array, or a sequence whose length is not 2).
    """
    stages, images, border = _stages(kind), _check_batch(images), _check_border(border)
    if len(images) == 0:
        return images.clone()
    params = _sample_batch(stages, levels, images.shape, generator, images.device)
    return _apply_batch(images, stages, params, border)


def draw_params(kind: str, level: LevelSpec, shape: Sequence[int], seed: int) -> list[torch.Tensor]:
    """One image's random draws (each stage's kernel or noise) from its own ``seed``, on the CPU.

    ``shape`` is the image's (C,H,W); the bytes ``apply_params`` then gives depend on neither the
    batch nor the device (streaming data: DataLoader workers draw, the training device applies).
    """
    gen = _block_generator(int(seed), 0)
    return _sample_batch(_stages(kind), parse_level(level), (1, *shape), gen, torch.device("cpu"))


def apply_params(
    images: torch.Tensor,
    kind: str,
    params: Sequence[Sequence[torch.Tensor]],
    border: str = DEFAULT_BORDER,
) -> torch.Tensor:
    """Apply per-image draws (``draw_params``, one list per image) to a batch on its device."""
    stages, images, border = _stages(kind), _check_batch(images), _check_border(border)
    if len(params) != len(images):
        raise ValueError(f"{len(params)} draws for a batch of {len(images)} images")
    if len(images) == 0:
        return images.clone()
    batched = [stage.concat(p) for stage, p in zip(stages, zip(*params, strict=True), strict=True)]
    return _apply_batch(images, stages, batched, border)


def distort_batch_seeded(
    images: torch.Tensor,
    kind: str,
    level: LevelSpec,
    seeds: Sequence[int],
    border: str = DEFAULT_BORDER,
) -> torch.Tensor:
    """Distort a batch (N,C,H,W) on its device, image i drawing from its own ``seeds[i]``."""
    images = _check_batch(images)
    if len(seeds) != len(images):
        raise ValueError(f"{len(seeds)} seeds for a batch of {len(images)} images")
    draws = [draw_params(kind, level, images.shape[1:], s) for s in seeds]
    return apply_params(images, kind, draws, border)


def _block_generator(seed: int, block: int) -> torch.Generator:
    """A CPU generator for one RNG block of a split, derived from (seed, block index)."""
    state = np.random.SeedSequence([seed, block]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def images_to_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 images (N,H,W) or (N,H,W,C) as a (N,C,H,W) view of a writable copy (even of a
    read-only memmap)."""
    chunk = np.array(images)
    channels = chunk.shape[3] if chunk.ndim == 4 else 1
    return torch.from_numpy(chunk).reshape(*chunk.shape[:3], channels).permute(0, 3, 1, 2)


def nchw_to_images(batch: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The inverse of ``images_to_nchw``: (N,C,H,W) back to images of ``shape``."""
    return batch.permute(0, 2, 3, 1).reshape(shape)


# Over 50 lines for its docstring (the argument forms it accepts).
def distort_array(
    images: np.ndarray,
    kind: str,
    level: LevelSpec,
    seed: int,
    batch_size: int = 1024,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Distort a whole split (N,H,W) or (N,H,W,C) uint8, deterministically from ``seed``.

    Random draws come from one CPU generator per block of ``RNG_BLOCK`` images, seeded by
    (seed, block index), so the bytes depend on neither ``batch_size`` nor ``device``.
    """
    from tqdm.auto import tqdm

    stages, level = _stages(kind), check_range(kind, parse_level(level))
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(
            "images must be a uint8 numpy array (N,H,W) or (N,H,W,C), got "
            f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}"
        )
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device or "cpu")
    out = np.empty_like(images)
    step = max(1, batch_size // RNG_BLOCK) * RNG_BLOCK
    with tqdm(
        total=len(images),
        unit="img",
        desc=f"distort {kind} {level_tag(level)}",
        disable=not progress,
        file=sys.stderr,
    ) as bar:
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            batch = images_to_nchw(chunk)
            blocks = [
                _sample_batch(
                    stages,
                    level,
                    (min(RNG_BLOCK, len(images) - b), *batch.shape[1:]),
                    _block_generator(int(seed), b // RNG_BLOCK),
                    torch.device("cpu"),
                )
                for b in range(start, start + len(batch), RNG_BLOCK)
            ]
            params = [
                stage.concat(p) for stage, p in zip(stages, zip(*blocks, strict=True), strict=True)
            ]
            result = _apply_batch(batch.to(device), stages, params, DEFAULT_BORDER)
            out[start : start + len(chunk)] = nchw_to_images(result.cpu(), chunk.shape)
            bar.update(len(chunk))
    return out
