"""Text formatting shared by the console, the sweep and the report (imports nothing heavy)."""

from __future__ import annotations


def test_table(metrics: dict[str, float]) -> str:
    """``test/err/<kind>/<Lx>`` (and ``test/err5/...``) as a markdown table: kinds x levels.

    Cells are the top-1 error, with the top-5 error in parentheses where it was measured.
    """
    grid: dict[str, dict[str, str]] = {}
    levels: list[str] = []
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) != 4 or parts[:2] != ["test", "err"]:
            continue
        kind, level = parts[2], parts[3]
        top5 = metrics.get(f"test/err5/{kind}/{level}")
        grid.setdefault(kind, {})[level] = f"{value:.2f}" + (
            "" if top5 is None else f" ({top5:.2f})"
        )
        if level not in levels:
            levels.append(level)
    if not grid:
        return ""
    kinds = sorted(grid, key=lambda k: (k != "clean", list(grid).index(k)))
    levels.sort(key=_level_order)
    lines = ["| test set | " + " | ".join(levels) + " |", "|---|" + "---:|" * len(levels)]
    for kind in kinds:
        lines.append(f"| {kind} | " + " | ".join(grid[kind].get(lv, "") for lv in levels) + " |")
    return "\n".join(lines)


def _level_order(tag: str) -> tuple[float, str]:
    """``L2`` < ``L2.5`` < ``L10`` < anything else (``U(0,4)``), by name."""
    try:
        return float(tag[1:]), tag
    except ValueError:
        return float("inf"), tag


def fmt_error(v: float | None) -> str:
    """An error rate for a table: ``12.34`` or ``-`` when not measured."""
    return "-" if v is None else f"{v:.2f}"


def fmt_time(seconds: float | None) -> str:
    """``42 s`` or ``3.5 min`` (``?`` when unknown)."""
    if seconds is None:
        return "?"
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"
