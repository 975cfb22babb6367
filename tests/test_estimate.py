"""`robust-ft estimate`: train, log and register the estimator; validate it; estimate images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import isolated_store
from mlflow.tracking import MlflowClient

from robust_ft import cli
from robust_ft.deploy import estimate
from robust_ft.deploy import estimator as E


def test_joint_classes_and_set_estimate_round_trip():
    kinds = torch.tensor([0, 1, 2, 3, 4])
    levels = torch.tensor([0.0, 3.0, 2.5, 0.5, 4.0])
    cls = E.joint_class(kinds, levels)
    assert cls[0] == 0 and len(set(cls.tolist())) == 5
    logp = torch.full((100, E.N_CLASSES), -20.0)
    logp[:, int(cls[2])] = 0.0  # every image: defocus 2.5 for sure
    s = E.set_estimate(logp)
    assert (s["kind"], s["level"], s["kind_share"]) == ("defocus", 2.5, 1.0)
    assert E.class_prior().sum().item() == pytest.approx(1.0)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An estimator trained on 2,000 images for one epoch (a smoke-sized one) in a SQLite store."""
    d = tmp_path_factory.mktemp("estimate")
    with isolated_store(d) as uri:
        estimate.main(["--train", "--epochs", "1", "--train-images", "2000"])
        yield uri


def test_estimator_is_logged_and_registered(store):
    import mlflow

    c = MlflowClient(store)
    v = c.get_model_version_by_alias("distortion-estimator", "fashion_mnist")
    run = c.get_run(v.run_id)
    assert run.info.status == "FINISHED" and run.data.params["train_images"] == "2000"
    net = mlflow.pytorch.load_model("models:/distortion-estimator@fashion_mnist")
    out = net(torch.zeros(3, 1, 28, 28, dtype=torch.uint8))
    assert out.shape == (3, E.N_CLASSES)


def test_validate_prints_the_table_and_logs_it(store, capsys):
    capsys.readouterr()
    rows = estimate.main(["--validate", "--images", "200"])
    out = capsys.readouterr().out
    assert len(rows) == 17 and rows[0]["kind"] == "clean" and rows[0]["sets"] == 2
    assert "| kind | level | kind accuracy (%) |" in out and "| combined | 4 |" in out
    assert "set level error, blur: worst set" in out
    run_id = (
        MlflowClient(store)
        .get_model_version_by_alias("distortion-estimator", "fashion_mnist")
        .run_id
    )
    assert (
        "validation/set_level_error/defocus/L2" in MlflowClient(store).get_run(run_id).data.metrics
    )
    off_grid = estimate.main(["--validate", "--images", "100", "--levels", "1.6"])
    assert [(r["kind"], r["level"]) for r in off_grid][1:] == [
        (k, 1.6) for k in ("motion", "defocus", "noise", "combined")
    ]


def test_estimate_a_dataset_and_a_folder(store, capsys, tmp_path):
    from PIL import Image

    capsys.readouterr()
    out = estimate.main(
        ["--data", "fashion_mnist", "--limit", "200", "--distort", "noise:3", "--json"]
    )
    assert out["set"]["images"] == 200 and out["set"]["kind"] in E.KINDS
    assert json.loads(capsys.readouterr().out)["distorted"] == "noise:3"
    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((32, 32), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    out = estimate.main(["--data", str(tmp_path / "imgs")])
    assert out["set"]["images"] == 3
    assert "(3 images): " in capsys.readouterr().out


def test_bad_input_is_a_clear_error(workdir, capsys):
    with pytest.raises(SystemExit):
        cli.main(["estimate", "--data", "fashion_mnist", "--limit", "5"])
    assert "train one first with `robust-ft estimate --train`" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["estimate", "--data", "no/such/dir"])
    assert "neither a dataset name" in capsys.readouterr().err
