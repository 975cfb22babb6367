"""DataModules: splits, subsets, the test grid, the cache, online mode, IDX and ImageFolder input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robust_ft.data.datamodules import (
    Distortion,
    FashionMNISTDataModule,
    MNISTDataModule,
    SyntheticDataModule,
)
from robust_ft.data.idx import IDXError, read_idx, write_idx
from robust_ft.data.imagefolder import ImageFolderDataModule
from robust_ft.data.sources import DatasetNotFoundError


def _dm(tmp_path, **kw):
    kw.setdefault("root", str(tmp_path))
    kw.setdefault("n_train", 200)
    kw.setdefault("n_test", 50)
    return SyntheticDataModule(**kw)


def _setup(dm):
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_splits_subset_and_determinism(tmp_path):
    dm = _setup(_dm(tmp_path, val_split=0.25, train_subset=100, batch_size=32))
    assert len(dm._data["train"][0]) == 100
    assert len(dm._data["val"][0]) == 50
    dm2 = _setup(_dm(tmp_path, val_split=0.25, train_subset=100, batch_size=32))
    assert torch.equal(dm._data["train"][0].labels, dm2._data["train"][0].labels)
    batches = list(dm.train_dataloader())
    assert [len(b[1]) for b in batches] == [32, 32, 32, 4]
    x, y = dm.on_after_batch_transfer(batches[0], 0)
    assert x.dtype == torch.float32 and x.shape == (32, 1, 28, 28)
    assert abs(float(x.mean())) < 1.5  # normalised


def test_test_grid_tags_and_distorted_sets(tmp_path):
    dm = _setup(
        _dm(tmp_path, distortion=Distortion("defocus", 2), test_kinds=["clean", "defocus", "noise"],
            test_levels=[0, 2])
    )  # fmt: skip
    # level 0 of every kind is the clean set: tested once, logged under each tag
    assert dm.test_tags == ["clean/L0", "defocus/L2", "noise/L2"]
    assert dm.test_aliases == {"clean/L0": ["defocus/L0", "noise/L0"]}
    # a grid without "clean" still has its clean column: level 0 is named clean/L0
    grid = _dm(tmp_path, test_kinds=["motion", "defocus"], test_levels=[0, 2])
    assert grid.test_tags == ["clean/L0", "motion/L2", "defocus/L2"]
    assert grid.test_aliases == {"clean/L0": ["motion/L0", "defocus/L0"]}
    sets = dm._data["test"]
    clean = sets[0].images
    assert not torch.equal(sets[1].images, clean)
    # training images are distorted too, with the same kernel as the test grid's defocus/L2
    assert not torch.equal(
        dm._data["train"][0].images, _setup(_dm(tmp_path))._data["train"][0].images
    )
    assert len(dm.test_dataloader()) == 3


def test_cache_is_written_once_and_reused(tmp_path, monkeypatch):
    import robust_ft.data.distortions as D

    dm = _setup(_dm(tmp_path, distortion=Distortion("motion", 2)))
    files = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(files) >= 2  # train/val and test
    first = dm._data["train"][0].images.clone()

    def boom(*a, **k):
        raise AssertionError("cache miss: distortion regenerated")

    monkeypatch.setattr(D, "distort_array", boom)
    dm2 = _setup(_dm(tmp_path, distortion=Distortion("motion", 2)))
    assert torch.equal(dm2._data["train"][0].images, first)


def test_raw_data_and_digests_are_read_once_per_split(tmp_path, monkeypatch):
    """prepare_data + setup in one process read each raw split once and digest each split's
    images once for all its test sets; setup alone (a DDP rank other than 0) reads them itself."""
    import robust_ft.data.datamodules as D

    reads, digests = [], []
    real_load, real_digest = SyntheticDataModule.load_split, D.array_digest
    monkeypatch.setattr(SyntheticDataModule, "load_split",
                        lambda self, split: reads.append(split) or real_load(self, split))  # fmt: skip
    monkeypatch.setattr(D, "array_digest", lambda *a: digests.append(len(a)) or real_digest(*a))
    grid = {"test_kinds": ["motion", "noise"], "test_levels": [0, 1, 2]}
    dm = _setup(_dm(tmp_path, distortion=Distortion("motion", 2), **grid))
    assert sorted(reads) == ["test", "train"]
    # images: train, val and test once each, shared by prepare_data and setup; (images, labels):
    # the three split_digests; never one per distorted test set (4 here)
    assert digests.count(1) == 3 and digests.count(2) == 3, digests
    assert dm._prepared is None  # setup took prepare_data's copy over and let it go
    reads.clear()
    rank1 = _dm(tmp_path, distortion=Distortion("motion", 2), **grid)
    rank1.setup("fit")
    assert sorted(reads) == ["test", "train"]
    for split in ("train", "val", "test"):
        for a, b in zip(rank1._data[split], dm._data[split], strict=True):
            assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_online_mode_distorts_afresh_each_pass(tmp_path):
    dm = _setup(_dm(tmp_path, distortion=Distortion("noise", 3), cache=False, batch_size=16))
    ds = dm._data["train"][0]
    a, b = ds[0][0], ds[0][0]
    assert a.shape == (1, 28, 28) and a.dtype == torch.uint8
    assert not torch.equal(a, b)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 28, 28)
    assert not list((tmp_path / "cache").glob("*.npy"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(distortion=Distortion("blurry", 1)), "unknown distortion kind 'blurry'"),
        (dict(distortion=Distortion("defocus", -1)), "negative|>= 0"),
        (dict(distortion=Distortion("defocus", float("nan"))), "NaN|nan|finite"),
        (dict(train_subset=0), "train_subset"),
        (dict(val_split=1.5), "val_split"),
        (dict(test_levels=[1]), "test_kinds"),
        (dict(batch_size=0), "batch_size"),
        (dict(distort_device="gpu0"), "not a device; use auto, cpu, cuda or cuda:N"),
        (dict(distort_device="meta"), "distortions run on auto, cpu or cuda"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _dm(tmp_path, **kwargs)


def _fake_idx_tree(root, folder="MNIST", n=40):
    rng = np.random.default_rng(0)
    raw = root / folder / "raw"
    for split, count in (("train", n), ("t10k", n // 2)):
        write_idx(raw / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28)))
        write_idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, (count,)))
    return raw


def test_mnist_from_idx_files(tmp_path):
    _fake_idx_tree(tmp_path)
    dm = _setup(MNISTDataModule(root=str(tmp_path), val_split=0.1))
    assert len(dm._data["train"][0]) == 36 and len(dm._data["test"][0]) == 20


def test_missing_dataset_message(tmp_path):
    dm = MNISTDataModule(root=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError, match="MNIST train split not found.*IDX files"):
        dm.prepare_data()


def test_fashion_mnist_env_override(tmp_path, monkeypatch):
    raw = _fake_idx_tree(tmp_path / "elsewhere", folder="fm")
    monkeypatch.setenv("ROBUST_FT_FASHION_MNIST", str(raw))
    dm = _setup(FashionMNISTDataModule(root=str(tmp_path / "empty")))
    assert len(dm._data["test"][0]) == 20


def test_corrupt_and_truncated_idx(tmp_path):
    bad = tmp_path / "bad-idx"
    bad.write_bytes(b"not an idx file at all")
    with pytest.raises(IDXError, match="bad magic"):
        read_idx(bad)
    good = write_idx(tmp_path / "x-idx", np.zeros((10, 4, 4), np.uint8))
    good.write_bytes(good.read_bytes()[:-7])
    with pytest.raises(IDXError, match="truncated"):
        read_idx(good)


def _png_tree(root, sizes=((40, 30), (30, 50))):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            d = root / split / c
            d.mkdir(parents=True)
            for i, (w, h) in enumerate(sizes):
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                    d / f"{i}.png"
                )


def test_imagefolder_decodes_resizes_and_caches(tmp_path):
    _png_tree(tmp_path / "tree")
    dm = ImageFolderDataModule(root=str(tmp_path / "tree"), resize=36, crop=32, val_split=0)
    assert dm.num_classes == 2 and dm.image_shape == (3, 32, 32)
    _setup(dm)
    assert dm._data["test"][0].images.shape == (4, 3, 32, 32)
    assert sorted(dm._data["train"][0].labels.tolist()) == [0, 0, 1, 1]


def test_imagefolder_rejects_non_image(tmp_path):
    _png_tree(tmp_path / "tree")
    (tmp_path / "tree" / "train" / "cat" / "notes.txt").write_text("hello")
    dm = ImageFolderDataModule(root=str(tmp_path / "tree"), resize=36, crop=32)
    with pytest.raises(ValueError, match="notes.txt is not an image file"):
        dm.prepare_data()


def test_imagefolder_missing_tree(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="no train/ directory"):
        ImageFolderDataModule(root=str(tmp_path / "none"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_distort_device_cuda_without_a_gpu_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match="sees no CUDA GPU; use auto or cpu"):
        _dm(tmp_path, distort_device="cuda")


def test_batches_are_pinned_only_for_a_gpu(tmp_path):
    """pin_memory (on by default) pins nothing when the Trainer runs on the CPU."""
    import lightning as L

    dm = _setup(_dm(tmp_path))
    assert dm.pin_memory and dm.train_dataloader().pin_memory is False  # no trainer yet
    dm.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False)
    assert dm.train_dataloader().pin_memory is False
    if torch.cuda.is_available():
        dm.trainer = L.Trainer(accelerator="gpu", devices=1, logger=False)
        assert dm.train_dataloader().pin_memory is True


def test_normalisation_constants_are_made_once_per_device(tmp_path):
    dm = _dm(tmp_path)
    dm.prepare_data()
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    a, _ = dm.on_after_batch_transfer((x, y), 0)
    first = dm._moments(x.device)
    b, _ = dm.on_after_batch_transfer((x, y), 0)
    assert dm._moments(x.device)[0] is first[0]
    torch.testing.assert_close(a, b)
    mean, std = torch.tensor(dm.info.mean), torch.tensor(dm.info.std)
    torch.testing.assert_close(
        a, (x.float() / 255 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    )
