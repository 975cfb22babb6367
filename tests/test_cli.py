"""The CLI end to end on tiny synthetic data with a real SQLite MLflow store."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONF, REPO, copy_checkout, run_cli, synthetic_args
from mlflow.tracking import MlflowClient

from robust_ft.checkpoints import read_state_dict

SHAPES = {"lenet5": (1, 28, 28), "cifar10_quick": (3, 32, 32), "alexnet": (3, 224, 224)}
MODEL_CONFIGS = sorted(
    p
    for p in CONF.glob("*_*.yaml")
    if p.stem.split("_")[0] in SHAPES or p.stem.startswith("cifar10_quick")
)


def _arch(path: Path) -> str:
    return next(a for a in SHAPES if path.stem.startswith(a))


def test_every_model_config_is_covered():
    assert {_arch(p) for p in MODEL_CONFIGS} == set(SHAPES)


@pytest.mark.parametrize("config", MODEL_CONFIGS, ids=lambda p: p.stem)
def test_fast_dev_run_every_model_config(workdir, config):
    arch = _arch(config)
    small = arch == "alexnet"
    args = [
        "fit",
        "--config",
        str(config),
        *synthetic_args(
            SHAPES[arch], 8 if small else 64, 4 if small else 32, batch=2 if small else 16
        ),
    ]
    args += [
        "--trainer.fast_dev_run",
        "true",
        "--data.init_args.test_kinds",
        "null",
        "--data.init_args.test_levels",
        "null",
    ]
    if arch == "alexnet":
        args += ["--model.pretrained", "false", "--model.first_n", "3"]
    res = run_cli(args)
    assert res.run_id is not None
    assert any(k.startswith("test/err/") for k in res.metrics), res.metrics


@pytest.fixture
def pretrained_ckpt(workdir):
    """A 1-epoch clean pre-train of LeNet-5 on synthetic data, tracked."""
    res = run_cli(
        ["fit", "--config", str(CONF / "lenet5_mnist.yaml"), *synthetic_args(), "--trainer.max_epochs", "1",
         "--model.lr", "0.05", "--tracking.log_model", "false"]
    )  # fmt: skip
    return res


@pytest.mark.parametrize("overlay", ["finetune.yaml", "retrain.yaml", "demo.yaml"])
def test_fast_dev_run_every_overlay(workdir, pretrained_ckpt, overlay):
    args = [
        "fit",
        "--config",
        str(CONF / "lenet5_mnist.yaml"),
        "--config",
        str(CONF / overlay),
        *synthetic_args(),
    ]
    args += [
        "--trainer.fast_dev_run",
        "true",
        "--data.init_args.distortion.kind",
        "defocus",
        "--data.init_args.distortion.level",
        "1",
    ]
    res = run_cli(args)
    run = MlflowClient().get_run(res.run_id)
    expected = {"finetune.yaml": "first-3", "retrain.yaml": "retrain", "demo.yaml": "retrain"}[
        overlay
    ]
    assert run.data.tags["method"] == expected
    if overlay == "finetune.yaml":  # init_from: latest found the pre-train
        assert run.data.tags["init_from_run"] == pretrained_ckpt.run_id


def test_tracked_run_params_metrics_artifacts(workdir, pretrained_ckpt):
    client = MlflowClient()
    run = client.get_run(pretrained_ckpt.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["method"] == "pretrain"
    assert run.data.tags["distortion"] == "clean"
    assert float(run.data.params["model.lr"]) == pytest.approx(0.05)
    assert run.data.params["model.arch"] == "lenet5"
    assert "env.torch" in run.data.params
    for key in ("train/loss", "val/err", "test/err/clean/L0"):
        assert key in run.data.metrics, key
    assert 0.0 <= run.data.metrics["test/err/clean/L0"] <= 100.0
    # synthetic classes are easy: one epoch must beat chance (90% error) by far
    assert run.data.metrics["test/err/clean/L0"] < 50.0
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "lenet5-synthetic"
    names = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert {"checkpoints/best.ckpt", "checkpoints/last.ckpt"} <= names
    assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
    local = client.download_artifacts(run.info.run_id, "checkpoints/best.ckpt", str(workdir))
    state = read_state_dict(local)
    assert state["conv1.weight"].shape == torch.Size([20, 1, 5, 5])


def test_finetune_freezes_and_tests_distorted(workdir, pretrained_ckpt):
    res = run_cli(
        ["fit", "--config", str(CONF / "lenet5_mnist.yaml"), "--config", str(CONF / "finetune.yaml"), *synthetic_args(),
         "--model.first_n", "2", "--model.init_from", pretrained_ckpt.run_id, "--model.finetune.max_epochs", "1",
         "--data.init_args.distortion.kind", "motion", "--data.init_args.distortion.level", "2",
         "--data.init_args.test_kinds", "[clean,motion]", "--data.init_args.test_levels", "[2]",
         "--tracking.log_model", "false"]
    )  # fmt: skip
    client = MlflowClient()
    run = client.get_run(res.run_id)
    assert run.data.tags["method"] == "first-2"
    assert {"test/err/clean/L0", "test/err/motion/L2"} <= set(run.data.metrics)
    assert any(k.startswith("gradvar/") for k in run.data.metrics)
    arts = {a.path for a in client.list_artifacts(res.run_id, "confusion")}
    assert arts == {"confusion/matrices.csv", "confusion/clean_L0.png", "confusion/motion_L2.png"}
    table = Path(client.download_artifacts(res.run_id, "confusion/matrices.csv"))
    rows = list(csv.DictReader(table.read_text().splitlines()))
    for tag in ("clean/L0", "motion/L2"):  # the matrix is the test set: its error is the metric
        cells = [(int(r["true"]), int(r["predicted"]), int(r["count"])) for r in rows
                 if r["test_set"] == tag]  # fmt: skip
        total, right = sum(c for *_, c in cells), sum(c for t, p, c in cells if t == p)
        assert total == 128
        assert 100 * (1 - right / total) == pytest.approx(run.data.metrics[f"test/err/{tag}"])
    before = read_state_dict(
        client.download_artifacts(
            pretrained_ckpt.run_id, "checkpoints/best.ckpt", str(workdir / "a")
        )
    )
    after = read_state_dict(
        client.download_artifacts(res.run_id, "checkpoints/last.ckpt", str(workdir / "b"))
    )
    assert torch.equal(before["fc2.weight"], after["fc2.weight"])  # frozen (layer 4)
    assert torch.equal(before["fc1.weight"], after["fc1.weight"])  # frozen (layer 3)
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])  # trained


def _cli(args, cwd, **env):
    e = {**os.environ, **env}
    e.pop("MLFLOW_RUN_ID", None)
    return subprocess.run(
        [sys.executable, "-m", "robust_ft", *args],
        cwd=cwd,
        env=e,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_bad_config_key_is_a_clear_error(workdir):
    r = _cli(
        ["fit", "--config", str(CONF / "lenet5_mnist.yaml"), "--model.no_such_key", "1"], workdir
    )
    assert r.returncode != 0
    assert "no_such_key" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_dataset_is_a_clear_error(workdir):
    r = _cli(
        [
            "fit",
            "--config",
            str(CONF / "lenet5_mnist.yaml"),
            "--data.init_args.root",
            str(workdir / "nowhere"),
        ],
        workdir,
    )
    assert r.returncode == 2
    assert "MNIST train split not found" in r.stderr
    assert "Traceback" not in r.stderr


def test_help_lists_commands():
    r = subprocess.run(
        [sys.executable, "-m", "robust_ft", "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0
    for cmd in ("fit", "test", "demo", "show-distortions"):
        assert cmd in r.stdout


def _help_probe(check: str = "") -> str:
    """Python source: ``robust-ft fit --help``, then ``check``."""
    return "import sys; from robust_ft.cli import main; main(['fit', '--help']); " + check


def test_fit_help_is_rendered_once_then_read_without_lightning(tmp_path):
    """``fit --help`` renders LightningCLI's help once per versions and sources, at 80 columns
    whatever the terminal, then answers from the cache without importing Lightning."""
    env = {**os.environ, "ROBUST_FT_CACHE_DIR": str(tmp_path / "user"), "COLUMNS": "100",
           "ROBUST_FT_HELP_DIR": str(tmp_path / "install")}  # fmt: skip
    # the install-time place is empty, as after a plain pip install
    first = subprocess.run([sys.executable, "-c", _help_probe()], env=env,
                           capture_output=True, text=True)  # fmt: skip
    assert first.returncode == 0 and "--model.first_n" in first.stdout, first.stderr[-2000:]
    assert len(list((tmp_path / "user" / "help").glob("fit-*.txt"))) == 1
    assert max(map(len, first.stdout.splitlines()[:3])) <= 80
    no_import = "assert 'lightning' not in sys.modules and 'torch' not in sys.modules, 'imported'"
    for columns in ("100", "60"):  # one text for every width: no second render
        again = subprocess.run([sys.executable, "-c", _help_probe(no_import)],
                               env={**env, "COLUMNS": columns}, capture_output=True, text=True)  # fmt: skip
        assert again.returncode == 0, again.stderr[-2000:]
        assert again.stdout == first.stdout
    assert len(list((tmp_path / "user" / "help").glob("fit-*.txt"))) == 1


def test_help_cached_at_install_time_answers_the_first_help(tmp_path):
    """``python -m robust_ft.helpcache`` (run by ``make setup`` and the Docker build) fills the
    environment's place, so the first ``--help`` on a fresh user cache imports no Lightning."""
    install = tmp_path / "install"
    env = {**os.environ, "ROBUST_FT_HELP_DIR": str(install)}
    r = subprocess.run([sys.executable, "-m", "robust_ft.helpcache"], env=env, capture_output=True,
                       text=True)  # fmt: skip
    assert r.returncode == 0 and "help texts for fit, validate, test cached" in r.stdout, r.stderr
    assert sorted(p.name.split("-")[0] for p in install.glob("*.txt")) == [
        "fit",
        "test",
        "validate",
    ]
    env["ROBUST_FT_CACHE_DIR"] = str(tmp_path / "user")
    no_import = "assert 'lightning' not in sys.modules, 'imported'"
    first = subprocess.run([sys.executable, "-c", _help_probe(no_import)], env=env,
                           capture_output=True, text=True)  # fmt: skip
    assert first.returncode == 0 and "--model.first_n" in first.stdout, first.stderr[-2000:]
    assert not (tmp_path / "user" / "help").exists()  # nothing rendered, nothing written


