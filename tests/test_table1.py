"""Table 1 end to end: the ``imagenet`` preset (AlexNet, first-3 on combined U(0,4)) through the
streaming path on a small generated ImageFolder, with random weights (none offline)."""

from __future__ import annotations

import csv

from mlflow.tracking import MlflowClient

from robust_ft import sweep
from robust_ft.data.make_folder import make_folder


def test_imagenet_preset_streams_and_reports_top1_top5(workdir):
    root = make_folder(workdir / "data" / "imagenet", classes=3, train_per_class=6,
                       val_per_class=3, size=64, mode="RGB", fmt="jpg")  # fmt: skip
    sweep.main(["--preset", "imagenet", "--root", str(root), "--budget", "demo",
                "--report", str(workdir / "report"), "--extra",
                "--model.pretrained", "false", "--data.init_args.stream", "true",
                "--data.init_args.num_classes", "12",  # > 10: top-5 is reported
                "--data.init_args.batch_size", "6", "--data.init_args.val_split", "0.2",
                "--model.finetune.max_epochs", "1"])  # fmt: skip
    client = MlflowClient()
    exp = client.get_experiment_by_name("alexnet-imagenet")
    runs = [
        r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags
    ]
    assert {r.data.tags["method"] for r in runs} == {"notrain", "first-3"}
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.tags["weights"] == "random"
        for key in ("err", "err5"):
            assert f"test/{key}/clean/L0" in r.data.metrics
            assert f"test/{key}/combined/LU0-4" in r.data.metrics
        inputs = {d.dataset.name for d in r.inputs.dataset_inputs}
        assert "imagenet/test/combined/LU0-4" in inputs
    rows = list(csv.DictReader((workdir / "report" / "table1.csv").open()))
    assert rows and any("top-5" in " ".join(row.values()) for row in rows), rows


def test_compose_runs_table1_with_the_dataset_read_only():
    import yaml
    from conftest import REPO

    svc = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())["services"]
    t = svc["trainer-imagenet"]
    assert "imagenet" in t["profiles"] and t["deploy"]["resources"]["reservations"]["devices"]
    assert any(v.endswith(":/datasets/imagenet:ro") for v in t["volumes"])
    assert (
        "fit --config conf/alexnet_imagenet.yaml --data.init_args.root /datasets/imagenet"
        in (t["command"])
    )
