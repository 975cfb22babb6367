"""The report (`robust-ft report`, `mlflow run . -e report`, `make report`) from MLflow runs.

Reads FINISHED runs from any tracking URI — the children of a sweep's parent run, or every run of
some experiments — and writes into an output directory:
- ``error_<model>_<dataset>.png``: Fig. 6/7 analog, test error vs level, a panel per kind, a line
  per method (no-train, first-N, re-train); ``errors.csv`` holds the points;
- ``gradvar_<model>_<dataset>_<layer>.png``: Fig. 8 analog, mean gradient variance vs level per
  method, with the clean model on clean images as the reference; ``gradvar.csv``;
- ``table1.csv``: Table 1 analog, top-1 (and top-5) error on clean and distorted test images,
  original (no-train) vs trained model, for every (kind, level, method); the HTML page shows the
  paper's protocol row (first-3, the strongest combined distortion) beside the paper's numbers;
- ``mce.csv``: corruption error of each method relative to no-train (100 = no-train);
- ``findings.csv``: the paper's claims checked on these numbers;
- ``index.html``: all of the above on one page.
Nothing but the tracked runs goes in: re-running the report on the same store gives the same
files. With a parent run, the directory is also logged as that run's ``report/`` artifact.

Level-0 points: no-train and re-train at level 0 are the clean pre-train's error on clean images;
first-N at level 0 is its ``first-N/clean`` run; a clean point stands for level 0 of every kind.
"""

from __future__ import annotations

import argparse
import html
import os
import time
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

# The paper's Table 1 (AlexNet on ILSVRC2012 val, first-3 fine-tuned on combined distortions with
# per-image levels U(0,4)), error rates in %, copied from shared/paper.md.
PAPER_TABLE1 = pd.DataFrame(
    {
        "orig_clean": [42.9, 20.1],
        "orig_distorted": [53.1, 28.2],
        "tuned_clean": [42.9, 20.4],
        "tuned_distorted": [47.7, 23.6],
    },
    index=pd.Index(["top-1", "top-5"], name="metric"),
)
COLUMNS = ["orig_clean", "orig_distorted", "tuned_clean", "tuned_distorted"]
SKIP_METHODS = {"sweep", "pipeline", "study"}


# ----------------------------------------------------------------- reading runs
def level_of_tag(tag: str) -> str:
    """Level text of a metric-name tag: ``L2`` -> ``2``, ``LU0-4`` -> ``U(0,4)``."""
    from robust_ft.levels import level_text

    return level_text(tag)


def level_value(level: str) -> float:
    """A level's position on a plot axis (NaN for a range such as ``U(0,4)``)."""
    return float("nan") if level.startswith("U") else float(level)


def method_order(method: str) -> tuple[int, int]:
    """Sort key: pretrain, notrain, first-1..N, retrain."""
    if method.startswith("first-"):
        return (2, int(method.split("-")[1]))
    return ({"pretrain": 0, "notrain": 1, "retrain": 3}.get(method, 4), 0)


def fetch_runs(client, parent: str | None = None, experiments: Iterable[str] = ()) -> list:
    """FINISHED runs of a sweep (children of ``parent``) or of experiments (all when none)."""
    if parent:
        exp_ids = [client.get_run(parent).info.experiment_id]
        where = f"tags.mlflow.parentRunId = '{parent}' and attributes.status = 'FINISHED'"
    else:
        names = list(experiments)
        exps = [client.get_experiment_by_name(n) for n in names] if names else None
        if exps is not None and None in exps:
            missing = [n for n, e in zip(names, exps, strict=True) if e is None]
            raise ValueError(f"no MLflow experiment named {', '.join(missing)}")
        exps = exps if exps is not None else client.search_experiments()
        exp_ids = [e.experiment_id for e in exps]
        where = "attributes.status = 'FINISHED'"
    runs = client.search_runs(
        exp_ids, where, order_by=["attributes.start_time DESC"], max_results=50000
    )
    return [
        r for r in runs if r.data.tags.get("method") and r.data.tags["method"] not in SKIP_METHODS
    ]


