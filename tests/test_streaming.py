"""The streaming path (litdata shards): same images and test errors as the in-memory path,
per-image distortion seeds, the size threshold, DDP on 2 CPU processes, mid-epoch state."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONF, run_cli, store_client
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from mlflow.tracking import MlflowClient
from stream_record import read

from robust_ft.data.distortions import distort_batch_seeded
from robust_ft.data.imagefolder import ImageFolderDataModule
from robust_ft.data.make_folder import make_folder
from robust_ft.data.streaming import sample_seeds

LENET = CONF / "lenet5_imagefolder.yaml"
RECORDING = Path(__file__).resolve().parent / "stream_record.py"


def _recording(root, record: Path, *extra: str) -> list[str]:
    """Flags of a LeNet-5 run on streamed ``root`` whose batches are recorded in ``record``."""
    record.mkdir()
    return ["--config", str(LENET), "--data.class_path", "stream_record.RecordingFolder",
            "--data.init_args.root", str(root), "--data.init_args.stream", "true",
            "--data.init_args.record_dir", str(record), "--trainer.enable_progress_bar", "false",
            "--tracking.log_model", "false", *extra]  # fmt: skip


def _all(dm, split):
    xs, ys, ids = [], [], []
    for x, y, i in dm.streaming.loader(split):  # clean: no draws
        xs.append(x), ys.append(y), ids.append(i)
    x, y, i = torch.cat(xs), torch.cat(ys), torch.cat(ids)
    order = torch.argsort(i)
    return x[order], y[order]


def test_shards_hold_the_images_of_the_in_memory_path(tmp_path):
    root = make_folder(tmp_path / "shapes", train_per_class=10, val_per_class=4)
    kw = dict(root=str(root), channels=1, crop=28, batch_size=7, cache_dir=str(tmp_path / "c"))
    mem = ImageFolderDataModule(**kw)
    mem.prepare_data(), mem.setup()
    stream = ImageFolderDataModule(stream=True, **kw)
    stream.prepare_data(), stream.setup()
    for split in ("train", "val", "test"):
        x, y = _all(stream, split)
        assert torch.equal(x, mem._data[split][0].images), split
        assert torch.equal(y, mem._data[split][0].labels), split
    assert list((tmp_path / "c" / "streaming").glob("shapes-test-*/index.json"))
    assert not list(root.rglob("*.bin"))  # nothing written into the dataset


@pytest.mark.parametrize("channels", [1, 3])
def test_distorted_splits_hold_the_same_bytes_in_memory_and_streamed(tmp_path, channels):
    """Every image of every distorted split, random draws included (noise, combined U(0,4)),
    is the same byte for byte whether the split streams or is held in memory."""
    from robust_ft.data.datamodules import Distortion

    root = make_folder(tmp_path / "shapes", train_per_class=9, val_per_class=5,
                       mode="L" if channels == 1 else "RGB")  # fmt: skip
    kw = dict(root=str(root), channels=channels, crop=28, batch_size=4, val_split=0.25,
              cache_dir=str(tmp_path / "c"), distortion=Distortion("combined", "U(0,4)"),
              test_kinds=["clean", "noise", "combined"], test_levels=[2])  # fmt: skip
    mem = ImageFolderDataModule(**kw)
    mem.prepare_data(), mem.setup()
    stream = ImageFolderDataModule(stream=True, **kw)
    stream.prepare_data(), stream.setup()
    for split, n_sets in (("train", 1), ("val", 1), ("test", 3)):
        for i in range(n_sets):
            xs, ids = [], []
            for batch in stream.streaming.loader(split, i):
                (
                    xs.append(stream.streaming.distort(batch, split, i, epoch=0)[0]),
                    ids.append(batch[2]),
                )
            x = torch.cat(xs)[torch.argsort(torch.cat(ids))]
            assert torch.equal(x, mem._data[split][i].images), (split, i)
    clean = mem._data["test"][0].images
    assert not torch.equal(mem._data["test"][1].images, clean)  # noise L2 drew something


def test_size_threshold_turns_streaming_on(tmp_path):
    root = make_folder(tmp_path / "shapes", train_per_class=2, val_per_class=1)
    kw = dict(root=str(root), channels=1, crop=28, cache_dir=str(tmp_path / "c"))
    assert ImageFolderDataModule(**kw).streaming is None
    assert ImageFolderDataModule(stream_above_mb=0.001, **kw).streaming is not None


def test_per_image_seeds_make_bytes_independent_of_batch_and_run():
    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    seeds = sample_seeds("abc", "test", range(6), "combined", (0.0, 4.0), 0)
    whole = distort_batch_seeded(x, "combined", "U(0,4)", seeds)
    parts = torch.cat(
        [distort_batch_seeded(x[:2], "combined", "U(0,4)", seeds[:2]),
         distort_batch_seeded(x[2:], "combined", "U(0,4)", seeds[2:])]
    )  # fmt: skip
    assert torch.equal(whole, parts) and not torch.equal(whole, x)
    assert seeds == sample_seeds("abc", "test", range(6), "combined", (0.0, 4.0), 0)
    assert seeds != sample_seeds("abd", "test", range(6), "combined", (0.0, 4.0), 0)
    per_epoch = sample_seeds("abc", "train", range(6), "noise", 2.0, 0, epoch=1)
    assert per_epoch != sample_seeds("abc", "train", range(6), "noise", 2.0, 0, epoch=2)


def test_worker_draws_give_the_bytes_of_seeded_distortion(tmp_path):
    """Test images distorted from the workers' draws equal distort_batch_seeded's (same seeds)."""
    from robust_ft.data.datamodules import Distortion

    root = make_folder(tmp_path / "shapes", train_per_class=4, val_per_class=3)
    dm = ImageFolderDataModule(root=str(root), channels=1, crop=28, stream=True, batch_size=4,
                               cache_dir=str(tmp_path / "c"), num_workers=1,
                               distortion=Distortion("combined", "U(0,4)"))  # fmt: skip
    dm.prepare_data(), dm.setup()
    for batch in dm.streaming.loader("test"):
        assert len(batch) == 4  # drawn in the worker
        x, _ = dm.streaming.distort(batch, "test", 0, epoch=0)
        seeds = sample_seeds(dm.split_digests["test"], "test", batch[2].tolist(), "combined",
                             (0.0, 4.0), dm.seed)  # fmt: skip
        assert torch.equal(x, distort_batch_seeded(batch[0], "combined", "U(0,4)", seeds))


def _test(root, ckpt, stream: bool, kinds="[clean,defocus,noise]"):
    return run_cli(["test", "--config", str(LENET), "--data.init_args.root", str(root),
                    "--model.init_from", ckpt, "--data.init_args.stream", str(stream).lower(),
                    "--data.init_args.test_kinds", kinds,
                    "--data.init_args.test_levels", "[1,2]",
                    "--data.init_args.batch_size", "16"])  # fmt: skip


def test_streaming_and_in_memory_give_the_same_test_error(workdir):
    """One checkpoint tested through both paths: equal errors on every set, noise and combined
    U(0,4) included (each image draws from the same per-image seed in memory and in a stream),
    and the same on every streaming run (the distorted test set is not stored)."""
    root = make_folder(workdir / "shapes", train_per_class=30, val_per_class=20)
    pre = run_cli(["fit", "--config", str(LENET), "--data.init_args.root", str(root),
                   "--trainer.max_epochs", "2", "--data.init_args.stream", "true",
                   "--data.init_args.batch_size", "20"])  # fmt: skip
    assert pre.status == "FINISHED"
    kinds = "[clean,defocus,noise,combined]"
    mem, stream = _test(root, pre.run_id, False, kinds), _test(root, pre.run_id, True, kinds)
    again = _test(root, pre.run_id, True, kinds)
    assert len(mem.test_errors) == 7  # clean + 3 kinds x levels 1, 2
    assert mem.test_errors == stream.test_errors
    assert stream.test_errors == again.test_errors
    run = MlflowClient().get_run(stream.run_id)
    names = {d.dataset.name for d in run.inputs.dataset_inputs}
    assert "shapes/test/noise/L2" in names and "shapes/test/defocus/L1" in names
    assert set(mem.metrics) == set(stream.metrics)


@pytest.mark.slow
def test_ddp_two_processes_stream_shards(workdir):
    """2 CPU ranks (gloo) read disjoint halves of the shards (litdata's sharding): one run."""
    root = make_folder(workdir / "shapes", train_per_class=20, val_per_class=10)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}")
    store_client(env["MLFLOW_TRACKING_URI"])
    cmd = [sys.executable, "-m", "robust_ft", "fit", "--config", str(LENET),
           "--data.init_args.root", str(root), "--data.init_args.stream", "true",
           "--data.init_args.batch_size", "10", "--trainer.max_epochs", "2",
           "--trainer.accelerator", "cpu", "--trainer.devices", "2",
           "--trainer.strategy", "ddp", "--tracking.log_model", "false",
           "--data.init_args.distortion.kind", "noise",
           "--data.init_args.distortion.level", "1"]  # fmt: skip
    p = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = MlflowClient(env["MLFLOW_TRACKING_URI"]).search_runs(
        [
            MlflowClient(env["MLFLOW_TRACKING_URI"])
            .get_experiment_by_name("lenet5-shapes")
            .experiment_id
        ]
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert "test/err/noise/L1" in runs[0].data.metrics


@pytest.mark.slow
def test_ddp_ranks_read_disjoint_samples(workdir):
    """2 CPU ranks (gloo), every training sample recorded by the rank that got it: in each epoch
    the ranks' samples are disjoint and they cover the split, but for what litdata's drop_last
    (on under DDP: "all processes return the same amount of data") leaves out; here that is
    N mod (ranks x batch): every rank gets N // (ranks x batch) whole batches."""
    root = make_folder(workdir / "shapes", train_per_class=20, val_per_class=4)
    n, batch, ranks = 3 * 20 - 13, 5, 2  # 47 training images, 13 held out for validation
    record = workdir / "record"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}")
    store_client(env["MLFLOW_TRACKING_URI"])
    cmd = [sys.executable, str(RECORDING), "fit", *_recording(root, record),
           "--data.init_args.val_split", "13", "--data.init_args.batch_size", str(batch),
           "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu",
           "--trainer.devices", str(ranks), "--trainer.strategy", "ddp",
           "--tracking.test_after_fit", "false"]  # fmt: skip
    p = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    hashed = [ln for ln in p.stderr.splitlines() if ln.startswith("hashing ")]
    assert len(hashed) == 2, hashed  # train/ and val/ once, for both ranks (the digest cache)
    per_rank = n // (ranks * batch) * batch  # 20: 7 images left out
    for epoch in (0, 1):
        seen = [[i for e, _, i, _ in read(record, "train", r) if e == epoch] for r in range(ranks)]
        assert [len(s) for s in seen] == [per_rank] * ranks, (epoch, seen)
        a, b = map(set, seen)
        assert len(a) == len(b) == per_rank, (epoch, seen)  # no image twice on a rank
        assert not a & b, (epoch, sorted(a & b))
        assert a | b <= set(range(n)) and len(a | b) == n - n % (ranks * batch)


