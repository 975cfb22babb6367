"""`robust-ft advise` on a real tiny sweep in a SQLite store."""

from __future__ import annotations

import json

import pytest
from conftest import isolated_store
from mlflow.tracking import MlflowClient

from robust_ft import cli, sweep
from robust_ft.deploy import advise

TINY = ["--synthetic", "--synthetic-size", "128,64", "--kinds", "defocus", "--levels", "0,1,3",
        "--first-n", "1", "--budget", "demo", "--name", "advise"]  # fmt: skip
BASE = ["--model", "lenet5", "--dataset", "synthetic", "--kind", "defocus"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tiny sweep: pretrain, no-train, first-1 and re-train at defocus levels 1 and 3."""
    d = tmp_path_factory.mktemp("advise")
    with isolated_store(d) as uri:
        sweep.main(TINY)
        yield uri


def _advice(capsys, *args) -> dict:
    capsys.readouterr()
    advise.main([*BASE, *args, "--json"])
    return json.loads(capsys.readouterr().out)


def test_cheapest_method_within_tolerance(store, capsys):
    a = _advice(capsys, "--level", "1", "--tolerance", "0")
    assert [r["method"] for r in a["evidence"]] == ["notrain", "first-1", "retrain"]
    errors = {r["method"]: r["error"] for r in a["evidence"]}
    assert a["answer"] == a["best"] == min(errors, key=errors.get)
    run = MlflowClient(store).get_run(a["evidence"][1]["run_ids"][0])
    assert run.data.tags["method"] == "first-1" and run.data.tags["level"] == "L1"
    assert a["evidence"][1]["error"] == pytest.approx(
        run.data.metrics["test/err/defocus/L1"], abs=1e-3
    )
    assert a["evidence"][1]["epochs"] >= 1 and a["evidence"][1]["clean_error"] is not None
    assert _advice(capsys, "--level", "1", "--tolerance", "100")["answer"] == "notrain"
    assert a["missing"] == ["first-2", "first-3", "first-4"]
    assert "--first-n 2,3,4 --no-retrain" in a["commands"][0]


def test_table_output(store, capsys):
    capsys.readouterr()
    advise.main([*BASE, "--level", "3"])
    out = capsys.readouterr().out
    assert out.startswith("advice for lenet5 on synthetic, defocus level 3: ")
    assert "| method | error (%) | clean error (%) | train time | epochs | runs |" in out
    assert "<- advice" in out and "paper Sec. 5" in out


def test_between_levels_is_not_interpolated(store, capsys):
    a = _advice(capsys, "--level", "2")
    assert a["answer"] is None and a["evidence"] == []
    assert "lies between the measured levels 1 and 3" in a["note"]
    assert a["commands"] == [
        "robust-ft sweep --model lenet5 --dataset synthetic --kinds defocus --levels '2'"
    ]


def test_missing_kind_prints_the_command(store, capsys):
    capsys.readouterr()
    advise.main(["--model", "lenet5", "--dataset", "synthetic", "--kind", "noise", "--level", "2"])
    out = capsys.readouterr().out
    assert "not measured: notrain, first-1, first-2, first-3, first-4, retrain" in out
    assert "robust-ft sweep --model lenet5 --dataset synthetic --kinds noise --levels '2'" in out


def test_bad_kind_is_a_clear_error(store, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["advise", *BASE[:4], "--kind", "blur", "--level", "2"])
    assert e.value.code == 2
    assert "--kind 'blur' is not a distortion" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["advise", "estimate", "register", "build-router"])
def test_help_imports_nothing_heavy(command):
    """`robust-ft <command> --help` answers without importing torch, Lightning or MLflow."""
    import subprocess
    import sys

    code = (f"import sys\nfrom robust_ft import cli\ntry:\n    cli.main([{command!r}, '--help'])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'lightning', 'mlflow') if m in sys.modules))")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"usage: robust-ft {command}" in r.stdout and r.stdout.strip().endswith("[]"), r.stdout
