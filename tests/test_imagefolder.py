"""Own data: ImageFolder trees for every model, every PIL mode, dataset identity, cache keys."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CONF, REPO, run_cli
from mlflow.tracking import MlflowClient
from PIL import Image

from robust_ft.data.imagefolder import ImageFolderDataModule, decode, folder_digest, to_8bit
from robust_ft.data.make_folder import make_folder


def _grey(value: int, mode: str, size=(4, 4)) -> Image.Image:
    return Image.fromarray(np.full(size[::-1], value, np.uint8)).convert(mode)


@pytest.mark.parametrize(
    "make, channels, expected",
    [
        (lambda: _grey(100, "L"), 1, 100),
        (lambda: _grey(255, "1"), 1, 255),
        (lambda: _grey(100, "RGB"), 3, 100),
        (lambda: _grey(100, "L"), 3, 100),
        (lambda: _grey(100, "RGB"), 1, 100),
        (lambda: _grey(100, "P"), 1, 100),
        (lambda: _grey(100, "CMYK"), 1, 100),
        (lambda: Image.fromarray(np.full((4, 4), 128 * 257, np.uint16)), 1, 128),
        (lambda: Image.fromarray(np.full((4, 4), 65535, np.int32)), 1, 255),
        (lambda: Image.fromarray(np.full((4, 4, 4), [10, 20, 30, 0], np.uint8)), 3, 255),
        (lambda: Image.fromarray(np.full((4, 4, 2), [100, 255], np.uint8)), 1, 100),
    ],
    ids=["L", "1", "RGB", "L->3", "RGB->1", "P", "CMYK", "I;16", "I", "RGBA-clear", "LA"],
)
def test_every_pil_mode_converts(make, channels, expected):
    a = np.asarray(to_8bit(make(), channels))
    assert a.dtype == np.uint8 and a.shape == ((4, 4) if channels == 1 else (4, 4, 3))
    assert abs(int(a.mean()) - expected) <= 1, a


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    """A 16-bit PNG of mid-grey decodes to mid-grey (it used to clip to white)."""
    f = tmp_path / "x.png"
    Image.fromarray(np.full((8, 8), 30000, np.uint16)).save(f)
    a = decode(f, channels=1, resize=8, crop=8)
    assert a.shape == (8, 8) and int(a.mean()) == round(30000 / 257)


def test_unsupported_mode_is_refused_by_name(tmp_path):
    f = tmp_path / "x.tif"
    Image.fromarray(np.full((8, 8), 0.5, np.float32), "F").save(f)
    with pytest.raises(ValueError, match="x.tif.*PIL mode 'F' is not supported"):
        decode(f, channels=1, resize=8, crop=8)


def test_oversized_image_says_how_to_fix(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    f = tmp_path / "big.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(f)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match="too large to decode safely.*ROBUST_FT_MAX_IMAGE_PIXELS"):
        decode(f, channels=1, resize=8, crop=8)


def test_channels_and_size_follow_the_model(tmp_path):
    make_folder(tmp_path / "shapes", size=40, mode="RGB", train_per_class=4, val_per_class=2)
    dm = ImageFolderDataModule(root=str(tmp_path / "shapes"), channels=1, crop=28)
    assert dm.image_shape == (1, 28, 28) and dm.num_classes == 3
    assert dm.dataset_name == "shapes"
    x, y = dm.load_split("train")
    assert x.shape == (12, 28, 28) and sorted(set(y.tolist())) == [0, 1, 2]


def test_class_sets_of_the_splits_must_agree(tmp_path):
    root = make_folder(tmp_path / "shapes", train_per_class=2, val_per_class=1)
    (root / "val" / "class_2").rename(root / "val" / "class_9")
    with pytest.raises(
        ValueError, match=r"only in train/: \['class_2'\]; only in val/: \['class_9'\]"
    ):
        ImageFolderDataModule(root=str(root), channels=1, crop=28)


def test_decoded_cache_is_keyed_by_every_byte(tmp_path):
    """An edited image of the same size and name is decoded again, not served stale."""
    root = make_folder(tmp_path / "shapes", train_per_class=2, val_per_class=1, fmt="png")
    cache = tmp_path / "cache"
    kw = dict(root=str(root), channels=1, crop=28, cache_dir=str(cache))
    before, _ = ImageFolderDataModule(**kw).load_split("test")
    f = root / "val" / "class_0" / "00000.png"
    a = np.asarray(Image.open(f)).copy()
    a[0, 0] = 255 - a[0, 0]
    Image.fromarray(a).save(f)
    after, _ = ImageFolderDataModule(**kw).load_split("test")
    assert after[0, 0, 0] == a[0, 0] and before[0, 0, 0] != after[0, 0, 0]
    assert len(list(cache.glob("*-decoded-test-*.npy"))) == 2


def test_distorted_cache_key_hashes_every_image(tmp_path):
    from robust_ft.data.datamodules import Distortion, SyntheticDataModule

    dm = SyntheticDataModule(root=str(tmp_path), distortion=Distortion("defocus", 1), n_train=200)
    x = np.zeros((200, 28, 28), np.uint8)
    first = dm._distorted("train", x, "defocus", 1.0).copy()
    x[1, 5, 5] = 255  # an image the old key (1 in 64) never looked at
    second = dm._distorted("train", x, "defocus", 1.0)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
    assert not np.array_equal(first, second)


def test_cache_files_follow_the_umask(tmp_path):
    from robust_ft.data.cache import load_or_create

    old = os.umask(0o022)
    try:
        load_or_create(tmp_path / "a.npy", lambda: np.zeros(3, np.uint8))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.npy").stat().st_mode) == 0o644


DIGEST = """
import os, sys, time
from pathlib import Path
from robust_ft.console import console_logging
from robust_ft.data.imagefolder import folder_digest

