"""Gradient variance (paper Eq. 1-2): the pure function against scipy, and the test-time callback."""

import subprocess
import sys
import textwrap
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch.utils.data import DataLoader, TensorDataset

from robust_ft.analysis import gradient_variance
from robust_ft.callbacks import GradientVarianceCallback
from robust_ft.models import build

SX = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=np.float64) / 4


def scipy_gradient_variance(maps: np.ndarray) -> np.ndarray:
    """Eq. 1-2 one map at a time: correlate with zero padding, magnitude, var with N-1."""
    out = np.empty(maps.shape[:2])
    for i, j in np.ndindex(*out.shape):
        gx = ndimage.correlate(maps[i, j], SX, mode="constant", cval=0.0)
        gy = ndimage.correlate(maps[i, j], SX.T, mode="constant", cval=0.0)
        out[i, j] = np.sqrt(gx**2 + gy**2).var(ddof=1)
    return out


@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (2, 3, 5, 11), (1, 2, 13, 4), (2, 1, 2, 1)])
def test_matches_scipy(shape):
    maps = np.random.default_rng(0).normal(size=shape) * 3 + 1
    expected = scipy_gradient_variance(maps)
    v64 = gradient_variance(torch.from_numpy(maps))
    assert v64.shape == shape[:2] and v64.dtype == torch.float64
    np.testing.assert_allclose(v64.numpy(), expected, rtol=1e-12, atol=1e-12)
    v32 = gradient_variance(torch.from_numpy(maps).float())
    np.testing.assert_allclose(v32.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_edges_are_not_wrapped_or_flipped():
    ramp = np.tile(np.arange(6.0) ** 2, (5, 1))[None, None]  # horizontal, non-linear ramp
    np.testing.assert_allclose(
        gradient_variance(torch.from_numpy(ramp)).numpy(), scipy_gradient_variance(ramp)
    )


def test_blur_lowers_the_variance():
    sharp = np.random.default_rng(1).uniform(0, 255, size=(4, 3, 32, 32))
    blurred = ndimage.gaussian_filter(sharp, sigma=(0, 0, 2, 2))
    v_sharp = gradient_variance(torch.from_numpy(sharp))
    v_blurred = gradient_variance(torch.from_numpy(blurred))
    assert (v_blurred < v_sharp).all()


def test_half_precision_maps_are_measured_in_float32():
    maps = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(
        gradient_variance(maps.bfloat16()), gradient_variance(maps.bfloat16().float())
    )
    assert gradient_variance(maps.half()).dtype == torch.float32


@pytest.mark.parametrize("shape", [(3, 8, 8), (2, 3, 1, 1)])
def test_bad_shapes_are_refused(shape):
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)|at least 2 pixels"):
        gradient_variance(torch.zeros(shape))


# --- the callback, in a real Trainer.test -------------------------------------------------


class Classifier(pl.LightningModule):
    """The smallest LightningModule shaped like robust-ft's: the network lives in `self.net`."""

    def __init__(self, name: str = "cifar10_quick"):
        super().__init__()
        self.net = build(name)

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        self.log("test/loss", F.cross_entropy(self.net(x), y))


class TwoTestSets(pl.LightningDataModule):
    """Two test sets of different sizes (the last batches are partial), tagged like robust-ft's."""

    test_tags = ["clean/L0", "defocus/L2"]

    def __init__(self, shape=(3, 32, 32)):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.sets = [
            TensorDataset(torch.randn(n, *shape, generator=g) * s, torch.arange(n) % 10)
            for n, s in [(7, 1.0), (5, 3.0)]
        ]

    def test_dataloader(self):
        return [DataLoader(s, batch_size=3) for s in self.sets]


def direct_mean(net, layer: str, images: torch.Tensor) -> float:
    """Mean over images and channels of v_fm for `layer`'s output, computed in one pass."""
    outputs = []
    handle = net.get_submodule(layer).register_forward_hook(lambda m, i, o: outputs.append(o))
    with torch.no_grad():
        net(images)
    handle.remove()
    return gradient_variance(outputs[0].double()).mean().item()


