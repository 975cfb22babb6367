"""The paper's models: shapes, exact sizes, first-N layer order, pooling borders, AlexNet weights."""

import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision

from robust_ft.models import (
    MODELS,
    AlexNet,
    Cifar10Quick,
    LeNet5,
    build,
    input_shape,
    n_param_layers,
)

PAPER = {  # name: (class, parameter count, first-N layer names, classes)
    "lenet5": (LeNet5, 431_080, ["conv1", "conv2", "fc1", "fc2"], 10),
    "cifar10_quick": (Cifar10Quick, 145_578, ["conv1", "conv2", "conv3", "fc1", "fc2"], 10),
    "alexnet": (
        AlexNet,
        61_100_840,
        ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"],
        1000,
    ),
}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", PAPER)
def test_registry_size_and_layer_order(name):
    cls, count, layer_names, _ = PAPER[name]
    net = build(name)
    assert MODELS[name] is cls and type(net) is cls
    assert n_params(net) == count
    assert net.param_layer_names() == layer_names
    assert net.param_layers() == [getattr(net, n) for n in layer_names]
    assert sum(n_params(layer) for layer in net.param_layers()) == count  # nothing left out
    assert net.default_gradvar_layer in layer_names
    assert n_param_layers(name) == len(layer_names)  # known without building the network
    assert input_shape(name) == tuple(net.input_shape)


@pytest.mark.parametrize("name", PAPER)
def test_output_shape(name):
    cls, _, _, classes = PAPER[name]
    batch = 1 if name == "alexnet" else 3
    net = build(name).eval()
    with torch.no_grad():
        assert net(torch.randn(batch, *cls.input_shape)).shape == (batch, classes)
    small = build(name, num_classes=7).eval()
    with torch.no_grad():
        assert small(torch.randn(1, *cls.input_shape)).shape == (1, 7)


def test_build_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"'resnet'.*lenet5, cifar10_quick, alexnet"):
        build("resnet")


def test_cifar10_quick_reaches_4x4x64_before_fc():
    net = Cifar10Quick()
    sizes = []
    net.conv2.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[-2:]))
    net.conv3.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[-2:]))
    net.fc1.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[1:]))
    net(torch.randn(2, 3, 32, 32))
    assert sizes == [(16, 16), (8, 8), (64 * 4 * 4,)]


def matconvnet_pool(x: torch.Tensor, kind: str) -> torch.Tensor:
    """3x3 stride-2 pooling with MatConvNet's pad [0 1 0 1]: padding never enters a window."""
    padded = F.pad(x, (0, 1, 0, 1), value=float("nan"))
    windows = padded.unfold(2, 3, 2).unfold(3, 3, 2).flatten(-2)  # (N, C, H', W', 9)
    if kind == "max":
        return windows.nan_to_num(float("-inf")).amax(-1)
    return windows.nanmean(-1)


@pytest.mark.parametrize("size", [32, 16, 8])
def test_ceil_mode_pooling_matches_matconvnet_and_caffe(size):
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    avg = F.avg_pool2d(x, 3, 2, ceil_mode=True)
    assert avg.shape[-1] == size // 2
    torch.testing.assert_close(avg, matconvnet_pool(x, "avg"))
    torch.testing.assert_close(F.max_pool2d(x, 3, 2, ceil_mode=True), matconvnet_pool(x, "max"))
    # the border window averages its 2 in-image columns, not 3 with a zero
    assert torch.allclose(avg[..., 0, -1], x[..., 0:3, size - 2 :].mean((-2, -1)))


@pytest.fixture(scope="module")
def torchvision_alexnet(tmp_path_factory):
    """A torchvision AlexNet (random weights) and its state_dict saved as torchvision does."""
    torch.manual_seed(0)
    reference = torchvision.models.alexnet().eval()
    path = tmp_path_factory.mktemp("weights") / "alexnet-owt-7be5be79.pth"
    torch.save(reference.state_dict(), path)
    return reference, path


@pytest.fixture
def no_download(monkeypatch, tmp_path):
    """An empty torch hub cache and a network that fails."""

    def fail(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fail)
    return tmp_path / "hub" / "checkpoints"


