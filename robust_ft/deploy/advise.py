"""`robust-ft advise`: the cheapest method whose measured error is within a tolerance of the best.

Reads tracked runs only (a sweep's cells or every finished run of ``<model>-<dataset>``), never
trains. Cost order: no-train < first-1 < ... < first-N < re-train. The paper's rule (Sec. 5):
at low distortion levels fine-tuning the first layers is about as good as re-training and
preferable (it converges faster and needs fewer distorted images); at high levels re-training
wins. Applied to the numbers measured here: take the cheapest method within the tolerance.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

RULE = (
    "paper Sec. 5: at low distortion levels fine-tuning the first layers does about as well as "
    "re-training and is preferable (faster to converge, needs fewer distorted images); at high "
    "levels re-training does better. Applied here: the cheapest method (no-train < first-1 < ... "
    "< first-N < re-train) whose test error is within {tol:g} points of the best measured one."
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="robust-ft advise", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="lenet5, cifar10_quick or alexnet")
    p.add_argument("--dataset", required=True, help="e.g. fashion_mnist")
    p.add_argument("--kind", required=True, help="motion, defocus, noise or combined")
    p.add_argument("--level", required=True, help="a level such as 2, 2.5 or U(0,4)")
    p.add_argument("--tolerance", type=float, default=0.5, help="points of error (0.5)")
    p.add_argument("--sweep", help="read this sweep's cells (default: every finished run)")
    p.add_argument("--experiment", help="MLflow experiment (default <model>-<dataset>)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI)")
    p.add_argument("--json", action="store_true", help="the answer as JSON on stdout")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """`robust-ft advise`: print the advice (a table, or JSON)."""
    a = parse_args(argv)  # before the imports: `--help` answers at once
    from robust_ft.levels import level_text
    from robust_ft.models import n_param_layers

    if a.kind not in ("motion", "defocus", "noise", "combined"):
        raise ValueError(
            f"--kind {a.kind!r} is not a distortion; use motion, defocus, noise or combined"
        )
    n_param_layers(a.model)  # a clear error for an unknown model
    level = level_text(a.level)
    rec, runs = read_records(a)
    advice = advise(rec, runs, a.model, a.dataset, a.kind, level, a.tolerance)
    print(json.dumps(advice, indent=2) if a.json else render(advice))
    return advice


def read_records(a: argparse.Namespace) -> tuple[pd.DataFrame, dict]:
    """The long table of test errors (``report.records``) of the runs asked for, and the runs."""
    from robust_ft.report import fetch_runs, find_sweep, records
    from robust_ft.settings import experiment_name
    from robust_ft.tracking import check_reachable, client, default_tracking_uri

    uri = a.tracking_uri or default_tracking_uri()
    check_reachable(uri)
    c = client(uri)
    if a.sweep:
        runs = fetch_runs(c, parent=find_sweep(c, a.sweep))
    else:
        name = a.experiment or experiment_name(a.model, a.dataset)
        runs = fetch_runs(c, experiments=[name]) if c.get_experiment_by_name(name) else []
    runs = [
        r for r in runs
        if r.data.tags.get("model", a.model) == a.model
        and r.data.tags.get("dataset", a.dataset) == a.dataset
    ]  # fmt: skip
    rec = records(runs)
    return rec[rec.stat == "err"], {r.info.run_id: r for r in runs}


def expected_methods(model: str) -> list[str]:
    """The methods the paper compares for a model, cheapest first."""
    from robust_ft.models import n_param_layers

    firsts = [f"first-{n}" for n in range(1, n_param_layers(model) + 1)]
    return ["notrain", *firsts] + ([] if model == "alexnet" else ["retrain"])


def evidence(rec: pd.DataFrame, runs: dict, kind: str, level: str) -> list[dict]:
    """Per measured method: mean test error on (kind, level) over seeds, its clean error, the
    training time and epochs, and the run ids; cheapest method first."""
    from robust_ft.report import method_order

    on_target = rec[(rec.test_kind == kind) & (rec.test_level == level)]
    own = on_target[(on_target.method == "notrain")
                    | ((on_target.kind == kind) & (on_target.level == level))]  # fmt: skip
    rows = []
    for method, g in own.groupby("method"):
        ids = sorted(set(g.run_id))
        clean = rec[rec.run_id.isin(ids) & (rec.test_kind == "clean")].value
        infos = [runs[i] for i in ids]
        secs = [(r.info.end_time - r.info.start_time) / 1000 for r in infos if r.info.end_time]
        epochs = {r.data.params.get("trainer.max_epochs") for r in infos} - {None}
        rows.append({
            "method": method,
            "error": round(float(g.value.mean()), 3),
            "clean_error": round(float(clean.mean()), 3) if len(clean) else None,
            "train_seconds": round(sum(secs) / len(secs), 1) if secs else None,
            "epochs": 0 if method == "notrain" else (int(max(epochs)) if epochs else None),
            "seeds": len(set(g.seed)),
            "run_ids": ids,
        })  # fmt: skip
    return sorted(rows, key=lambda r: method_order(r["method"]))


def advise(rec, runs, model, dataset, kind, level, tolerance) -> dict:
    """The answer: the cheapest method within ``tolerance`` points of the best, with evidence."""
    rows = evidence(rec, runs, kind, level)
    measured = {r["method"] for r in rows}
    missing = [m for m in expected_methods(model) if m not in measured]
    out = {"model": model, "dataset": dataset, "kind": kind, "level": level,
           "tolerance": tolerance, "answer": None, "best": None, "rule": RULE.format(tol=tolerance),
           "evidence": rows, "missing": missing, "note": None,
           "commands": commands(model, dataset, kind, level, missing)}  # fmt: skip
    if level == "0":
        out["note"] = "level 0 is clean images: the clean model (no-train) is the answer"
        out["answer"] = "notrain"
        return out
    if not rows:
        out["note"] = between(rec, kind, level) or f"no run measured {kind} at level {level}"
        return out
    best = min(rows, key=lambda r: r["error"])
    chosen = next(r for r in rows if r["error"] <= best["error"] + tolerance)
    out["best"], out["answer"] = best["method"], chosen["method"]
    return out


def between(rec: pd.DataFrame, kind: str, level: str) -> str | None:
    """'level x lies between measured levels a and b' (no interpolation), when it does."""
    from robust_ft.report import level_value

    try:
        x = float(level)
    except ValueError:
        return None
    measured = sorted({level_value(v) for v in rec[rec.test_kind == kind].test_level} - {0.0})
    lower = [v for v in measured if v < x]
    upper = [v for v in measured if v > x]
    if not lower or not upper:
        return None
    return (f"{kind} level {level} lies between the measured levels {lower[-1]:g} and "
            f"{upper[0]:g}; robust-ft does not interpolate errors: measure level {level}")  # fmt: skip


def commands(model: str, dataset: str, kind: str, level: str, missing: list[str]) -> list[str]:
    """The command that measures the missing methods at (kind, level): one resumable sweep."""
    if not missing or level == "0":
        return []
    firsts = [m.split("-")[1] for m in missing if m.startswith("first-")]
    if len(firsts) == sum(m.startswith("first-") for m in expected_methods(model)):
        firsts = []  # all of them: the sweep's default
    cmd = f"robust-ft sweep --model {model} --dataset {dataset} --kinds {kind} --levels '{level}'"
    if firsts:
        cmd += f" --first-n {','.join(firsts)}"
    if "retrain" not in missing:
        cmd += " --no-retrain"
    return [cmd]


def render(advice: dict) -> str:
    """The advice as text: the answer, the evidence table, the rule, what to measure."""
    from robust_ft.formatting import fmt_error, fmt_time

    a = advice
    head = f"{a['model']} on {a['dataset']}, {a['kind']} level {a['level']}"
    lines = []
    if a["answer"] and a["evidence"]:
        ev = {r["method"]: r for r in a["evidence"]}
        chosen, best = ev[a["answer"]], ev[a["best"]]
        lines.append(f"advice for {head}: {a['answer']} ({chosen['error']:.2f}% error; best "
                     f"measured {best['error']:.2f}% by {a['best']}, tolerance "
                     f"{a['tolerance']:g} points)")  # fmt: skip
    else:
        lines.append(f"advice for {head}: " + (a["answer"] or "none yet"))
    if a["note"]:
        lines.append(a["note"])
    if a["evidence"]:
        lines += ["", "| method | error (%) | clean error (%) | train time | epochs | runs |",
                  "|---|---:|---:|---:|---:|---|"]  # fmt: skip
        for r in a["evidence"]:
            mark = " <- advice" if r["method"] == a["answer"] else ""
            secs = None if r["method"] == "notrain" else r["train_seconds"]
            lines.append(
                f"| {r['method']}{mark} | {fmt_error(r['error'])} | {fmt_error(r['clean_error'])}"
                f" | {fmt_time(secs) if secs is not None else '-'} | {r['epochs'] or '-'}"
                f" | {', '.join(i[:8] for i in r['run_ids'])} |"
            )
    lines += ["", "rule: " + a["rule"]]
    if a["missing"] and a["level"] != "0":
        lines += ["", f"not measured: {', '.join(a['missing'])}; measure with:"]
        lines += [f"  {c}" for c in a["commands"]]
    return "\n".join(lines)
