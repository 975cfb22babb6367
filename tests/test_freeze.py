"""First-N fine-tuning: which layers train, and what a real Trainer does with them."""

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from robust_ft.callbacks import FirstNFinetuning, freeze_after
from robust_ft.models import build


@pytest.mark.parametrize("name", ["lenet5", "cifar10_quick", "alexnet"])
def test_freeze_after_trains_a_prefix(name):
    net = build(name)
    names = net.param_layer_names()
    for first_n in [len(names), 0, 1, len(names) - 1]:  # also re-freezes and re-thaws
        assert freeze_after(net, first_n) == names[:first_n]
        for i, layer in enumerate(net.param_layers()):
            assert all(p.requires_grad == (i < first_n) for p in layer.parameters())


@pytest.mark.parametrize("first_n", [-1, 5, 2.0, True])
def test_freeze_after_rejects_out_of_range(first_n):
    with pytest.raises(ValueError, match=r"LeNet5 has 4 layers.*use 0 \(evaluate only\) to 4"):
        freeze_after(build("lenet5"), first_n)


def test_callback_rejects_negative_n():
    with pytest.raises(ValueError, match="first_n must be an integer >= 0"):
        FirstNFinetuning(-1)


class Classifier(pl.LightningModule):
    """The smallest LightningModule shaped like robust-ft's: the network lives in `self.net`."""

    def __init__(self):
        super().__init__()
        self.net = build("lenet5")

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/loss", F.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 1, 28, 28, generator=g), torch.arange(16) % 10)
    return DataLoader(data, batch_size=4)


def trainer(callback, **kwargs) -> pl.Trainer:
    options = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return pl.Trainer(callbacks=[callback], **options | kwargs)


def layer_params(module: Classifier, first_n: int) -> tuple[list, list]:
    """(trained, frozen) parameters of the network for a first-N split."""
    layers = module.net.param_layers()
    trained = [p for layer in layers[:first_n] for p in layer.parameters()]
    frozen = [p for layer in layers[first_n:] for p in layer.parameters()]
    return trained, frozen


@pytest.mark.parametrize("first_n", [1, 3, 4])
def test_fit_moves_only_the_first_n_layers(first_n):
    torch.manual_seed(0)
    module = Classifier()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    callback = FirstNFinetuning(first_n)
    t = trainer(callback, max_steps=2)
    t.fit(module, loader())

    trained, frozen = layer_params(module, first_n)
    after = module.state_dict()
    names = module.net.param_layer_names()
    for key, value in after.items():
        layer = key.split(".")[1]  # net.<layer>.weight
        moved = not torch.equal(before[key], value)
        assert moved == (names.index(layer) < first_n), key
    assert callback.trainable == names[:first_n]
    # the optimizer holds exactly the trained parameters, also after BaseFinetuning's hooks
    (optimizer,) = t.optimizers
    held = [p for group in optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in held} == {id(p) for p in trained} and len(held) == len(trained)
    assert not any(p.requires_grad for p in frozen)
    assert all(p.grad is None for p in frozen)
    # BaseFinetuning stored the groups by name on the first epoch: trained layers only
    stored = callback.state_dict()["internal_optimizer_metadata"][0]
    assert sorted(n for g in stored for n in g["params"]) == sorted(
        f"net.{k}" for k, v in module.net.named_parameters() if v.requires_grad
    )


def test_resume_keeps_the_split(tmp_path):
    torch.manual_seed(0)
    first = Classifier()
    initial = {k: v.clone() for k, v in first.state_dict().items()}
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    t = pl.Trainer(
        callbacks=[FirstNFinetuning(2), ckpt],
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    t.fit(first, loader())

    resumed = Classifier()  # fresh weights, all trainable, until the checkpoint is restored
    t2 = trainer(FirstNFinetuning(2), max_epochs=2)  # BaseFinetuning restores its param groups
    t2.fit(resumed, loader(), ckpt_path=tmp_path / "last.ckpt")
    trained, frozen = layer_params(resumed, 2)
    held = [p for group in t2.optimizers[0].param_groups for p in group["params"]]
    assert {id(p) for p in held} == {id(p) for p in trained}
    for key in ["net.fc1.weight", "net.fc2.bias"]:
        assert torch.equal(resumed.state_dict()[key], initial[key])
    assert not torch.equal(resumed.state_dict()["net.conv1.weight"], initial["net.conv1.weight"])
    assert t2.current_epoch == 2

    with pytest.raises(ValueError, match="different first-N split than first_n=3"):
        trainer(FirstNFinetuning(3), max_epochs=3).fit(
            Classifier(), loader(), ckpt_path=tmp_path / "last.ckpt"
        )


def test_first_0_evaluates_but_refuses_to_fit():
    module = Classifier()
    trainer(FirstNFinetuning(0)).test(module, loader())
    assert not any(p.requires_grad for p in module.parameters())
    with pytest.raises(ValueError, match="first_n=0 trains nothing"):
        trainer(FirstNFinetuning(0), max_steps=1).fit(Classifier(), loader())


def test_out_of_range_n_names_the_layer_count():
    with pytest.raises(ValueError, match="LeNet5 has 4 layers"):
        trainer(FirstNFinetuning(5), max_steps=1).fit(Classifier(), loader())


def test_module_without_net_is_refused():
    class Bare(Classifier):
        def __init__(self):
            pl.LightningModule.__init__(self)
            self.model = build("lenet5")

    with pytest.raises(TypeError, match=r"Bare.net"):
        trainer(FirstNFinetuning(1), max_steps=1).fit(Bare(), loader())