def records(runs: list) -> pd.DataFrame:
    """One row per (run, test set, statistic): the long table every output is built from.

    Columns: model, dataset, seed, method, kind, level (the run's training distortion; the
    test set's for no-train), test_kind, test_level, stat (err, err5, gradvar), layer, value.
    The newest run of each cell wins (a sweep has exactly one).
    """
    rows, seen = [], set()
    for r in runs:  # newest first
        t = r.data.tags
        ident = t.get("cell") or (t.get("model"), t.get("dataset"), t.get("seed"), t["method"],
                                  t.get("distortion"), t.get("level"))  # fmt: skip
        if ident in seen:
            continue
        seen.add(ident)
        base = {
            "model": t.get("model", "?"),
            "dataset": t.get("dataset", "?"),
            "seed": t.get("seed", "0"),
            "method": t["method"],
            "kind": t.get("distortion", "clean"),
            "level": _level_or_zero(t.get("level", "0")),
            "run_id": r.info.run_id,
        }
        for key, value in r.data.metrics.items():
            parts = key.split("/")
            if parts[0] == "test" and len(parts) == 4:
                stat, layer = parts[1], ""
            elif parts[0] == "gradvar" and len(parts) == 4:
                stat, layer = "gradvar", parts[1]
            else:
                continue
            test_level = level_of_tag(parts[3])
            rows.append({**base, "test_kind": parts[2], "test_level": test_level, "stat": stat,
                         "layer": layer, "value": float(value)})  # fmt: skip
    cols = ["model", "dataset", "seed", "method", "kind", "level", "run_id", "test_kind",
            "test_level", "stat", "layer", "value"]  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


def _level_or_zero(text: str) -> str:
    from robust_ft.levels import level_text

    try:
        return level_text(text)
    except ValueError:  # a multi-level tag of a hand-made run: its test sets say the levels
        return "0"


# ----------------------------------------------------------------- derived tables
def curve_points(rec: pd.DataFrame) -> pd.DataFrame:
    """Points of the Fig. 6/7/8 curves: (method, kind, level) -> value, one row per seed.

    Each point comes from the run that measured it: no-train runs give every test set they
    evaluated (the clean one too); a trained run gives its own (kind, level); a run trained on
    clean data (first-N on clean) gives level 0 of every kind. The pre-train stands in for the
    no-train model on clean images only where no no-train run tested them (it is that model).
    A re-train has no level-0 point unless a re-train on clean data was run.
    """
    keys = ["model", "dataset", "seed", "method", "test_kind", "test_level", "stat", "layer"]
    renamed = {"test_kind": "kind", "test_level": "level"}
    if rec.empty:
        return pd.DataFrame(columns=[*keys, "value"]).rename(columns=renamed)
    notrain = rec[rec.method == "notrain"]
    trained = rec[rec.method != "notrain"]
    own = trained[(trained.test_kind == trained.kind) & (trained.test_level == trained.level)]
    pre = own[own.method == "pretrain"].assign(method="notrain")  # after the real ones
    pts = pd.concat([notrain, own[own.method != "pretrain"], pre], ignore_index=True)
    kinds = sorted(set(pts.test_kind) - {"clean"})
    clean = pts[pts.test_kind == "clean"]
    broadcast = [clean.assign(test_kind=k, test_level="0") for k in kinds]
    pts = pd.concat([pts[pts.test_kind != "clean"], *broadcast], ignore_index=True)
    return pts.drop_duplicates(keys)[[*keys, "value"]].rename(columns=renamed)


