"""Albumentations wrappers of the paper's distortions, for any Albumentations pipeline.

Each transform calls ``robust_ft.data.distortions.distort`` with the transform's own random
generator, so ``A.Compose([...], seed=s)`` is reproducible, and serialises with ``A.to_dict``.
uint8 images are distorted as in the paper; float images follow the Albumentations convention
(values in 0..1) and are scaled to 0..255 and back around the distortion. Set ``p=1.0`` to
distort every image (the default here, unlike Albumentations' 0.5).
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np
from pydantic import field_validator

from robust_ft.data.distortions import KINDS, Level, check_kind, distort, parse_level


class _LevelSchema(A.ImageOnlyTransform.InitSchema):
    """Validates ``level`` with ``parse_level`` (a number >= 0 or a (low, high) range)."""

    level: Any

    @field_validator("level", mode="before")
    @classmethod
    def _level(cls, value: Any) -> Level:
        return parse_level(value)


class _PaperTransform(A.ImageOnlyTransform):
    """Distorts an image by ``self.kind`` at ``self.level`` with the transform's own rng."""

    kind: str
    level: Level

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        """Distort one image (uint8 0..255, or float 0..1)."""
        if img.dtype == np.uint8:
            return distort(img, self.kind, self.level, self.random_generator)
        scaled = np.clip(img.astype(np.float64) * 255.0, 0.0, 255.0)
        out = distort(scaled, self.kind, self.level, self.random_generator) / 255.0
        return out.astype(img.dtype)


class PaperDistortion(_PaperTransform):
    """One of the paper's distortions by name (``KINDS``) at a level or a (low, high) range."""

    class InitSchema(_LevelSchema):
        kind: str

        @field_validator("kind")
        @classmethod
        def _kind(cls, value: str) -> str:
            return check_kind(value)

    def __init__(self, kind: str, level: Any = 0.0, p: float = 1.0):
        super().__init__(p=p)
        self.kind, self.level = kind, level


class _FixedKind(_PaperTransform):
    """A transform of one fixed kind (a class attribute): only ``level`` and ``p`` are arguments."""

    InitSchema = _LevelSchema

    def __init__(self, level: Any = 0.0, p: float = 1.0):
        super().__init__(p=p)
        self.level = level


class MotionBlurRW(_FixedKind):
    """Random-walk motion blur of the paper: round(level) 8-neighbour steps."""

    kind = "motion"


class DefocusDisk(_FixedKind):
    """Defocus blur of the paper: MATLAB's anti-aliased disc of radius ``level``."""

    kind = "defocus"


class PaperGaussianNoise(_FixedKind):
    """Gaussian noise of the paper: std ``level`` grey levels on the 0..255 scale."""

    kind = "noise"


def paper_pipeline(kind: str, level: Any) -> A.Compose:
    """The Compose of a kind's stages (``combined``: motion, defocus, noise), each with p=1.0."""
    level = parse_level(level)
    return A.Compose(
        [PaperDistortion(stage.name, level, p=1.0) for stage in KINDS[check_kind(kind)]]
    )