@pytest.mark.slow  # renders three helps and builds a wheel: ~40 s
def test_a_wheel_from_make_wheel_answers_the_first_help_from_its_own_texts(tmp_path):
    """``make wheel`` ships the rendered helps inside the package: a plain install of it, with
    the versions of ``dist/constraints.txt`` and no install-time step, answers the first
    ``fit --help`` without importing Lightning. A changed source file is a changed key, so a
    stale text is never shown: that install renders instead."""
    import zipfile

    src = copy_checkout(tmp_path / "src")  # a copy: the build writes into the package, dist/
    venv = Path(sys.executable).parent.parent
    r = subprocess.run(["make", "-o", f"{venv}/bin/.installed", "wheel", f"VENV={venv}"], cwd=src,
                       env={**os.environ, "PYTHONPATH": str(src)}, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert not (src / "robust_ft" / "help_texts").exists()  # the source tree is left as it was
    (wheel,) = (src / "dist").glob("robust_ft-*.whl")
    texts = [n for n in zipfile.ZipFile(wheel).namelist() if "/help_texts/" in n]
    assert sorted(Path(n).name.split("-")[0] for n in texts) == ["fit", "test", "validate"]
    shipped = {Path(n).name for n in zipfile.ZipFile(wheel).namelist() if "/conf/" in n}
    assert shipped == {p.name for p in CONF.glob("*.yaml")}  # the configs are package data
    from importlib.metadata import version

    pins = (src / "dist" / "constraints.txt").read_text().split()
    assert f"lightning=={version('lightning')}" in pins and f"torch=={version('torch')}" in pins

    site = tmp_path / "site"  # a plain pip install of the wheel (the dependencies are this venv's)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(wheel)], check=True)  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(site), "ROBUST_FT_CACHE_DIR": str(tmp_path / "user"),
           "ROBUST_FT_HELP_DIR": str(tmp_path / "install")}  # fmt: skip
    probe = _help_probe("assert robust_ft.__file__.startswith(sys.argv[1]), robust_ft.__file__; "
                        "print('lightning' in sys.modules)")  # fmt: skip
    probe = "import robust_ft; " + probe
    first = subprocess.run([sys.executable, "-c", probe, str(site)], env=env, cwd=tmp_path,
                           capture_output=True, text=True)  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    assert "--model.first_n" in first.stdout and first.stdout.endswith("False\n")
    assert not (tmp_path / "user" / "help").exists()  # nothing rendered, nothing written
    where = "from robust_ft.pipeline import base_config; print(base_config('lenet5', 'mnist'))"
    conf = subprocess.run([sys.executable, "-c", where], env=env, cwd=tmp_path,
                          capture_output=True, text=True)  # fmt: skip  # no conf/ in the cwd
    assert conf.stdout.strip() == str(site / "robust_ft" / "conf" / "lenet5_mnist.yaml"), conf

    with open(site / "robust_ft" / "cli.py", "a") as f:  # a patched install: its key changes
        f.write("# patched\n")
    patched = subprocess.run([sys.executable, "-c", probe, str(site)], env=env, cwd=tmp_path,
                             capture_output=True, text=True)  # fmt: skip
    assert patched.returncode == 0, patched.stderr[-2000:]
    assert patched.stdout.endswith("True\n")  # rendered, not read from the shipped text
    assert patched.stdout == first.stdout.replace("False\n", "True\n")