def test_alexnet_loads_torchvision_weights_and_computes_the_same(torchvision_alexnet):
    reference, path = torchvision_alexnet
    net = AlexNet().load_pretrained(path).eval()
    x = torch.randn(1, 3, 64, 64)  # small input: the adaptive pool still gives 6x6
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x))
    assert torch.equal(net.fc7.weight, reference.classifier[4].weight)


def test_alexnet_finds_weights_in_the_hub_cache(torchvision_alexnet, no_download):
    reference, path = torchvision_alexnet
    no_download.mkdir(parents=True)
    (no_download / path.name).symlink_to(path)
    net = AlexNet().load_pretrained()
    assert torch.equal(net.conv1.weight, reference.features[0].weight)


def test_alexnet_without_weights_says_what_to_do(no_download, tmp_path):
    net = AlexNet()
    with pytest.raises(RuntimeError, match="could not download.*load_pretrained"):
        net.load_pretrained()
    with pytest.raises(RuntimeError, match="not in .*load_pretrained"):
        net.load_pretrained(download=False)
    with pytest.raises(RuntimeError, match="not found at .*missing.pth"):
        net.load_pretrained(tmp_path / "missing.pth")


def test_alexnet_for_own_classes_keeps_a_fresh_fc8(torchvision_alexnet):
    """num_classes != 1000 (own data): conv1..fc7 published, fc8 its own random init."""
    reference, path = torchvision_alexnet
    torch.manual_seed(0)
    fresh = AlexNet(num_classes=10)
    torch.manual_seed(0)
    net = AlexNet(num_classes=10).load_pretrained(path)
    assert torch.equal(net.fc7.weight, reference.classifier[4].weight)
    assert torch.equal(net.fc8.weight, fresh.fc8.weight) and net.fc8.out_features == 10


def test_alexnet_weights_with_the_wrong_shape_are_refused(torchvision_alexnet, tmp_path):
    weights = torch.load(torchvision_alexnet[1], weights_only=True)
    weights["features.0.weight"] = weights["features.0.weight"][:32]
    torch.save(weights, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match=r"conv1.weight has shape \(32, 3, 11, 11\)"):
        AlexNet().load_pretrained(tmp_path / "bad.pth")


@pytest.mark.parametrize("arch", ["lenet5", "cifar10_quick"])
def test_channels_last_classifier_computes_what_the_plain_layout_does(arch):
    """channels_last (the default) changes the memory layout, not the function or its gradient."""
    from robust_ft.models.classifier import ImageClassifier

    torch.manual_seed(0)
    nhwc = ImageClassifier(arch=arch)
    nchw = ImageClassifier(arch=arch, channels_last=False)
    nchw.load_state_dict(nhwc.state_dict())
    assert nhwc.net.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert not nchw.net.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(8, *build(arch).input_shape)
    y = torch.randint(0, 10, (8,))
    grads = []
    for model in (nhwc, nchw):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        grads.append(model.net.conv1.weight.grad)
    torch.testing.assert_close(nhwc(x), nchw(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("limits", [{}, {"max_steps": 3}])
def test_train_loss_is_the_epochs_sample_weighted_mean_loss(tmp_path, limits):
    """train/loss, summed per step and logged once, is the mean of the epoch's per-sample losses
    (the last batch is smaller); an epoch cut short by max_steps still logs its part."""
    import lightning as L

    from robust_ft.data.datamodules import SyntheticDataModule
    from robust_ft.models.classifier import ImageClassifier

    class Losses(L.Callback):
        def __init__(self):
            self.seen, self.logged = [], []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.seen.append((outputs["loss"].item(), len(batch[1])))

        def on_train_epoch_end(self, trainer, pl_module):  # runs before the module's hook
            self.logged.append(trainer.callback_metrics.get("train/loss"))

    dm = SyntheticDataModule(root=str(tmp_path), n_train=230, n_test=10, val_split=0, batch_size=50)
    cb = Losses()
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[cb], **limits,
    )  # fmt: skip
    trainer.fit(ImageClassifier(lr=0.01), datamodule=dm)
    assert len(cb.seen) == limits.get("max_steps", 5)
    expected = sum(loss * n for loss, n in cb.seen) / sum(n for _, n in cb.seen)
    assert trainer.callback_metrics["train/loss"].item() == pytest.approx(expected, rel=1e-5)
    if not limits:  # a whole epoch: the value is there before callbacks' on_train_epoch_end
        assert cb.logged[0].item() == pytest.approx(expected, rel=1e-5)
