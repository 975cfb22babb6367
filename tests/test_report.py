"""The report from tracked runs: curves, Table 1 analog, relative corruption error, findings."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from robust_ft import report

KINDS = ("defocus", "noise")
METHODS = ("notrain", "first-3", "first-4", "retrain")


def _err(method: str, kind: str, level: int) -> float:
    """Made-up errors shaped like the paper's: worse with level, retrain best at level 2."""
    base = {"notrain": 10.0, "first-3": 5.0, "first-4": 4.8, "retrain": 3.0}[method]
    return 10.0 + (base if level else 0.0) * level * (2 if kind == "defocus" else 1)


BUDGETS = {  # what each method's runs trained with (params, as the runner logs them)
    "pretrain": {"trainer.max_epochs": "20", "model.lr": "0.001"},
    "retrain": {"trainer.max_epochs": "20", "model.lr": "0.001"},
    "first-3": {"model.finetune.max_epochs": "15", "model.finetune.lr": "1e-05",
                "data.init_args.train_subset": "600"},
    "first-4": {"model.finetune.max_epochs": "15", "model.finetune.lr": "1e-05",
                "data.init_args.train_subset": "600"},
}  # fmt: skip


def _log(client, exp_id, parent, tags, metrics, name):
    run = client.create_run(exp_id, run_name=name, tags={"mlflow.parentRunId": parent, **tags})
    for k, v in metrics.items():
        client.log_metric(run.info.run_id, k, v, step=0)
    for k, v in BUDGETS.get(tags.get("method"), {}).items():
        client.log_param(run.info.run_id, k, v)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


@pytest.fixture
def fake_sweep(workdir):
    """A sweep's runs logged straight to MLflow: pretrain, notrain/first-3/first-4/retrain x 2 kinds x L1-2."""
    client = MlflowClient()
    exp = client.create_experiment("lenet5-fake")
    parent = client.create_run(
        exp, run_name="fake", tags={"sweep": "fake", "sweep_role": "parent", "method": "sweep"}
    ).info.run_id
    client.log_param(parent, "sweep.budget", "demo")
    common = {"model": "lenet5", "dataset": "fake", "seed": "0"}
    clean = {"test/err/clean/L0": 10.0, "gradvar/conv2/clean/L0": 1.0}
    _log(client, exp, parent, {**common, "method": "pretrain", "distortion": "clean", "level": "0"},
         clean, "pretrain")  # fmt: skip
    for method in ("first-3", "first-4"):
        _log(client, exp, parent, {**common, "method": method, "distortion": "clean", "level": "0"},
             {"test/err/clean/L0": 9.9, "gradvar/conv2/clean/L0": 1.0}, f"{method}-clean")  # fmt: skip
    for kind in KINDS:
        for level in (1, 2):
            for method in METHODS:
                tag = f"{kind}/L{level}"
                gv = {"notrain": 0.5, "retrain": 1.5}.get(method, 0.95)
                metrics = {f"test/err/{tag}": _err(method, kind, level), f"gradvar/conv2/{tag}": gv,
                           "test/err/clean/L0": 10.0 if method == "notrain" else 11.0}  # fmt: skip
                _log(client, exp, parent,
                     {**common, "method": method, "distortion": kind, "level": str(level)},
                     metrics, f"{method}-{kind}-{level}")  # fmt: skip
    client.set_terminated(parent, "FINISHED")
    return client, parent


def test_curves_take_each_point_from_the_run_that_measured_it(fake_sweep):
    client, parent = fake_sweep
    agg = report.aggregate(report.curve_points(report.records(report.fetch_runs(client, parent))))
    err = agg[agg.stat == "err"].set_index(["method", "kind", "level"])["mean"]
    # levels 0, 1, 2 per method and kind; re-train has no level 0 (no re-train on clean was run)
    assert len(err) == len(METHODS) * len(KINDS) * 3 - len(KINDS)
    for kind in KINDS:  # level 0: no-train's own clean test, first-N's clean runs
        assert err[("notrain", kind, "0")] == 10.0
        assert err[("first-3", kind, "0")] == 9.9
        assert ("retrain", kind, "0") not in err.index  # not the pre-train's number
    assert err[("retrain", "defocus", "2")] == _err("retrain", "defocus", 2)
    assert list(agg.method.drop_duplicates()) == ["notrain", "first-3", "first-4", "retrain"]


def test_the_pretrain_stands_in_for_notrain_on_clean_only_when_no_notrain_run_tested_it(workdir):
    client = MlflowClient()
    exp = client.create_experiment("lenet5-old")
    parent = client.create_run(exp, tags={"method": "sweep"}).info.run_id
    common = {"model": "lenet5", "dataset": "old", "seed": "0"}
    _log(client, exp, parent, {**common, "method": "pretrain", "distortion": "clean",
         "level": "L0"}, {"test/err/clean/L0": 7.0}, "pretrain")  # fmt: skip
    _log(client, exp, parent, {**common, "method": "notrain", "distortion": "noise",
         "level": "L2"}, {"test/err/noise/L2": 20.0}, "notrain")  # fmt: skip
    agg = report.aggregate(report.curve_points(report.records(report.fetch_runs(client, parent))))
    err = agg[agg.stat == "err"].set_index(["method", "kind", "level"])["mean"]
    assert err[("notrain", "noise", "0")] == 7.0 and err[("notrain", "noise", "2")] == 20.0


def test_table1_pairs_original_and_trained(fake_sweep):
    client, parent = fake_sweep
    t1 = report.table1(report.records(report.fetch_runs(client, parent)))
    assert len(t1) == 3 * len(KINDS) * 2  # trained methods x kinds x levels, top-1 only
    row = t1[(t1.method == "first-3") & (t1.kind == "noise") & (t1.level == "2")].iloc[0]
    assert (row.orig_clean, row.orig_distorted) == (10.0, _err("notrain", "noise", 2))
    assert (row.tuned_clean, row.tuned_distorted) == (11.0, _err("first-3", "noise", 2))