@pytest.mark.slow
def test_mlflow_run_chain_with_an_experiment_name(workdir):
    """pretrain -> finetune (init_from=latest) -> evaluate under ``--experiment-name``: each one
    run with the project's name and tags, ``latest`` found in that experiment."""
    extra = " ".join([*synthetic_args(n_train=200, n_test=64), "--trainer.max_epochs", "1",
                      "--tracking.log_model", "false"])  # fmt: skip
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_RUN_ID", None)
    mlflow = str(Path(sys.executable).parent / "mlflow")
    steps = {
        "pretrain": [],
        "finetune": ["-P", "kind=defocus", "-P", "level=2", "-P", "first_n=2"],
        "evaluate": ["-P", "kinds=defocus", "-P", "levels=0,2"],
    }
    for entry, params in steps.items():
        r = subprocess.run(
            [mlflow, "run", str(REPO), "-e", entry, "--env-manager", "local", "--experiment-name",
             "chain", *params, "-P", f"extra={extra}"],
            cwd=workdir, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert r.returncode == 0, (entry, r.stderr[-3000:])
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("chain").experiment_id])
    by = {r.data.tags["method"]: r for r in runs}
    assert sorted(by) == ["first-2", "notrain", "pretrain"] and len(runs) == 3
    assert all(r.info.status == "FINISHED" for r in runs)
    assert by["first-2"].info.run_name == "first-2-defocus-L2"
    assert by["pretrain"].info.run_name == "pretrain-clean-L0"
    pre = by["pretrain"].info.run_id
    assert by["first-2"].data.tags["init_from_run"] == pre
    assert by["notrain"].data.tags["init_from_run"] == pre
    assert {"test/err/clean/L0", "test/err/defocus/L2"} <= set(by["notrain"].data.metrics)


