"""Start-up cost of a run outside its train/test loops, and a sweep on 1 vs 2 workers.

Usage: python benchmarks/startup.py [--out benchmarks/results/startup.json] [--before REV]
       [--repeats 3]

Side by side in one run (pairs interleaved, medians), each in a fresh temporary MLflow store:
- ``--help`` of every command: wall time of the whole process (fit/test: with the rendered help
  cached; the first call after ``make setup``, which cached it in the environment; the first
  call from a plain install of ``make wheel``'s wheel, which ships it; and the first call with
  no rendered help anywhere, which renders it);
- a trivial ``fit`` (100 synthetic 28x28 images, 1 epoch): wall time of the whole process, on a
  fresh MLflow store (which the fit creates) and on the store an earlier fit made;
- in one process, two such fits through ``runner.run``: wall time minus the time inside the
  train/test loops (a callback measures them) = the overhead of a run; the second one is what a
  sweep cell pays (imports shared);
- the wall time of a small synthetic sweep (8 cells) with ``--workers 1`` and ``--workers 2``.
``--before REV`` measures the command-level numbers of an older revision too (a git worktree run
with this virtualenv), so "before and after" come from the same machine at the same time.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from demo_time import save  # benchmarks/ is the script's directory

REPO = Path(__file__).resolve().parent.parent
HELPS = [[], ["fit"], ["test"], ["demo"], ["sweep"], ["tune"], ["report"], ["show-distortions"]]
SYNTH = [
    "--data.class_path", "robust_ft.data.datamodules.SyntheticDataModule",
    "--data.init_args.image_shape", "[1,28,28]", "--data.init_args.n_train", "100",
    "--data.init_args.n_test", "100", "--data.init_args.batch_size", "50",
    "--data.init_args.root", "data",
]  # fmt: skip
FIT = ["fit", "--config", str(REPO / "conf/lenet5_mnist.yaml"), *SYNTH,
       "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"]  # fmt: skip
SWEEP = ["sweep", "--synthetic", "--synthetic-size", "20000,1000", "--kinds", "defocus,noise",
         "--levels", "0,2", "--first-n", "1", "--budget", "demo", "--name", "bench"]  # fmt: skip


def timed(cmd: list[str], code: Path, env_extra: dict | None = None, *more: list[str]):
    """Wall seconds of ``python -m robust_ft <cmd>`` with ``code`` first on the path, fresh store;
    with ``more`` commands, a list: each then runs in turn on the store the first one made."""
    walls = []
    with tempfile.TemporaryDirectory() as d:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{d}/mlflow.db",
               "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1", **(env_extra or {})}  # fmt: skip
        for c in (cmd, *more):
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "robust_ft", *c], cwd=d, env=env,
                               capture_output=True, text=True)  # fmt: skip
            walls.append(time.perf_counter() - t0)
            if r.returncode != 0:
                sys.exit(f"{c} failed:\n{r.stderr[-3000:]}")
    return walls if more else walls[0]


def uncached_help(command: str) -> float:
    """Wall seconds of ``robust-ft <command> --help`` with no rendered help anywhere (as after a
    plain ``pip install``): the environment's place is pointed at an empty directory."""
    with tempfile.TemporaryDirectory() as d:
        env = {"ROBUST_FT_CACHE_DIR": d, "ROBUST_FT_HELP_DIR": str(Path(d) / "install")}
        return timed([command, "--help"], REPO, env)


def wheel_help(scratch: Path) -> dict[str, float] | None:
    """Wall seconds of the first ``fit/test --help`` from a plain ``pip install --no-deps`` of
    ``make wheel``'s wheel (no install-time step, empty user cache): its shipped texts."""
    wheels = sorted((REPO / "dist").glob("robust_ft-*.whl"))
    if not wheels:
        print("no dist/robust_ft-*.whl: run `make wheel` to measure the help of a wheel install")
        return None
    site = scratch / "wheel-site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(wheels[-1])], check=True)  # fmt: skip
    empty = {"ROBUST_FT_CACHE_DIR": str(scratch / "wheel-user"),
             "ROBUST_FT_HELP_DIR": str(scratch / "wheel-install")}  # fmt: skip
    return {c: timed([c, "--help"], site, empty) for c in ("fit", "test")}


