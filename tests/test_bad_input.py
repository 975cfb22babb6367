"""The bad-input matrix: every case names what is wrong and how to fix it, exits non-zero on the
CLI, and leaves no partial file behind."""

from __future__ import annotations

import errno
import os
import pickle
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONF, synthetic_args

from robust_ft.cli import main

LENET = ["--config", str(CONF / "lenet5_mnist.yaml")]
SYN = synthetic_args(n_train=64, n_test=32)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _write_bad_idx(root: Path) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x01\x02garbage")


def _cifar_ckpt(path: Path) -> str:
    from robust_ft.models import build

    torch.save(
        {"state_dict": {f"net.{k}": v for k, v in build("cifar10_quick").state_dict().items()}},
        path,
    )
    return str(path)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {Path.cwd() / 'PWNED'}",))


def _evil_ckpt(path: Path) -> str:
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f)
    return str(path)


def _png_tree_with_text(root: Path) -> str:
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "0.png")
    (root / "train" / "a" / "readme.txt").write_text("not an image")
    return str(root)


OWN = ["--config", str(CONF / "lenet5_imagefolder.yaml"), "--trainer.max_epochs", "1"]


def _tree_classes_differ(root: Path) -> str:
    from robust_ft.data.make_folder import make_folder

    make_folder(root, train_per_class=2, val_per_class=1)
    for f in (root / "val" / "class_2").iterdir():
        f.unlink()
    (root / "val" / "class_2").rmdir()
    return str(root)


def _tree_with(root: Path, name: str, array) -> str:
    from PIL import Image

    from robust_ft.data.make_folder import make_folder

    make_folder(root, train_per_class=2, val_per_class=1)
    f = root / "train" / "class_0" / name
    f.write_bytes(b"\x89PNG garbage") if array is None else Image.fromarray(array).save(f)
    return str(root)


# (id, argv builder(workdir) -> list[str], regex the message must match)
CLI_CASES = [
    ("unknown-config-key", lambda w: ["fit", *LENET, "--model.no_such_key", "1"], "no_such_key"),
    ("wrong-type", lambda w: ["fit", *LENET, "--model.lr", "fast"], "lr"),
    ("unknown-model", lambda w: ["fit", *LENET, *SYN, "--model.arch", "resnet50"], "unknown model 'resnet50'; accepted: lenet5"),
    ("unknown-dataset-class", lambda w: ["fit", *LENET, "--data.class_path", "robust_ft.data.datamodules.NoSuchData"], "NoSuchData"),
    ("unknown-dataset-figure", lambda w: ["show-distortions", "--dataset", "svhn"], "invalid choice: 'svhn'"),
    ("unknown-kind", lambda w: ["fit", *LENET, *SYN, "--data.init_args.distortion.kind", "blurry"], "unknown distortion kind 'blurry'; accepted: motion, defocus, noise, combined"),
    ("negative-level", lambda w: ["fit", *LENET, *SYN, "--data.init_args.distortion.kind", "defocus", "--data.init_args.distortion.level", "-1"], "level"),
    ("nan-level", lambda w: ["fit", *LENET, *SYN, "--data.init_args.distortion.kind", "noise", "--data.init_args.distortion.level", "nan"], "level"),
    ("reversed-range", lambda w: ["fit", *LENET, *SYN, "--data.init_args.distortion.kind", "noise", "--data.init_args.distortion.level", "U(4,0)"], "U\\(4"),
    ("first-n-out-of-range", lambda w: ["fit", *LENET, *SYN, "--model.first_n", "7"], "first_n=7 is out of range for lenet5, which has 4"),
    ("dataset-path-missing", lambda w: ["fit", *LENET, "--data.init_args.root", str(w / "nowhere")], "MNIST train split not found"),
    ("corrupt-idx", lambda w: (_write_bad_idx(w / "bad"), ["fit", *LENET, "--data.init_args.root", str(w / "bad")])[1], "not an IDX file.*fetch the data again"),
    ("corrupt-checkpoint", lambda w: ((w / "x.ckpt").write_bytes(b"\x80\x04garbage"), ["test", *LENET, *SYN, "--model.init_from", str(w / "x.ckpt")])[1], "cannot load checkpoint .* safely"),
    ("truncated-checkpoint", lambda w: ["test", *LENET, *SYN, "--model.init_from", _truncated_ckpt(w)], "cannot load checkpoint .* safely"),
    ("checkpoint-other-arch", lambda w: ["test", *LENET, *SYN, "--model.init_from", _cifar_ckpt(w / "c.ckpt")], "another architecture than LeNet5"),
    ("malicious-pickle", lambda w: ["test", *LENET, *SYN, "--model.init_from", _evil_ckpt(w / "evil.ckpt")], "cannot load checkpoint .* safely"),
    ("missing-run-id", lambda w: ["test", *LENET, *SYN, "--model.init_from", "0123456789abcdef0123456789abcdef"], "run 0123456789abcdef0123456789abcdef does not exist"),
    ("no-pretrain-for-latest", lambda w: ["fit", *LENET, "--config", str(CONF / "finetune.yaml"), *SYN], "no finished clean pre-train run"),
    ("bad-checkpoint-reference", lambda w: ["test", *LENET, *SYN, "--model.init_from", "not-a-run"], "neither an existing file"),
    ("resume-without-checkpoint", lambda w: ["fit", *LENET, *SYN, "--tracking.resume", "0123456789abcdef0123456789abcdef"], "cannot resume run .* no checkpoint"),
    ("imagefolder-non-image", lambda w: ["fit", "--config", str(CONF / "alexnet_imagenet.yaml"), "--model.pretrained", "false", "--data.init_args.root", _png_tree_with_text(w / "tree")], "readme.txt is not an image file"),
    ("imagefolder-classes-differ", lambda w: ["fit", *OWN, "--data.init_args.root", _tree_classes_differ(w / "tree")], r"class folders of .* differ: only in train/: \['class_2'\]; only in val/: none"),
    ("imagefolder-unsupported-mode", lambda w: ["fit", *OWN, "--data.init_args.root", _tree_with(w / "tree", "f.tif", np.zeros((8, 8), np.float32))], "f.tif.*PIL mode 'F' is not supported.*convert the file to 8-bit"),
    ("imagefolder-corrupt-image", lambda w: ["fit", *OWN, "--data.init_args.root", _tree_with(w / "tree", "bad.png", None)], "cannot decode image .*bad.png.*remove or replace the file"),
    ("wrong-image-shape", lambda w: ["fit", *LENET, *synthetic_args(shape=(3, 32, 32))], "lenet5 expects images of shape \\(1, 28, 28\\)"),
    ("test-levels-without-kinds", lambda w: ["test", *LENET, *SYN, "--data.init_args.test_levels", "[1]"], "test_levels needs test_kinds"),
    ("bad-optuna-storage", lambda w: ["tune", "--dataset", "mnist", "--kind", "defocus", "--storage", "nosuchdb://x", "--extra", *SYN], "is not a storage URL"),
    ("unknown-command", lambda w: ["frobnicate"], "unknown command 'frobnicate'"),
]  # fmt: skip