def aggregate(points: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation and count over seeds."""
    keys = ["model", "dataset", "method", "kind", "level", "stat", "layer"]
    if points.empty:
        return pd.DataFrame(columns=[*keys, "mean", "std", "n"])
    out = points.groupby(keys, dropna=False)["value"].agg(["mean", "std", "count"]).reset_index()
    out = out.rename(columns={"count": "n"})
    out["std"] = out["std"].fillna(0.0)
    out["_m"] = out.method.map(method_order)
    out["_l"] = out.level.map(level_value)
    return out.sort_values(["model", "dataset", "stat", "layer", "kind", "_m", "_l"]).drop(
        columns=["_m", "_l"]
    )


def table1(rec: pd.DataFrame) -> pd.DataFrame:
    """Table 1 analog for every trained (kind, level, method): original vs trained, clean vs distorted."""
    err = rec[rec.stat.isin(["err", "err5"])]
    orig = err[err.method.isin(["notrain", "pretrain"])]
    orig_clean = (
        orig[orig.test_kind == "clean"].groupby(["model", "dataset", "seed", "stat"]).value.mean()
    )
    orig_dist = (
        orig[orig.test_kind != "clean"]
        .groupby(["model", "dataset", "seed", "stat", "test_kind", "test_level"])
        .value.mean()
    )
    tuned = err[~err.method.isin(["notrain", "pretrain"]) & (err.kind != "clean")]
    rows = []
    for (model, dataset, seed, method, kind, level, stat), g in tuned.groupby(
        ["model", "dataset", "seed", "method", "kind", "level", "stat"]
    ):
        mine = g.set_index(["test_kind", "test_level"]).value
        rows.append({
            "model": model, "dataset": dataset, "seed": seed, "method": method, "kind": kind,
            "level": level, "metric": "top-1" if stat == "err" else "top-5",
            "orig_clean": orig_clean.get((model, dataset, seed, stat)),
            "orig_distorted": orig_dist.get((model, dataset, seed, stat, kind, level)),
            "tuned_clean": mine.get(("clean", "0")),
            "tuned_distorted": mine.get((kind, level)),
        })  # fmt: skip
    keys = ["model", "dataset", "method", "kind", "level", "metric"]
    if not rows:
        return pd.DataFrame(columns=[*keys, *COLUMNS, "n"])
    df = pd.DataFrame(rows)
    out = df.groupby(keys)[COLUMNS].mean().reset_index()
    out["n"] = df.groupby(keys).size().values
    out["_m"] = out.method.map(method_order)
    return out.sort_values(["model", "dataset", "kind", "level", "_m", "metric"]).drop(columns="_m")


def relative_ce(agg: pd.DataFrame) -> pd.DataFrame:
    """Corruption error per kind relative to no-train (sum of errors over levels > 0, in %) and its mean."""
    err = agg[(agg.stat == "err") & (agg.level != "0")]
    rows = []
    for (model, dataset), g in err.groupby(["model", "dataset"]):
        base = g[g.method == "notrain"].set_index(["kind", "level"])["mean"]
        for method, gm in g.groupby("method"):
            mine = gm.set_index(["kind", "level"])["mean"]
            row = {"model": model, "dataset": dataset, "method": method}
            ces = []
            for kind in sorted(set(g.kind)):
                both = [i for i in mine.index if i[0] == kind and i in base.index]
                if both:
                    ce = 100.0 * mine[both].sum() / base[both].sum()
                    row[f"ce_{kind}"] = ce
                    ces.append(ce)
            row["mce"] = sum(ces) / len(ces) if ces else None
            row["mean_err"] = mine.mean()
            rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["_m"] = out.method.map(method_order)
    return out.sort_values(["model", "dataset", "_m"]).drop(columns="_m")


FINDING_COLUMNS = ["model", "dataset", "claim", "paper", "holds", "detail"]
NOT_RUN = "not run"


def findings(agg: pd.DataFrame) -> pd.DataFrame:
    """The paper's claims (Sec. 4-5) checked on these runs: ``holds`` is yes, no or not run.

    A claim is judged only on cells that exist; when a needed cell is missing it says
    ``not run`` and which runs would decide it.
    """
    rows = []
    for (model, dataset), g in agg.groupby(["model", "dataset"]):
        e = g[(g.stat == "err") & (g.level != "0")].set_index(["method", "kind", "level"])["mean"]
        for claim, paper, holds, detail in _claims(e, g):
            if holds is not NOT_RUN:
                holds = "yes" if holds else "no"
            values = (model, dataset, claim, paper, holds, detail)
            rows.append(dict(zip(FINDING_COLUMNS, values, strict=True)))
    return pd.DataFrame(rows, columns=FINDING_COLUMNS)


def _claims(e: pd.Series, g: pd.DataFrame) -> list[tuple]:
    """(claim, the paper's words, holds: bool | NOT_RUN, detail) of one model x dataset."""
    return [
        _trained_beats_notrain(e),
        _first3_close_to_first4(e),
        _finetune_at_low_levels(e),
        _retrain_at_high_levels(e),
        _worst_kinds(e),
        _gradvar(g),
    ]


def _cells(e: pd.Series, method: str) -> pd.Series:
    """A method's errors by (kind, level); empty when it was not run."""
    return e[method] if method in e.index.get_level_values("method") else e.iloc[:0]


def _numeric_levels(cells: pd.Series) -> list[str]:
    return sorted({lv for _, lv in cells.index if not lv.startswith("U")}, key=float)


def _trained_beats_notrain(e: pd.Series) -> tuple:
    claim, paper = (
        "fine-tuning and re-training lower the error",
        ("Both fine-tuning and re-training methods can significantly reduce error rate (Sec. 4)"),
    )
    base = _cells(e, "notrain")
    trained = [m for m in dict.fromkeys(e.index.get_level_values("method")) if m != "notrain"]
    pairs = [(m, i) for m in trained for i in _cells(e, m).index if i in base.index]
    if not pairs:
        return claim, paper, NOT_RUN, "needs no-train and trained runs on the same (kind, level)"
    lower = [e[(m, *i)] < base[i] for m, i in pairs]
    return claim, paper, all(lower), f"lower than no-train in {sum(lower)}/{len(pairs)} cells"


def _first3_close_to_first4(e: pd.Series) -> tuple:
    claim = "first-3 close to first-4"
    paper = "first-3 and first-4 have very similar results (Sec. 4, LeNet-5)"
    f3, f4, base = _cells(e, "first-3"), _cells(e, "first-4"), _cells(e, "notrain")
    both = [i for i in f3.index if i in f4.index and i in base.index]
    if not both:
        return claim, paper, NOT_RUN, "needs first-3, first-4 and no-train on the same cells"
    diff = (f3[both] - f4[both]).abs()
    rel = float((diff / base[both]).mean())
    detail = (
        f"mean |first-3 - first-4| = {diff.mean():.2f} points over {len(both)} cells "
        f"({100 * rel:.1f}% of the no-train error)"
    )
    return claim, paper, rel < 0.1, detail


def _best_finetune(e: pd.Series, level: str) -> dict[str, tuple[float, float]]:
    """Per kind at ``level``: the best first-N's error and re-train's, where both were run."""
    ft = [m for m in dict.fromkeys(e.index.get_level_values("method")) if m.startswith("first-")]
    re = _cells(e, "retrain")
    out = {}
    for kind, lv in re.index:
        mine = [e[(m, kind, lv)] for m in ft if (m, kind, lv) in e.index]
        if lv == level and mine:
            out[kind] = (min(mine), re[(kind, lv)])
    return out


def _finetune_at_low_levels(e: pd.Series) -> tuple:
    claim = "at the lowest level fine-tuning is within 1 point of re-training"
    paper = "When the distortion is small, fine-tuning achieves comparable results (Sec. 4)"
    levels = _numeric_levels(_cells(e, "retrain"))
    cells = _best_finetune(e, levels[0]) if levels else {}
    if not cells:
        return claim, paper, NOT_RUN, "needs re-train and a first-N at the same (kind, level)"
    gaps = {k: ft - re for k, (ft, re) in cells.items()}
    detail = f"level {levels[0]}: best first-N minus re-train " + ", ".join(
        f"{k} {v:+.2f}" for k, v in sorted(gaps.items())
    )
    return claim, paper, all(v <= 1.0 for v in gaps.values()), detail


def _retrain_at_high_levels(e: pd.Series) -> tuple:
    claim = "at the highest level re-training beats fine-tuning"
    paper = "When the distortion level increases, re-training achieves a better result (Sec. 4)"
    levels = _numeric_levels(_cells(e, "retrain"))
    cells = _best_finetune(e, levels[-1]) if levels else {}
    if not cells:
        return claim, paper, NOT_RUN, "needs re-train and a first-N at the same (kind, level)"
    wins = sorted(k for k, (ft, re) in cells.items() if re < ft)
    detail = f"level {levels[-1]}: re-train best in {len(wins)}/{len(cells)} kinds ({', '.join(wins) or 'none'})"
    return claim, paper, 2 * len(wins) > len(cells), detail


def _worst_kinds(e: pd.Series) -> tuple:
    claim = "defocus and combined hurt most (no-train)"
    paper = "Defocus blur and combined noise have more effect on error rate (Sec. 4)"
    hurt = _cells(e, "notrain").groupby(level="kind").mean().sort_values(ascending=False)
    if len(hurt) < 3 or not {"defocus", "combined"} <= set(hurt.index):
        return claim, paper, NOT_RUN, "needs no-train on defocus, combined and another kind"
    detail = "mean no-train error over levels > 0: " + ", ".join(
        f"{k} {v:.1f}" for k, v in hurt.items()
    )
    return claim, paper, set(hurt.index[:2]) == {"defocus", "combined"}, detail


def _gradvar(g: pd.DataFrame) -> tuple:
    claim = "gradient variance: no-train below clean, fine-tune near clean, re-train above"
    paper = "Fig. 8: no train decreases, fine-tuning stays similar, re-training is higher (Sec. 4)"
    gv = g[(g.stat == "gradvar") & (g.level != "0")]
    ref = g[(g.stat == "gradvar") & (g.level == "0") & (g.method == "notrain")]["mean"].mean()
    ratio = gv.groupby("method")["mean"].mean() / ref
    ft = [m for m in ratio.index if m.startswith("first-")]
    if ref != ref or "notrain" not in ratio.index or not ft or "retrain" not in ratio.index:
        return (
            claim,
            paper,
            NOT_RUN,
            "needs gradvar of no-train (clean too), a first-N and re-train",
        )
    holds = (
        ratio["notrain"] < 1
        and ratio["retrain"] > 1
        and all(abs(ratio[m] - 1) < abs(ratio["notrain"] - 1) for m in ft)
    )
    detail = "mean gradvar over levels > 0 / clean model on clean images: " + ", ".join(
        f"{m} {ratio[m]:.2f}" for m in sorted(ratio.index, key=method_order)
    )
    return claim, paper, bool(holds), detail


# ----------------------------------------------------------------- figures
FIG_WIDTH_PX = 1600
"""Figures are at least this wide: readable at full width."""
MARKERS = {"notrain": "s", "retrain": "D", "pretrain": "^"}
FIRST_N_MARKERS = "ovP*Xph"


def _plot_panels(agg: pd.DataFrame, stat: str, ylabel: str, title: str, path: Path,
                 reference: float | None = None) -> Path | None:  # fmt: skip
    """One panel per kind, one line per method, value vs level (numeric levels only).

    Every method has its own colour and marker and one entry in a legend shared by the panels
    (a method run at a single level is a labelled marker, not an anonymous dot).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = agg[(agg.stat == stat) & ~agg.level.str.startswith("U")]
    kinds = sorted(set(d[d.level != "0"].kind))  # a curve needs a distorted level
    if not kinds:
        return None
    methods = sorted(set(d.method), key=method_order)
    colors = _colors(methods, plt.cm.viridis)
    ft = [m for m in methods if m.startswith("first-")]
    markers = MARKERS | {m: FIRST_N_MARKERS[i % len(FIRST_N_MARKERS)] for i, m in enumerate(ft)}
    width = max(4.0 * len(kinds), 8.0)
    fig, axes = plt.subplots(1, len(kinds), figsize=(width, 4.2), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        for method in methods:
            m = d[(d.kind == kind) & (d.method == method)].copy()
            if m.empty:
                continue
            m["x"] = m.level.map(float)
            m = m.sort_values("x")
            style = "--" if method == "notrain" else "-"
            ax.errorbar(m.x, m["mean"], yerr=m["std"], label=method, color=colors.get(method),
                        linestyle=style, marker=markers.get(method, "o"), markersize=6,
                        capsize=2)  # fmt: skip
        if reference is not None:
            ax.axhline(reference, color="grey", linestyle=":", label="clean model, clean images")
        ax.set_title(kind)
        ax.set_xlabel("distortion level")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    handles = {}
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(len(handles), 8),
               frameon=False)  # fmt: skip
    fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=max(100, -(-FIG_WIDTH_PX // int(width))))
    plt.close(fig)
    return path


def _colors(methods: list[str], cmap) -> dict[str, object]:
    """no-train black, re-train red, first-N along a colour map (blue = first-1)."""
    ft = [m for m in methods if m.startswith("first-")]
    out = {m: cmap(0.1 + 0.75 * i / max(1, len(ft) - 1)) for i, m in enumerate(ft)}
    return out | {"notrain": "black", "retrain": "tab:red", "pretrain": "grey"}


def figures(agg: pd.DataFrame, out: Path) -> list[tuple[str, Path]]:
    """Fig. 6/7 and Fig. 8 analogs of every (model, dataset) in the table: (caption, file)."""
    made = []
    for (model, dataset), g in agg.groupby(["model", "dataset"]):
        fig_no = {"lenet5": "Fig. 6", "cifar10_quick": "Fig. 7"}.get(model, "Fig. 6/7")
        p = _plot_panels(g, "err", "test error (%)", f"{fig_no} analog: {model} on {dataset}",
                         out / f"error_{model}_{dataset}.png")  # fmt: skip
        if p:
            made.append((f"{fig_no} analog: top-1 test error vs level, {model} on {dataset}", p))
        for layer, gl in g[g.stat == "gradvar"].groupby("layer"):
            ref = gl[(gl.method == "notrain") & (gl.level == "0")]["mean"].mean()
            p = _plot_panels(gl, "gradvar", f"mean gradient variance ({layer})",
                             f"Fig. 8 analog: {model} on {dataset}, {layer}",
                             out / f"gradvar_{model}_{dataset}_{layer}.png",
                             reference=ref if ref == ref else None)  # fmt: skip
            if p:
                made.append((f"Fig. 8 analog: mean gradient variance of {layer}, {model} on {dataset}", p))  # fmt: skip
    return made


# ----------------------------------------------------------------- the page
def _protocol_rows(t1: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 1 protocol in our table: first-3 (or the nearest) on the strongest combined."""
    if t1.empty:
        return t1
    rows = []
    for _, g in t1.groupby(["model", "dataset"]):
        kind = "combined" if "combined" in set(g.kind) else sorted(set(g.kind))[0]
        g = g[g.kind == kind]
        level = max(
            g.level, key=lambda lv: (lv.startswith("U"), level_value(lv) if lv[0] != "U" else 0)
        )
        g = g[g.level == level]
        ft = sorted(
            {m for m in g.method if m.startswith("first-")},
            key=lambda m: abs(method_order(m)[1] - 3),
        )
        rows.append(g[g.method == (ft[0] if ft else g.method.iloc[0])])
    return pd.concat(rows)


def _html_table(df: pd.DataFrame) -> str:
    if df is None or df.empty:
        return "<p><em>no data</em></p>"
    return df.to_html(index=False, float_format=lambda v: f"{v:.2f}", na_rep="-", border=0)


def write_html(out: Path, figs, t1: pd.DataFrame, ce: pd.DataFrame, fnd: pd.DataFrame,
               source: dict[str, str], budgets: dict[str, str]) -> Path:  # fmt: skip
    """index.html: provenance, each method's budget, the figures, Table 1 analog beside the
    paper's, mCE, findings."""
    proto = _protocol_rows(t1)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>robust-ft report</title>",
        "<style>body{font-family:sans-serif;max-width:1400px;margin:auto}"
        "table{border-collapse:collapse;font-size:13px}td,th{padding:2px 8px;"
        "border-bottom:1px solid #ddd;text-align:right}img{max-width:100%}</style></head><body>",
        "<h1>robust-ft report</h1>",
        "<p>Built from tracked MLflow runs only. "
        + "; ".join(f"{html.escape(k)}: <code>{html.escape(v)}</code>" for k, v in source.items())
        + "</p>",
        "<h2>Training budget per method</h2>",
        _html_table(pd.DataFrame(list(budgets.items()), columns=["method", "budget"])),
        "<h2>Fig. 6/7/8 analogs</h2>",
    ]
    parts += [f"<figure><img src='{p.name}' alt='{html.escape(c)}'><figcaption>{html.escape(c)}"
              f"</figcaption></figure>" for c, p in figs]  # fmt: skip
    parts += [
        "<h2>Table 1 analog</h2>",
        "<p>Error (%) of the original (no-train) and the trained model on clean and distorted "
        "test images, for the paper's protocol (first-3, strongest combined distortion) where "
        "this data has it; <a href='table1.csv'>table1.csv</a> has every kind, level and "
        "method.</p>",
        _html_table(proto),
        "<p>The paper's Table 1 (AlexNet, ILSVRC2012 val, first-3 on combined U(0,4)):</p>",
        _html_table(PAPER_TABLE1.reset_index()),
        "<h2>Corruption error relative to no-train</h2>",
        "<p>Per kind: the sum over levels &gt; 0 of a method's error divided by no-train's, in %"
        " (100 = no-train); mce is the mean over kinds. <a href='mce.csv'>mce.csv</a></p>",
        _html_table(ce),
        "<h2>The paper's findings, checked on these runs</h2>",
        "<p>holds: yes or no, judged only on cells that were run; <em>not run</em> says which "
        "runs would decide it.</p>",
        _html_table(fnd),
        "<p>Data: <a href='errors.csv'>errors.csv</a>, <a href='gradvar.csv'>gradvar.csv</a>, "
        "<a href='findings.csv'>findings.csv</a>.</p></body></html>",
    ]
    path = out / "index.html"
    path.write_text("\n".join(parts))
    return path


def schedules(runs: list) -> dict[str, str]:
    """Each method's training budget as its newest run's params say: epochs, rate, images."""
    d = "data.init_args."
    out = {}
    newest = {}
    for r in runs:  # newest first
        newest.setdefault(r.data.tags.get("method", ""), r.data.params)
    for method in sorted(newest, key=method_order):
        p = newest[method]
        images = (
            f"test {p.get(d + 'test_subset', 'all')} images per test set"
            if method == "notrain"
            else f"{p.get(d + 'train_subset', 'all')} training images, "
            f"validation {p.get(d + 'val_split', '-')}, test {p.get(d + 'test_subset', 'all')}"
        )
        if method == "notrain":
            out[method] = f"no training; {images}"
            continue
        sched = "model.finetune." if method.startswith("first-") else "model."
        epochs = p.get(f"{sched}max_epochs") or p.get("trainer.max_epochs")
        rate = p.get(f"{sched}lr") or p.get("model.lr")
        kind = p.get(f"{sched}lr_schedule") or p.get("model.lr_schedule", "constant")
        out[method] = f"{epochs} epochs, lr {rate} ({kind}); {images}"
    return out


def build_report(parent_run: str | None = None, experiments: Iterable[str] = (),
                 out: str | Path = "report", tracking_uri: str | None = None,
                 log: bool = True) -> Path:  # fmt: skip
    """Write the report of a sweep (or of experiments) into ``out``; log it to the parent run."""
    from robust_ft.tracking import check_reachable, client, default_tracking_uri, redact

    uri = tracking_uri or default_tracking_uri()
    check_reachable(uri)
    mlflow_client = client(uri)
    runs = fetch_runs(mlflow_client, parent_run, experiments)
    if not runs:
        raise ValueError(
            f"no FINISHED runs with a method tag found in {redact(uri)}"
            + (f" under parent run {parent_run}" if parent_run else "")
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rec = records(runs)
    agg = aggregate(curve_points(rec))
    t1, ce, fnd = table1(rec), relative_ce(agg), findings(agg)
    agg[agg.stat != "gradvar"].to_csv(out / "errors.csv", index=False, float_format="%.4f")
    agg[agg.stat == "gradvar"].to_csv(out / "gradvar.csv", index=False, float_format="%.6g")
    t1.to_csv(out / "table1.csv", index=False, float_format="%.4f")
    ce.to_csv(out / "mce.csv", index=False, float_format="%.2f")
    fnd.to_csv(out / "findings.csv", index=False)
    figs = figures(agg, out)
    source = {"tracking URI": redact(uri), "runs": str(len(runs))}
    if parent_run:
        parent = mlflow_client.get_run(parent_run)
        source["sweep parent run"] = parent_run
        source.update({k.removeprefix("sweep."): v for k, v in parent.data.params.items()
                       if k.startswith("sweep.") and not k.startswith("sweep.grid.")})  # fmt: skip
        if parent.data.tags.get("sweep_wall_s"):
            source["sweep wall time (s)"] = parent.data.tags["sweep_wall_s"]
    else:
        source["experiments"] = ", ".join(experiments) or "all"
    write_html(out, figs, t1, ce, fnd, source, schedules(runs))
    targets = [parent_run] if parent_run and log else []
    own = os.environ.get("MLFLOW_RUN_ID")
    if own and log and own not in targets:
        targets.append(own)
    for run_id in targets:
        mlflow_client.log_artifacts(run_id, str(out), "report")
    print(f"[report] {len(runs)} runs -> {out}/index.html ({len(figs)} figures)"
          + (f"; logged to run(s) {', '.join(targets)}" if targets else ""), flush=True)  # fmt: skip
    return out / "index.html"


def find_sweep(client, name: str | None) -> str | None:
    """The newest sweep parent run (named ``name`` when given); None when there is none."""
    exps = [e.experiment_id for e in client.search_experiments()]
    where = "tags.sweep_role = 'parent'" + (f" and tags.sweep = '{name}'" if name else "")
    runs = client.search_runs(exps, where, order_by=["attributes.start_time DESC"], max_results=1)
    if not runs and name:
        raise ValueError(f"no sweep named {name!r} in the tracking store")
    return runs[0].info.run_id if runs else None


def main(argv: list[str] | None = None) -> Path:
    """`robust-ft report`: build the report from MLflow runs (default: the newest sweep)."""
    p = argparse.ArgumentParser(prog="robust-ft report", description=__doc__.split("\n\n")[0])
    p.add_argument("--parent", help="a sweep's parent run id (its children are the runs)")
    p.add_argument("--sweep", help="a sweep's name (its newest parent run)")
    p.add_argument("--experiment", action="append", default=[],
                   help="every finished run of this experiment (repeat); instead of a sweep")  # fmt: skip
    p.add_argument("--out", default="report", help="output directory")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI)")
    p.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    a = p.parse_args(argv)
    experiments = [e for e in a.experiment if e]  # `mlflow run` passes empty parameters as ''
    parent = a.parent or None
    if not parent and not experiments:  # a named sweep, else the newest one, else every run
        from robust_ft.tracking import client

        parent = find_sweep(client(a.tracking_uri), a.sweep or None)
    start = time.time()
    path = build_report(parent, experiments, a.out, a.tracking_uri, log=not a.no_log)
    print(f"[report] done in {time.time() - start:.1f} s")
    return path