console_logging()
root, gate = sys.argv[1:]
Path(gate, f"ready-{os.getpid()}").touch()
while not Path(gate, "go").exists():
    time.sleep(0.005)
print(folder_digest(root))
"""


def test_digest_is_hashed_once_by_processes_starting_together(tmp_path):
    """Two processes (DDP ranks, say) ask for the digest at the same moment: one hashes each
    split's bytes (one log line per split in both outputs together), the other waits on the
    lock and reads the result; both get the same digest, and a later process hashes nothing."""
    root = make_folder(tmp_path / "shapes", train_per_class=30, val_per_class=10)
    gate = tmp_path / "gate"
    gate.mkdir()
    env = {**os.environ, "ROBUST_FT_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}

    def start():
        return subprocess.Popen([sys.executable, "-c", DIGEST, str(root), str(gate)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip

    procs = [start(), start()]
    deadline = time.time() + 120
    while len(list(gate.glob("ready-*"))) < 2 and time.time() < deadline:
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    (gate / "go").touch()  # both imported and waiting: release them together
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    digests = {out.strip() for out, _ in outs}
    assert len(digests) == 1 and len(digests.pop()) == 16
    hashed = [line for _, err in outs for line in err.splitlines() if line.startswith("hashing ")]
    assert len(hashed) == 2, hashed  # train and val, once each
    assert sum(f"{root}/train " in h for h in hashed) == 1, hashed
    assert sum(f"{root}/val " in h for h in hashed) == 1, hashed
    (gate / "go").unlink()
    later = start()
    (gate / "go").touch()
    out, err = later.communicate(timeout=120)
    assert out.strip() == outs[0][0].strip() and "hashing " not in err, err


def test_edited_file_gives_a_new_digest_and_cache_files_are_group_readable(tmp_path):
    """An edited image (same name) changes the digest; putting its bytes back restores it."""
    root = make_folder(tmp_path / "shapes", train_per_class=2, val_per_class=1, fmt="png")
    f = root / "train" / "class_1" / "00001.png"
    original = f.read_bytes()
    old = os.umask(0o022)
    try:
        first = folder_digest(root)
        assert folder_digest(root) == first
        a = np.asarray(Image.open(f)).copy()
        a[3, 3] = 255 - a[3, 3]
        time.sleep(0.01)  # past the file system's timestamp tick, as any real edit is
        Image.fromarray(a).save(f)
        edited = folder_digest(root)
        time.sleep(0.01)
        f.write_bytes(original)
        restored = folder_digest(root)
    finally:
        os.umask(old)
    assert edited != first and restored == first
    files = list((Path(os.environ["ROBUST_FT_CACHE_DIR"]) / "digests").glob("*.json"))
    assert files and all(stat.S_IMODE(p.stat().st_mode) & 0o040 for p in files)


def test_unusable_cache_directory_only_costs_the_hash(tmp_path, monkeypatch):
    """A cache directory that cannot be made (under a file) still gives the digest."""
    import hashlib

    from robust_ft.data.imagefolder import class_names, content_digest, list_files

    root = make_folder(tmp_path / "shapes", train_per_class=2, val_per_class=1)
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("ROBUST_FT_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    classes = class_names(root)
    both = "".join(content_digest(list_files(root, s, classes), root) for s in ("train", "test"))
    assert folder_digest(root) == hashlib.sha256(both.encode()).hexdigest()[:16]


def test_show_distortions_writes_its_cache_outside_the_dataset(workdir):
    from robust_ft.cli import main

    root = make_folder(workdir / "shapes", train_per_class=2, val_per_class=1)
    before = sorted(p for p in root.rglob("*"))
    main(["show-distortions", "--dataset", "imagefolder", "--root", str(root),
          "--model", "lenet5", "--out", str(workdir / "fig.png")])  # fmt: skip
    assert (workdir / "fig.png").stat().st_size > 0
    assert sorted(p for p in root.rglob("*")) == before
    cache = Path(os.environ["ROBUST_FT_CACHE_DIR"]) / "imagefolder"
    assert list(cache.glob("shapes-decoded-*.npy"))


def _fit(root: Path, *extra: str):
    return run_cli(["fit", "--config", str(CONF / "lenet5_imagefolder.yaml"),
                    "--data.init_args.root", str(root), "--data.init_args.batch_size", "20",
                    *extra])  # fmt: skip


def test_own_grayscale_folder_pretrain_identity_and_latest(workdir):
    """LeNet-5 on a folder of 28x28 grayscale PNGs: experiment, digest tag, inputs, latest."""
    a = make_folder(workdir / "a" / "shapes", seed=0)
    b = make_folder(workdir / "b" / "shapes", seed=1)  # the same name, other files
    pre = _fit(a, "--trainer.max_epochs", "2")
    assert pre.status == "FINISHED" and pre.experiment == "lenet5-shapes"
    run = MlflowClient().get_run(pre.run_id)
    assert run.data.tags["dataset"] == "shapes" and len(run.data.tags["dataset_digest"]) == 16
    names = {(d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs}
    assert {n for n, _ in names} == {"shapes/train/clean/L0", "shapes/val/clean/L0",
                                     "shapes/test/clean/L0"}  # fmt: skip
    assert all(len(d) == 16 for _, d in names)
    ft = ["--config", str(CONF / "finetune.yaml"), "--data.init_args.distortion.kind", "defocus",
          "--data.init_args.distortion.level", "2", "--model.finetune.max_epochs", "1"]  # fmt: skip
    with pytest.raises(Exception, match="no finished clean pre-train.*dataset_digest"):
        _fit(b, *ft)  # a's pre-train is of other files
    tuned = _fit(a, *ft)
    tags = MlflowClient().get_run(tuned.run_id).data.tags
    assert tags["init_from_run"] == pre.run_id and tags["method"] == "first-3"
    assert "test/err/defocus/L2" in tuned.metrics


@pytest.mark.parametrize(
    "config, size, extra",
    [
        ("cifar10_quick_imagefolder.yaml", 32, []),
        (
            "alexnet_imagefolder.yaml",
            48,
            [
                "--model.pretrained",
                "false",
                "--model.first_n",
                "3",
                "--data.init_args.batch_size",
                "4",
            ],
        ),
    ],  # fmt: skip
    ids=["cifar10_quick", "alexnet"],
)
def test_own_rgb_folder_for_every_model(workdir, config, size, extra):
    """The ready configs train on a generated RGB folder: size and channels from the model."""
    root = make_folder(workdir / "photos", size=size, mode="RGB", train_per_class=4,
                       val_per_class=2)  # fmt: skip
    res = run_cli(["fit", "--config", str(CONF / config), "--data.init_args.root", str(root),
                   "--trainer.fast_dev_run", "true", *extra])  # fmt: skip
    arch = config.split("_imagefolder")[0]
    assert res.experiment == f"{arch}-photos" and "test/err/clean/L0" in res.metrics
    tags = MlflowClient().get_run(res.run_id).data.tags
    assert tags["weights"] == "random"


def test_every_dataset_records_its_inputs(workdir):
    """The paper's datasets too: one MLflow dataset input per split and distortion, with digest."""
    from conftest import synthetic_args

    res = run_cli(["fit", "--config", str(CONF / "lenet5_mnist.yaml"), *synthetic_args(),
                   "--trainer.max_epochs", "1", "--data.init_args.distortion.kind", "noise",
                   "--data.init_args.distortion.level", "1", "--tracking.log_model", "false",
                   "--data.init_args.test_kinds", "[clean,noise]"])  # fmt: skip
    run = MlflowClient().get_run(res.run_id)
    got = {(d.dataset.name, [t.value for t in d.tags if t.key == "mlflow.data.context"][0])
           for d in run.inputs.dataset_inputs}  # fmt: skip
    assert got == {
        ("synthetic/train/noise/L1", "train"),
        ("synthetic/val/noise/L1", "val"),
        ("synthetic/test/clean/L0", "test"),
        ("synthetic/test/noise/L1", "test"),
    }
    assert all(len(d.dataset.digest) == 16 for d in run.inputs.dataset_inputs)
    assert "dataset_digest" not in run.data.tags  # the paper's datasets are known by name