def test_relative_ce_and_findings(fake_sweep):
    client, parent = fake_sweep
    agg = report.aggregate(report.curve_points(report.records(report.fetch_runs(client, parent))))
    ce = report.relative_ce(agg).set_index("method")
    assert ce.loc["notrain", "mce"] == pytest.approx(100.0)
    assert ce.loc["retrain", "mce"] < ce.loc["first-4", "mce"] < ce.loc["first-3", "mce"] < 100
    found = report.findings(agg).set_index("claim")["holds"]
    assert found["fine-tuning and re-training lower the error"] == "yes"
    assert found["first-3 close to first-4"] == "yes"
    assert found["at the highest level re-training beats fine-tuning"] == "yes"
    assert found["at the lowest level fine-tuning is within 1 point of re-training"] == "no"
    assert found["defocus and combined hurt most (no-train)"] == "not run"  # 2 kinds only
    assert found["gradient variance: no-train below clean, fine-tune near clean, re-train above"] == "yes"  # fmt: skip


def test_findings_are_judged_only_on_cells_that_exist(fake_sweep):
    """No re-train at level 2: the high-level claim is judged at level 1, the highest level
    re-train was run at; without any re-train it says "not run"."""
    client, parent = fake_sweep
    agg = report.aggregate(report.curve_points(report.records(report.fetch_runs(client, parent))))
    some = agg[~((agg.method == "retrain") & (agg.level == "2"))]
    row = (
        report.findings(some)
        .set_index("claim")
        .loc["at the highest level re-training beats fine-tuning"]
    )
    assert row.detail.startswith("level 1:")
    none = report.findings(agg[agg.method != "retrain"]).set_index("claim")["holds"]
    assert none["at the highest level re-training beats fine-tuning"] == "not run"
    assert none["at the lowest level fine-tuning is within 1 point of re-training"] == "not run"
    assert (report.findings(agg).paper.str.len() > 20).all()  # each claim quotes the paper


def test_report_files_html_and_logged_artifact(fake_sweep, workdir):
    client, parent = fake_sweep
    out = report.main(["--sweep", "fake", "--out", str(workdir / "rep")]).parent
    html = (out / "index.html").read_text()
    figs = sorted(p.name for p in out.glob("*.png"))
    assert figs == ["error_lenet5_fake.png", "gradvar_lenet5_fake_conv2.png"]
    assert all(f"src='{f}'" in html for f in figs)
    assert "42.9" in html and "47.7" in html  # the paper's Table 1 beside ours
    for name in ("errors.csv", "gradvar.csv", "table1.csv", "mce.csv", "findings.csv"):
        assert (out / name).exists() and name in html
    assert len(pd.read_csv(out / "errors.csv")) == len(METHODS) * len(KINDS) * 3 - len(KINDS)
    # every figure readable at full width; each method's real budget in the header
    from PIL import Image

    for f in figs:
        assert Image.open(out / f).size[0] >= 1600, f
    budgets = dict(
        re.findall(r"<td>([\w-]+)</td>\s*<td>([^<]*(?:epochs|training)[^<]*)</td>", html)
    )
    assert budgets["first-3"].startswith("15 epochs, lr 1e-05 (constant); 600 training images")
    assert budgets["retrain"].startswith("20 epochs, lr 0.001 (constant); all training images")
    assert budgets["notrain"].startswith("no training")
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/index.html", "report/error_lenet5_fake.png"} <= logged


def test_report_by_experiment_without_logging(fake_sweep, workdir):
    client, parent = fake_sweep
    report.main(["--experiment", "lenet5-fake", "--out", str(workdir / "r2"), "--no-log"])
    assert (workdir / "r2" / "index.html").exists()
    assert client.list_artifacts(parent) == []


def test_report_defaults_to_the_newest_sweep(fake_sweep, workdir):
    client, parent = fake_sweep
    report.main(["--out", str(workdir / "r3")])
    assert "report/index.html" in {a.path for a in client.list_artifacts(parent, "report")}


def test_table1_protocol_with_top5_beside_the_paper(workdir):
    client = MlflowClient()
    exp = client.create_experiment("alexnet-fake")
    parent = client.create_run(exp, tags={"method": "sweep"}).info.run_id
    common = {"model": "alexnet", "dataset": "imagefolder", "seed": "0", "distortion": "combined",
              "level": "U(0,4)"}  # fmt: skip
    for method, errs in {"notrain": (40, 18, 50, 27), "first-3": (41, 19, 45, 22)}.items():
        metrics = dict(zip(["test/err/clean/L0", "test/err5/clean/L0", "test/err/combined/LU0-4",
                            "test/err5/combined/LU0-4"], errs, strict=True))  # fmt: skip
        _log(client, exp, parent, {**common, "method": method}, metrics, method)
    out = report.build_report(parent, out=workdir / "rep")
    t1 = pd.read_csv(workdir / "rep" / "table1.csv").set_index("metric")
    assert list(t1.loc["top-1", report.COLUMNS]) == [40, 50, 41, 45]
    assert list(t1.loc["top-5", report.COLUMNS]) == [18, 27, 19, 22]
    assert "U(0,4)" in out.read_text()
    assert not list((workdir / "rep").glob("error_*.png"))  # no numeric levels to plot


def test_no_runs_is_a_clear_error(workdir):
    with pytest.raises(ValueError, match="no FINISHED runs"):
        report.build_report(out=workdir / "rep")
