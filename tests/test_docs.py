"""The README and docs/ are executable: every command block runs, as printed, on a fresh store.

Each ```bash and ```python block of README.md and docs/*.md runs in order, in one fresh copy of
the repository per document (its own ``mlflow.db``, ``optuna.db`` and outputs), the way a user
follows the page from the top. Commands that train get budget-reducing flags appended (``BUDGET``
below: one epoch, a few hundred images, a smaller grid); nothing else is changed. A block that
cannot run here says so visibly in its first line, ``# not run by the tests: <reason>`` (a GPU,
a cluster, a database host), and the reason is checked to be there. The lines that *are* the test
suite (``make test``, ``make lint``, ``pytest``) are not run from inside it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import copy_checkout

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
DOCUMENTS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
MARK = "# not run by the tests:"
FIT = "--trainer.max_epochs 1 --data.init_args.train_subset 600 --data.init_args.test_subset 200"
DEMO = f"--levels 0,2 --first-n 1 --finetune-subset 300 --extra {FIT}"
SWEEP = (
    "--kinds defocus --levels 0,2 --first-n 1 --train-subset 300 "
    "--extra --trainer.max_epochs 1 --data.init_args.test_subset 200"
)
TUNE = (
    "--n-trials 2 --trial-epochs 1 --trial-subset 300 --extra --model.finetune.max_epochs 1 "
    "--data.init_args.train_subset 600 --data.init_args.test_subset 200"
)
CLI = r"^(?:robust-ft|python -m robust_ft)"
BUDGET = [  # (a command's start, flags appended to it)
    (rf"{CLI} (?:fit|test|validate)\b(?!.*--help)", FIT),
    (rf"{CLI} demo\b(?!.*--help)", DEMO),
    (rf"{CLI} sweep\b(?!.*(?:--help|--dry-run))", SWEEP),
    (rf"{CLI} tune\b(?!.*--help)", TUNE),
    (rf"{CLI} estimate\b.*--train\b", "--epochs 1 --train-images 2000"),
    (rf"{CLI} estimate\b.*--validate\b", "--images 100"),
    (rf"{CLI} estimate\b.*--data\b", "--limit 300"),
]
MLFLOW_RUN = {"pretrain": FIT, "finetune": FIT, "retrain": FIT, "evaluate": FIT, "main": DEMO,
              "tune": TUNE, "sweep": SWEEP}  # fmt: skip
WAIT_HTTP = (  # waits up to 120 s for a URL to answer, else fails the block
    'python -c "import sys, time, urllib.request as u; t = time.time() + 120\n'
    "while True:\n try: u.urlopen(sys.argv[1], timeout=2); break\n"
    ' except OSError:\n  assert time.time() < t, sys.argv[1]; time.sleep(1)"'
)
THE_SUITE = re.compile(r"^(?:make (?:test|test-fast|lint|format)|\.venv/bin/pytest|pytest)\b")


@dataclass
class Block:
    doc: str
    line: int
    lang: str
    text: str

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def reason(self) -> str | None:
        """Why the block does not run here (its first line), None when it runs."""
        first = self.text.strip().splitlines()[0] if self.text.strip() else ""
        return first.removeprefix(MARK).strip() if first.startswith(MARK) else None


def blocks(doc: str) -> list[Block]:
    """The ```bash / ```sh / ```python blocks of a document, in order."""
    out, lang, start, lines = [], None, 0, []
    for n, line in enumerate((REPO / doc).read_text().splitlines(), 1):
        fence = re.match(r"^```(\w*)\s*$", line)
        if fence and lang is None:
            lang, start, lines = fence[1] or "text", n, []
        elif line.startswith("```") and lang is not None:
            if lang in ("bash", "sh", "python"):
                out.append(Block(doc, start, lang, "\n".join(lines) + "\n"))
            lang = None
        elif lang is not None:
            lines.append(line)
    return out