def _by_image(record: Path, split: str) -> dict[tuple[int, int], dict[int, str]]:
    """(epoch, test set) -> {index in the split: sha1 of the image the model got}."""
    out: dict[tuple[int, int], dict[int, str]] = {}
    for epoch, test_set, index, sha in read(record, split):
        out.setdefault((epoch, test_set), {})[index] = sha
    return out


def test_training_draws_per_epoch_or_fixed_and_the_same_test_set(workdir):
    """Noise L2 on streamed data, 2 epochs: with ``cache: false`` every training image gets new
    draws in epoch 1, with ``cache: true`` the same as in epoch 0; the distorted test set is the
    same in both runs (same seed), and distorted (it differs from the clean test set)."""
    root = make_folder(workdir / "shapes", train_per_class=6, val_per_class=3)
    runs = {}
    for cache in ("false", "true"):
        res = run_cli(["fit", *_recording(root, workdir / f"cache-{cache}"),
                       "--data.init_args.cache", cache, "--data.init_args.batch_size", "4",
                       "--data.init_args.distortion.kind", "noise",
                       "--data.init_args.distortion.level", "2",
                       "--data.init_args.test_kinds", "[clean,noise]",
                       "--data.init_args.test_levels", "[2]",
                       "--trainer.max_epochs", "2"])  # fmt: skip
        assert res.status == "FINISHED"
        runs[cache] = {s: _by_image(workdir / f"cache-{cache}", s) for s in ("train", "test")}
    n_train = 18 - 2  # val_split 0.1 of 18
    for cache, train in ((c, r["train"]) for c, r in runs.items()):
        assert set(train[0, 0]) == set(train[1, 0]) == set(range(n_train)), cache
    fresh, fixed = runs["false"]["train"], runs["true"]["train"]
    assert all(fresh[0, 0][i] != fresh[1, 0][i] for i in range(n_train))
    assert fixed[0, 0] == fixed[1, 0]
    assert fresh[0, 0] != fixed[0, 0]  # per-epoch seeds are not the fixed ones
    fresh_test, fixed_test = ({s: v for (_, s), v in r["test"].items()} for r in runs.values())
    assert fresh_test == fixed_test and set(fresh_test) == {0, 1}
    clean, noisy = fresh_test[0], fresh_test[1]
    assert set(clean) == set(noisy) == set(range(9))
    assert all(clean[i] != noisy[i] for i in clean)


