"""The report from tracked runs: curves, Table 1 analog, relative corruption error, findings."""

from __future__ import annotations

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


def _log(client, exp_id, parent, tags, metrics, name):
    run = client.create_run(exp_id, run_name=name, tags={"mlflow.parentRunId": parent, **tags})
    for k, v in metrics.items():
        client.log_metric(run.info.run_id, k, v)
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


def test_curves_broadcast_level_zero_and_average(fake_sweep):
    client, parent = fake_sweep
    agg = report.aggregate(report.curve_points(report.records(report.fetch_runs(client, parent))))
    err = agg[agg.stat == "err"].set_index(["method", "kind", "level"])["mean"]
    assert len(err) == len(METHODS) * len(KINDS) * 3  # levels 0, 1, 2
    for kind in KINDS:  # level 0: the pre-train for notrain/retrain, first-N's clean runs
        assert err[("notrain", kind, "0")] == err[("retrain", kind, "0")] == 10.0
        assert err[("first-3", kind, "0")] == 9.9
    assert err[("retrain", "defocus", "2")] == _err("retrain", "defocus", 2)
    assert list(agg.method.drop_duplicates()) == ["notrain", "first-3", "first-4", "retrain"]


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
    found = report.findings(agg).set_index("claim")
    assert found.loc["first-3 close to first-4", "holds"]
    assert found.loc["retrain best at the highest level (2)", "holds"]
    assert pd.isna(found.loc["defocus and combined hurt most (no-train)", "holds"])  # 2 kinds
    assert found.loc["fine-tune keeps gradient variance near clean", "holds"]


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
    assert len(pd.read_csv(out / "errors.csv")) == len(METHODS) * len(KINDS) * 3
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
