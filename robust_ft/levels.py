"""Distortion levels: parsing and the two ways they are written (one function each).

``level_tag``: ``L2``, ``L2.5``, ``LU0-4`` -- what robust-ft writes: the ``level`` tag, run
names, metric keys and cell keys (one format, so a tag filter and a metric name agree).
``level_text``: ``2``, ``2.5``, ``U(0,4)`` -- config values and the console.
``parse_level`` reads both.
Pure Python, so commands that only format levels start fast.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

Level = float | tuple[float, float]
LevelSpec = float | tuple[float, float] | list[float] | str

_RANGE = re.compile(r"^\s*U\s*\(\s*([^,()]+?)\s*,\s*([^,()]+?)\s*\)\s*$", re.IGNORECASE)
_TAG = re.compile(r"^L(?:U([0-9.]+)-([0-9.]+)|([0-9.]+))$")  # level_tag's form: L2, LU0-4
_LEVEL_FORMS = "a number >= 0 (2, 2.5, '2', 'L2') or a range (0, 4), [0, 4], 'U(0,4)', 'LU0-4'"


MAX_LEVEL = {"motion": 20.0, "defocus": 20.0, "noise": 255.0}
"""The valid range of a level is [0, MAX_LEVEL[kind]]; the paper's axes run 0..4.

motion: a random walk of ``round(level)`` steps, a kernel of up to 41x41; defocus: a disc of
radius ``level``, up to 41x41 (wider blurs any image of the datasets to its mean); noise:
sigma on the 0..255 scale, at most the whole scale. ``combined`` applies each at one level, so
its bound is the smallest of its stages'.
"""


def check_range(kind: str, level: Level) -> Level:
    """``level`` (a number or a range) if it lies in the valid range of ``kind``, else ValueError."""
    stages = ("motion", "defocus", "noise") if kind == "combined" else (kind,)
    top = min(MAX_LEVEL.get(k, math.inf) for k in stages)
    high = level[1] if isinstance(level, tuple) else level
    if high > top:
        raise ValueError(
            f"level {level_text(level)} is out of range for {kind}: its levels run from 0 to "
            f"{top:g} (the paper's from 0 to 4)"
        )
    return level


def check_level(value: Any, what: str = "level") -> float:
    """A finite number >= 0 as float, else ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a number >= 0, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
    return value


def _to_number(text: str) -> float:
    """Parse a level number from text, else ValueError."""
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"cannot read a level from {text!r}; accepted: {_LEVEL_FORMS}") from None


def parse_level(value: LevelSpec) -> Level:
    """A level as a float, or a (low, high) range; accepts 2, '2.5', (0, 4), [0, 4], 'U(0,4)'."""
    if isinstance(value, str):
        match, tag = _RANGE.match(value), _TAG.match(value.strip())
        if tag:
            value = (_to_number(tag[1]), _to_number(tag[2])) if tag[1] else _to_number(tag[3])
        elif match:
            value = (_to_number(match[1]), _to_number(match[2]))
        else:
            value = _to_number(value)
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(
                f"a level range needs (low, high), got {value!r}; accepted: {_LEVEL_FORMS}"
            )
        low, high = (check_level(v, "level range bound") for v in value)
        if low > high:
            raise ValueError(f"level range needs low <= high, got {value!r}")
        return (low, high)
    try:
        return check_level(value)
    except ValueError as err:
        raise ValueError(f"{err}; accepted: {_LEVEL_FORMS}") from None


def level_tag(level: LevelSpec) -> str:
    """Metric-name tag of a level: 'L0', 'L2.5', 'LU0-4' (letters, digits, '.', '-' only)."""

    def number(x: float) -> str:
        return repr(x).removesuffix(".0").replace("+", "")

    level = parse_level(level)
    if isinstance(level, tuple):
        return f"LU{number(level[0])}-{number(level[1])}"
    return f"L{number(level)}"


def level_text(level: LevelSpec) -> str:
    """Canonical text of a level: ``2``, ``2.5``, ``U(0,4)`` (config values, the console)."""
    lv = parse_level(level)
    return f"U({lv[0]:g},{lv[1]:g})" if isinstance(lv, tuple) else f"{lv:g}"


def is_clean_level(level: LevelSpec) -> bool:
    """Level 0: no distortion whatever the kind."""
    return parse_level(level) == 0.0