def commands(text: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\s*\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def _strip_comment(cmd: str) -> tuple[str, str]:
    """A command and its trailing ``# comment`` (outside quotes)."""
    quote = None
    for i, ch in enumerate(cmd):
        if ch in "'\"" and quote in (None, ch):
            quote = None if quote else ch
        elif ch == "#" and quote is None and (i == 0 or cmd[i - 1].isspace()):
            return cmd[:i].rstrip(), cmd[i:]
    return cmd, ""


def with_budget(cmd: str) -> str:
    """The command with the budget-reducing flags appended where it trains."""
    cmd, _ = _strip_comment(cmd)
    background = cmd.endswith("&")
    cmd = cmd.removesuffix("&").rstrip()
    for pattern, flags in BUDGET:
        if re.match(pattern, cmd):
            cmd = f"{cmd} {flags}"
            break
    entry = re.match(r"^mlflow run \S+ -e (\w+)", cmd)
    if entry and entry[1] in MLFLOW_RUN:
        flags = MLFLOW_RUN[entry[1]]
        extra = re.search(r'-P extra="([^"]*)"', cmd)
        if extra:  # the block's own extra flags, then ours
            cmd = cmd.replace(extra[0], f'-P extra="{extra[1]} {flags}"')
        else:
            cmd = f'{cmd} -P extra="{flags}"'
    server = re.match(r"^mlflow (?:ui|server)\b", cmd)
    if server and not background:  # a UI a user leaves open: start it, see it answer, stop it
        port = re.search(r"--port[ =](\d+)", cmd)
        url = f"http://127.0.0.1:{port[1] if port else 5000}/health"
        return f"setsid {cmd} & srv=$!; {WAIT_HTTP} {url}; kill -- -$srv"
    if re.match(r"^make demo\b", cmd):  # the set-up's venv is this one: install nothing
        cmd += f' VENV={VENV_BIN.parent} -o {VENV_BIN}/.installed DEMO_ARGS="{DEMO}"'
    return f"{cmd} &" if background else cmd


def script(block: Block) -> str:
    """What runs: the block's commands with budgets, the suite's own lines left out."""
    if block.lang == "python":
        return block.text
    lines = ["set -euo pipefail"]
    for cmd in commands(block.text):
        if THE_SUITE.match(cmd):
            lines.append(f"echo 'not run from inside the test suite: {cmd}'")
        else:
            lines.append(with_budget(cmd))
    lines.append("wait")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def checkouts(tmp_path_factory):
    """One fresh copy of the repository per document (tracked and new files, no outputs)."""
    made: dict[str, Path] = {}

    def get(doc: str) -> Path:
        if doc not in made:
            dest = copy_checkout(tmp_path_factory.mktemp(re.sub(r"\W", "_", doc)))
            (dest / ".venv").symlink_to(VENV_BIN.parent)  # what `make demo` set up
            if (REPO / "data").is_dir():  # the data a fresh machine's `make data` fetched
                (dest / "data").symlink_to(REPO / "data")
            made[doc] = dest
        return made[doc]

    return get


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ROBUST_FT_"))}
    env["PATH"] = f"{VENV_BIN}:{env['PATH']}"
    return env


ALL = [b for doc in DOCUMENTS for b in blocks(doc)]
RUNNABLE = [b for b in ALL if b.reason is None]


def test_every_block_runs_or_says_why():
    """A block that is not run names its reason; a runnable block has no placeholders."""
    assert RUNNABLE, "no command blocks found"
    for b in ALL:
        if b.reason is not None:
            assert len(b.reason) > 10, f"{b.id}: say why the block does not run here"
        else:
            holes = re.findall(r"<[a-z][\w -]*>", b.text)
            assert not holes, f"{b.id}: placeholders {holes}; use real values or mark the block"


@pytest.mark.slow
@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.id)
def test_block_runs_as_printed(block: Block, checkouts):
    cwd = checkouts(block.doc)
    path = cwd / f".block_{block.line}.{'py' if block.lang == 'python' else 'sh'}"
    path.write_text(script(block))
    runner = [sys.executable] if block.lang == "python" else ["bash"]
    t0 = time.time()
    # its own session: whatever the block leaves running in the background is stopped after it
    proc = subprocess.Popen([*runner, str(path)], cwd=cwd, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=1500)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    r = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    tail = textwrap.shorten(r.stderr[-3000:], 3000)
    assert r.returncode == 0, f"{block.id} failed (rc {r.returncode}):\n{r.stdout[-3000:]}\n{tail}"
    assert "Traceback" not in r.stderr, f"{block.id}: a traceback\n{r.stderr[-3000:]}"
    print(f"{block.id}: {time.time() - t0:.0f} s")


def test_budget_flags_are_appended_where_a_command_trains():
    """The rewriting itself (so a wrong rule fails here, not as a slow block)."""
    assert with_budget("robust-ft fit --config c.yaml") == f"robust-ft fit --config c.yaml {FIT}"
    assert with_budget("robust-ft fit --help   # options") == "robust-ft fit --help"
    assert (
        with_budget("robust-ft sweep --preset x --dry-run")
        == "robust-ft sweep --preset x --dry-run"
    )
    cmd = with_budget('mlflow run . -e tune -P n_trials=30 -P extra="--then-finetune"')
    assert cmd.endswith(f'-P extra="--then-finetune {TUNE}"')
    assert with_budget("robust-ft tune --study-name s &").endswith(f"{TUNE} &")
    assert commands("a \\\n  b # c\n# d\n\ne") == ["a b # c", "e"]
    ui = with_budget("mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5001")
    assert ui.startswith("setsid mlflow ui") and ui.endswith("5001/health; kill -- -$srv")