def _truncated_ckpt(w: Path) -> str:
    from robust_ft.models import build

    p = w / "t.ckpt"
    torch.save({"state_dict": build("lenet5").state_dict()}, p)
    p.write_bytes(p.read_bytes()[:1000])
    return str(p)


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() and "mlflow.db" not in p.name}


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(workdir, capsys, case):
    name, argv_of, pattern = case
    argv = argv_of(workdir)
    before = _files(workdir)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code not in (0, None)
    err = capsys.readouterr().err
    import re

    assert re.search(pattern, err, re.S | re.I), err[-2000:]
    assert "Traceback" not in err
    new = _files(workdir) - before
    leftovers = [p for p in new if p.suffix in (".ckpt", ".npy", ".tmp") or ".tmp" in p.name]
    assert not leftovers, leftovers
    assert not (workdir / "PWNED").exists()  # the malicious pickle never ran


def test_unreachable_tracking_server_fails_fast(workdir, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_closed_port()}")
    start = time.time()
    with pytest.raises(SystemExit) as exc:
        main(["fit", *LENET, *SYN])
    assert exc.value.code == 2
    assert time.time() - start < 30
    assert "unreachable" in capsys.readouterr().err


def test_corrupt_and_truncated_cache_are_regenerated(tmp_path):
    from robust_ft.data.datamodules import Distortion, SyntheticDataModule

    def setup():
        dm = SyntheticDataModule(
            root=str(tmp_path), n_train=64, n_test=16, distortion=Distortion("defocus", 1)
        )
        dm.prepare_data()
        dm.setup()
        return dm._data["train"][0].images.clone()

    ref = setup()
    files = sorted((tmp_path / "cache").glob("*.npy"))
    files[0].write_bytes(b"garbage")
    files[1].write_bytes(files[1].read_bytes()[:-10])
    with pytest.warns(UserWarning, match="regenerat"):
        again = setup()
    assert torch.equal(ref, again)


def test_disk_full_on_cache_write_leaves_no_file(tmp_path, monkeypatch):
    from robust_ft.data import cache

    target = tmp_path / "c" / "x.npy"

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    with pytest.raises(OSError, match="No space left"):
        cache.load_or_create(target, lambda: np.zeros((4, 4), np.uint8))
    assert not target.exists()
    assert not [p for p in target.parent.glob("*")] if target.parent.exists() else True


def _tree_digest(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_oversized_image_is_one_sentence_with_the_fix(workdir, monkeypatch, capsys):
    from PIL import Image

    from robust_ft.data.make_folder import make_folder

    root = make_folder(workdir / "tree", train_per_class=2, val_per_class=1)
    Image.fromarray(np.zeros((200, 200), np.uint8)).save(root / "train" / "class_0" / "big.png")
    monkeypatch.setenv("ROBUST_FT_MAX_IMAGE_PIXELS", "10000")  # 40,000 px > 2x the limit
    before = _tree_digest(root)
    with pytest.raises(SystemExit) as exc:
        main(["fit", *OWN, "--data.init_args.root", str(root)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert "big.png is too large to decode safely" in err and "shrink the image" in err
    assert _tree_digest(root) == before


def test_read_only_cache_directory_says_where_to_point_it(workdir, monkeypatch, capsys):
    """A read-only data root (EROFS; chmod does not stop root): one line naming cache_dir."""
    import tempfile

    from robust_ft.data.make_folder import make_folder

    root = make_folder(workdir / "tree", train_per_class=2, val_per_class=1)

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    before = _tree_digest(root)
    start = time.time()
    with pytest.raises(SystemExit) as exc:
        main(["fit", *OWN, "--data.init_args.root", str(root)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err and time.time() - start < 10
    assert "cannot write the cache in" in err and "--data.init_args.cache_dir DIR" in err
    assert _tree_digest(root) == before
