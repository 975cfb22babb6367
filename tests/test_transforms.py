"""Albumentations wrappers: inside A.Compose, seeded determinism, serialisation, bad input."""

from __future__ import annotations

import json

import albumentations as A
import numpy as np
import pytest

from robust_ft.data.distortions import KINDS, distort
from robust_ft.data.transforms import (
    DefocusDisk,
    MotionBlurRW,
    PaperDistortion,
    PaperGaussianNoise,
    paper_pipeline,
)

RNG = np.random.default_rng(0)
GREY = RNG.integers(0, 256, (28, 28), dtype=np.uint8)
COLOUR = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)

TRANSFORMS = [
    lambda: MotionBlurRW(level=2),
    lambda: DefocusDisk(level=(0.5, 3.5)),
    lambda: PaperGaussianNoise(level="U(1,4)"),
    lambda: PaperDistortion("combined", (0, 4)),
]


@pytest.mark.parametrize("make", TRANSFORMS)
@pytest.mark.parametrize("image", [GREY, COLOUR], ids=["grey", "colour"])
def test_in_compose_keeps_shape_and_dtype(make, image):
    out = A.Compose([make()], seed=1)(image=image)["image"]
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out, image)


@pytest.mark.parametrize("make", TRANSFORMS)
def test_seeded_compose_is_deterministic(make):
    def run(seed):
        pipeline = A.Compose([make()], seed=seed)
        return [pipeline(image=COLOUR)["image"] for _ in range(3)]

    first, again, other = run(7), run(7), run(8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    assert not np.array_equal(first[0], first[1])  # fresh draws on every call


@pytest.mark.parametrize("make", TRANSFORMS)
def test_to_dict_from_dict_round_trip(make):
    pipeline = A.Compose([make()], seed=3)
    data = json.loads(json.dumps(A.to_dict(pipeline)))  # as stored in a run's config
    restored = A.from_dict(data)
    original, copy = pipeline.transforms[0], restored.transforms[0]
    assert type(copy) is type(original)
    assert (copy.kind, copy.level, copy.p) == (original.kind, original.level, original.p)
    restored.set_random_seed(3)
    assert np.array_equal(pipeline(image=COLOUR)["image"], restored(image=COLOUR)["image"])


def test_transform_equals_distort_with_its_generator():
    transform = DefocusDisk(level=2.3)
    expected = distort(COLOUR, "defocus", 2.3, None)
    assert np.array_equal(A.Compose([transform])(image=COLOUR)["image"], expected)


def test_float_images_use_albumentations_0_1_scale():
    image = COLOUR.astype(np.float32) / 255
    out = A.Compose([DefocusDisk(level=2)])(image=image)["image"]
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    expected = distort(COLOUR.astype(np.float64), "defocus", 2, None) / 255
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_default_probability_is_one():
    assert MotionBlurRW(level=1).p == 1.0 and PaperDistortion("noise", 1).p == 1.0


@pytest.mark.parametrize("kind", list(KINDS))
def test_paper_pipeline(kind):
    pipeline = paper_pipeline(kind, 2)
    stages = [s.name for s in KINDS[kind]]
    assert [t.kind for t in pipeline.transforms] == stages
    assert all(t.p == 1.0 and t.level == 2.0 for t in pipeline.transforms)
    described = json.dumps(A.to_dict(pipeline))
    assert all(f'"kind": "{name}"' in described for name in stages)
    out = pipeline(image=COLOUR)["image"]
    assert out.shape == COLOUR.shape and out.dtype == np.uint8


def test_paper_pipeline_combined_equals_distort():
    """The three-stage Compose draws exactly what distort('combined') draws from one rng."""
    pipeline = paper_pipeline("combined", "U(0,4)")
    pipeline.set_random_seed(11)
    rng = np.random.default_rng(11)
    for transform in pipeline.transforms:
        transform.set_random_state(rng, transform.py_random)
    out = pipeline(image=COLOUR)["image"]
    assert np.array_equal(out, distort(COLOUR, "combined", (0, 4), np.random.default_rng(11)))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: PaperDistortion("blur", 1), "unknown distortion kind 'blur'; accepted: motion"),
        (lambda: MotionBlurRW(level=-1), "finite number >= 0"),
        (lambda: DefocusDisk(level="U(4,0)"), "low <= high"),
        (lambda: PaperGaussianNoise(level=float("nan")), "finite number >= 0"),
        (lambda: paper_pipeline("blur", 1), "unknown distortion kind"),
        (lambda: paper_pipeline("noise", "lots"), "cannot read a level"),
    ],
)
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()