def test_checkpoint_holds_the_stream_position(workdir):
    """A checkpoint saved mid-epoch holds the StreamingDataLoader's state (what a resume reads)."""
    root = make_folder(workdir / "shapes", train_per_class=20, val_per_class=5)
    res = run_cli(["fit", "--config", str(LENET), "--data.init_args.root", str(root),
                   "--data.init_args.stream", "true", "--data.init_args.batch_size", "10",
                   "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
                   "--tracking.log_model", "false"])  # fmt: skip
    ckpt = torch.load(res.checkpoints["last"], weights_only=False, map_location="cpu")
    state = str(ckpt["loops"]["fit_loop"]["state_dict"])
    assert "num_samples_yielded" in state, state[:2000]


class _StopAt(Callback):
    """Raise Lightning's SIGTERM exception after ``n`` training batches (a kill mid-epoch)."""

    def __init__(self, n: int):
        self.n = n

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.n:
            raise SIGTERMException()


class _Count(Callback):
    """Images read per epoch, and the sum of their losses."""

    def __init__(self):
        self.samples: dict[int, int] = {}
        self.loss_sum: dict[int, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        e = trainer.current_epoch
        self.samples[e] = self.samples.get(e, 0) + len(batch[1])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        e = trainer.current_epoch
        self.loss_sum[e] = self.loss_sum.get(e, 0.0) + outputs["loss"].item() * len(batch[1])


def test_killed_mid_epoch_resumes_mid_epoch(workdir):
    """SIGTERM after 3 of 11 batches: the same command resumes the run from interrupted.ckpt and
    reads only the rest of the epoch (the StreamingDataLoader's state), then the next epoch."""
    root = make_folder(workdir / "shapes", train_per_class=40, val_per_class=5)  # 108 train
    args = ["fit", "--config", str(LENET), "--data.init_args.root", str(root),
            "--data.init_args.stream", "true", "--data.init_args.batch_size", "10",
            "--trainer.max_epochs", "2", "--tracking.log_model", "false"]  # fmt: skip
    before = _Count()
    with pytest.raises(BaseException):  # noqa: B017 - Lightning re-raises the SIGTERM exception
        run_cli(args, callbacks=[before, _StopAt(3)])
    (killed,) = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name("lenet5-shapes").experiment_id]
    )
    assert killed.info.status in ("KILLED", "FAILED")
    count = _Count()
    res = run_cli(args, callbacks=[count])
    assert res.run_id == killed.info.run_id and res.status == "FINISHED"
    assert count.samples == {0: 108 - 30, 1: 108}
    # the first epoch's train/loss covers all of it: the checkpoint carried the killed part's sum
    history = MlflowClient().get_metric_history(res.run_id, "train/loss")
    first = (before.loss_sum[0] + count.loss_sum[0]) / 108
    assert history[0].value == pytest.approx(first, rel=1e-5)