def worktree(rev: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix="robust-ft-before-"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), rev],
                   check=True, capture_output=True)  # fmt: skip
    return path


def run_overheads() -> list[float]:
    """Overheads (s) of two trivial fits in this process: wall minus train/test loop time."""
    from lightning.pytorch.callbacks import Callback

    from robust_ft.runner import run

    class Loops(Callback):
        def __init__(self):
            self.inside, self.t0 = 0.0, 0.0

        def _start(self, *args):
            self.t0 = time.perf_counter()

        def _end(self, *args):
            self.inside += time.perf_counter() - self.t0

        on_train_start = on_test_start = _start
        on_train_end = on_test_end = _end

    out = []
    with tempfile.TemporaryDirectory() as d:
        cwd = os.getcwd()
        os.chdir(d)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{d}/mlflow.db"
        try:
            for _ in range(2):
                loops = Loops()
                t0 = time.perf_counter()
                run(FIT[0], argv=[*FIT[1:], "--tracking.resume", "never"], callbacks=[loops])
                out.append(time.perf_counter() - t0 - loops.inside)
        finally:
            os.chdir(cwd)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/startup.json")
    p.add_argument("--before", help="an older revision to measure beside this one")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sections", default="help,fit,overhead,sweep",
                   help="what to measure (comma list of help, fit, overhead, sweep)")  # fmt: skip
    a = p.parse_args(argv)
    sections = set(a.sections.split(","))
    codes = {"now": REPO}
    if a.before:
        codes["before"] = worktree(a.before)
    res: dict = {"machine": {"platform": platform.platform(), "nproc": os.cpu_count()}}
    for name in codes:
        res[name] = {"help_s": {}, "fit_process_s": []}
    # the rendered help of fit/test: cached in the environment at install time (`make setup`),
    # else rendered by the first call into the per-user cache. Measured: the first call with
    # neither (a plain pip install), the first after `make setup` (a fresh user cache), the rest.
    with tempfile.TemporaryDirectory(prefix="robust-ft-startup-") as d:
        scratch = Path(d)  # the per-user help caches: one shared, one fresh per first call
        os.environ["ROBUST_FT_CACHE_DIR"] = str(scratch / "user-cache")
        if "help" in sections:
            res["now"]["help_cold_s"] = {c: uncached_help(c) for c in ("fit", "test")}
            res["now"]["help_after_install_s"] = {
                c: timed([c, "--help"], REPO, {"ROBUST_FT_CACHE_DIR": str(scratch / f"fresh-{c}")})
                for c in ("fit", "test")
            }
            res["now"]["help_from_wheel_s"] = wheel_help(scratch)
        for _ in range(a.repeats):  # interleaved: before and now see the same machine load
            for name, code in codes.items():
                for h in HELPS if "help" in sections else []:
                    res[name]["help_s"].setdefault(" ".join(h) or "(none)", []).append(
                        timed([*h, "--help"], code)
                    )
                if "fit" in sections:  # the first fit creates the store; the second finds it
                    fresh, existing = timed(FIT, code, None, [*FIT, "--seed_everything", "1"])
                    res[name]["fit_process_s"].append(fresh)
                    res[name].setdefault("fit_existing_store_s", []).append(existing)
        if a.before:  # the worktree was only for measuring
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(codes["before"])],
                           capture_output=True)  # fmt: skip
        for name in codes:
            res[name]["help_s"] = {k: statistics.median(v) for k, v in res[name]["help_s"].items()}
            for key in ("fit_process_s", "fit_existing_store_s"):
                fits = res[name].get(key)
                res[name][key] = statistics.median(fits) if fits else None
        if "overhead" in sections:
            first, second = run_overheads()
            res["now"]["run_overhead_s"] = {
                "first_run_in_process": first,
                "next_run_in_process": second,
            }
        if "sweep" in sections:
            one, two = timed(SWEEP, REPO), timed([*SWEEP, "--workers", "2"], REPO)
            res["sweep_wall_s"] = {"workers_1": one, "workers_2": two, "speedup": one / two}
        res["machine"]["loadavg_at_end"] = os.getloadavg()
        return save(res, Path(a.out))


if __name__ == "__main__":
    main()