@pytest.mark.slow
def test_mlflow_run_evaluate_entry_point(workdir, pretrained_ckpt):
    ckpt = MlflowClient().download_artifacts(
        pretrained_ckpt.run_id, "checkpoints/best.ckpt", str(workdir)
    )
    extra = (
        " ".join(synthetic_args())
        + f" --data.init_args.root {workdir}/data --tracking.log_model false"
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_RUN_ID", None)
    r = subprocess.run(
        [str(Path(sys.executable).parent / "mlflow"), "run", str(REPO), "-e", "evaluate", "--env-manager", "local",
         "--experiment-name", "eval-test", "-P", "model=lenet5", "-P", "dataset=mnist", "-P", f"init_from={ckpt}",
         "-P", "kinds=clean,noise", "-P", "levels=0,2", "-P", f"extra={extra}"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    client = MlflowClient()
    exp = client.get_experiment_by_name("eval-test")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1  # one run, not two
    assert runs[0].info.status == "FINISHED"
    m = runs[0].data.metrics
    assert {"test/err/clean/L0", "test/err/noise/L2"} <= set(m)
    assert runs[0].data.tags["method"] == "notrain"
    # noise/L0 is the clean set: tested once, logged under both tags
    for key in ("test/err/{}/L0", "gradvar/conv2/{}/L0"):
        assert m[key.format("noise")] == m[key.format("clean")]
    # the console shows one kind x level grid of the logged numbers, not Lightning's wide table
    out = r.stdout + r.stderr
    assert "Test error (%), lenet5 on synthetic:" in out
    assert f"| clean | {m['test/err/clean/L0']:.2f} |  |" in out
    assert f"| noise | {m['test/err/noise/L0']:.2f} | {m['test/err/noise/L2']:.2f} |" in out
    assert f"MLflow run {runs[0].info.run_id}" in out
    assert "┃" not in out


def test_test_table_grid():
    from robust_ft.formatting import test_table

    metrics = {"test/err/motion/L10": 9.0, "test/err/motion/L2": 3.0, "val/err": 1.0,
               "test/err/clean/L0": 1.0, "test/err5/clean/L0": 0.5, "gradvar/conv2/clean/L0": 7.0,
               "test/err/defocus/L2.5": 4.0}  # fmt: skip
    assert test_table(metrics).splitlines() == [
        "| test set | L0 | L2 | L2.5 | L10 |",
        "|---|---:|---:|---:|---:|",
        "| clean | 1.00 (0.50) |  |  |  |",
        "| motion |  | 3.00 |  | 9.00 |",
        "| defocus |  |  | 4.00 |  |",
    ]
    assert test_table({"val/err": 1.0}) == ""


def test_finetune_uses_the_main_schedule_flags_the_user_typed(workdir, pretrained_ckpt):
    """--trainer.max_epochs / --model.lr typed for a fine-tune are what it trains (and logs)."""
    base = ["fit", "--config", str(CONF / "lenet5_mnist.yaml"), "--config", str(CONF / "finetune.yaml"),
            *synthetic_args(), "--model.first_n", "2", "--tracking.log_model", "false",
            "--data.init_args.distortion.kind", "motion", "--data.init_args.distortion.level", "1"]  # fmt: skip
    res = run_cli([*base, "--trainer.max_epochs", "2", "--model.lr", "0.02"])
    client = MlflowClient()
    run = client.get_run(res.run_id)
    params = run.data.params
    assert params["trainer.max_epochs"] == "2" and params["model.finetune.max_epochs"] == "2"
    assert float(params["model.finetune.lr"]) == 0.02 and run.data.tags["method"] == "first-2"
    assert len(client.get_metric_history(res.run_id, "val/err")) == 2  # trained 2 epochs, not 15
    with pytest.raises(ValueError, match="give only --model.finetune.max_epochs"):
        run_cli([*base, "--trainer.max_epochs", "2", "--model.finetune.max_epochs", "3"])


# robust-ft's lines: its epoch lines, its resume notice, its own bar of distorting a split, its
# note when it hashes an own dataset's bytes (once per machine)
OWN_LINE = (r"^(epoch \d+/\d+  .*|resuming MLflow run .*|init_from latest: .*|"
            r"distort \w+ L[\w.-]+: .*|hashing \d+ files .*|\s*)$")  # fmt: skip


def test_console_shows_only_robust_fts_lines(workdir):
    """No third-party warning, tip, banner or progress bar; ROBUST_FT_VERBOSE=1 shows them."""
    import re

    cmd = [sys.executable, "-m", "robust_ft", "fit", "--config", str(CONF / "lenet5_mnist.yaml"),
           *synthetic_args(n_train=128, n_test=64), "--trainer.max_epochs", "2",
           "--data.init_args.distortion.kind", "defocus", "--data.init_args.distortion.level", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ROBUST_FT_VERBOSE", None)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    foreign = [ln for ln in r.stderr.splitlines() if not re.match(OWN_LINE, ln)]
    assert foreign == [], foreign
    assert len(re.findall(r"^epoch \d/2  train/loss", r.stderr, re.M)) == 2
    assert r.stdout.startswith("\nTest error (%), lenet5 on synthetic:\n| test set |")
    assert "--backend-store-uri sqlite:///" in r.stdout and "Epoch 0" not in r.stdout
    loud = subprocess.run(cmd, env={**env, "ROBUST_FT_VERBOSE": "1"}, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert loud.returncode == 0 and "GPU available" in loud.stderr