def run_test(module, datamodule, callback):
    t = pl.Trainer(
        accelerator="cpu",
        devices=1,
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return t, t.test(module, datamodule=datamodule, verbose=False)


def test_callback_logs_the_mean_per_test_set():
    torch.manual_seed(0)
    module, data = Classifier(), TwoTestSets()
    callback = GradientVarianceCallback()
    t, results = run_test(module, data, callback)
    net = module.net.eval()
    for tag, dataset in zip(data.test_tags, data.sets, strict=True):
        key = f"gradvar/conv3/{tag}"
        expected = direct_mean(net, "conv3", dataset.tensors[0])
        assert callback.results[key] == pytest.approx(expected, rel=1e-6)
        assert t.callback_metrics[key].item() == pytest.approx(expected, rel=1e-6)
        assert results[0][key] == pytest.approx(expected, rel=1e-6)
    assert set(callback.results) == {"gradvar/conv3/clean/L0", "gradvar/conv3/defocus/L2"}
    assert not net.conv3._forward_hooks  # removed after the test


def test_callback_without_tags_and_with_chosen_layers():
    module = Classifier("lenet5")
    data = TwoTestSets(shape=(1, 28, 28))
    data.test_tags = None
    callback = GradientVarianceCallback(layers=["conv1", "conv2"])
    run_test(module, data, callback)
    assert sorted(callback.results) == [
        "gradvar/conv1/dl0",
        "gradvar/conv1/dl1",
        "gradvar/conv2/dl0",
        "gradvar/conv2/dl1",
    ]
    expected = direct_mean(module.net.eval(), "conv1", data.sets[1].tensors[0])
    assert callback.results["gradvar/conv1/dl1"] == pytest.approx(expected, rel=1e-6)


def test_callback_default_layer_of_lenet5_is_conv2():
    callback = GradientVarianceCallback()
    run_test(Classifier("lenet5"), TwoTestSets(shape=(1, 28, 28)), callback)
    assert sorted(callback.results) == ["gradvar/conv2/clean/L0", "gradvar/conv2/defocus/L2"]


@pytest.mark.parametrize("layers, message", [(["conv9"], "no layer 'conv9'"), (["fc1"], "fc1")])
def test_callback_refuses_layers_without_maps(layers, message):
    module = Classifier()
    with pytest.raises(ValueError, match=message):
        run_test(module, TwoTestSets(), GradientVarianceCallback(layers=layers))
    assert not any(m._forward_hooks for m in module.net.modules())


DDP_SCRIPT = """
import sys, torch, lightning.pytorch as pl
sys.path.insert(0, {tests!r})
from test_analysis import Classifier, TwoTestSets, direct_mean
from robust_ft.callbacks import GradientVarianceCallback

torch.manual_seed(0)
module, data, callback = Classifier(), TwoTestSets(), GradientVarianceCallback()
data.sets = [torch.utils.data.TensorDataset(*(t[:4] for t in s.tensors)) for s in data.sets]
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", callbacks=[callback],
                     logger=False, enable_progress_bar=False, enable_model_summary=False)
trainer.test(module, datamodule=data, verbose=False)
for tag, s in zip(data.test_tags, data.sets):
    key = f"gradvar/conv3/{{tag}}"
    expected = direct_mean(module.net.eval(), "conv3", s.tensors[0])
    assert abs(callback.results[key] / expected - 1) < 1e-6, (key, callback.results, expected)
    assert abs(trainer.callback_metrics[key].item() / expected - 1) < 1e-6
open(f"rank{{trainer.global_rank}}.ok", "w").close()
"""


@pytest.mark.slow
def test_callback_reduces_sums_across_ddp_ranks(tmp_path):
    """2 CPU processes, each seeing half of each test set (4 images: no sampler padding)."""
    script = tmp_path / "ddp_gradvar.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(tests=str(Path(__file__).parent))))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=240, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "rank0.ok").exists() and (tmp_path / "rank1.ok").exists()
