"""The demo pipeline end to end on synthetic data: nested runs, one per step, and the tables."""

from __future__ import annotations

import pytest
from conftest import synthetic_args
from mlflow.tracking import MlflowClient

from robust_ft.pipeline import demo_main


@pytest.mark.slow
def test_demo_pipeline_nested_runs_and_tables(workdir, capsys):
    extra = [*synthetic_args(n_train=128, n_test=64), "--tracking.log_model", "false"]
    out = demo_main(
        ["--dataset", "mnist", "--levels", "0,2", "--first-n", "1,3", "--finetune-subset", "64",
         "--extra", *extra]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert set(out) == {"pretrain", "notrain", "first-1", "first-3", "retrain"}
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("lenet5-mnist").experiment_id])
    parents = [r for r in runs if r.data.tags.get("pipeline") == "demo"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.tags["method"] for r in children) == sorted(
        ["pretrain", "notrain", "first-1", "first-3", "retrain"]
    )
    assert all(r.info.status == "FINISHED" for r in children)
    notrain = next(r for r in children if r.data.tags["method"] == "notrain")
    assert {
        f"test/err/{k}/L{lv}" for k in ("motion", "defocus", "noise", "combined") for lv in (0, 2)
    } <= set(notrain.data.metrics)
    assert "| first-3 |" in printed and "| defocus |" in printed
    assert "mlflow ui --backend-store-uri" in printed
