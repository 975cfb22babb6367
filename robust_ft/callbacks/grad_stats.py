"""Log the paper's mean gradient variance (Eq. 1-2, Fig. 8) of chosen layers at test time."""

from functools import partial

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from robust_ft.analysis import gradient_variance


class GradientVarianceCallback(Callback):
    """Log `gradvar/<layer>/<tag>`: mean over images and channels of each layer output's v_fm.

    ``layers=None`` hooks the model's ``default_gradvar_layer`` (conv2 of lenet5, conv3 of
    cifar10_quick and alexnet). The hooked output is the conv's, before its ReLU. One value per
    test dataloader; its tag is ``trainer.datamodule.test_tags[i]`` when the datamodule has
    them, else ``dl<i>``. Sums and counts are reduced across ranks before dividing, so DDP
    gives the mean over all images. The values are also kept in ``results``.
    """

    def __init__(self, layers: list[str] | None = None) -> None:
        super().__init__()
        self.layers = layers
        self.results: dict[str, float] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._names: list[str] = []
        self._sums = self._counts = torch.zeros(0)
        self._dataloader_idx = 0

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Hook the layers and zero the per-dataloader sums."""
        net = pl_module.net
        default = [type(net).default_gradvar_layer]
        self._names = list(self.layers) if self.layers is not None else default
        num_dataloaders = len(trainer.num_test_batches)
        dtype = torch.float32 if pl_module.device.type == "mps" else torch.float64
        shape = (num_dataloaders, len(self._names))
        self._sums = torch.zeros(shape, dtype=dtype, device=pl_module.device)
        self._counts = torch.zeros(shape, dtype=dtype, device=pl_module.device)
        self.results = {}
        self._remove_hooks()
        for j, name in enumerate(self._names):
            hook = partial(self._accumulate, j, name)
            self._handles.append(_layer(net, name).register_forward_hook(hook))

    def on_test_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: object,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Remember which test set the coming forward passes belong to."""
        self._dataloader_idx = dataloader_idx

    def _accumulate(self, j: int, name: str, module: nn.Module, inputs: tuple, output: object):
        """Forward hook: add this batch's per-(image, channel) variances to the running sum."""
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            raise ValueError(
                f"gradient variance needs (N, C, H, W) maps; layer {name!r} gave "
                f"{getattr(output, 'shape', type(output).__name__)}"
            )
        v = gradient_variance(output)
        self._sums[self._dataloader_idx, j] += v.sum()
        self._counts[self._dataloader_idx, j] += v.numel()

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Reduce sums and counts over ranks and log their ratio per layer and test set."""
        sums = trainer.strategy.reduce(self._sums.clone(), reduce_op="sum")
        counts = trainer.strategy.reduce(self._counts.clone(), reduce_op="sum")
        for i, group in enumerate(tag_groups(trainer, len(sums))):
            for j, layer in enumerate(self._names):
                if counts[i, j] > 0:
                    value = (sums[i, j] / counts[i, j]).item()
                    for tag in group:
                        key = f"gradvar/{layer}/{tag}"
                        self.results[key] = value
                        # identical on every rank already; sync_dist only keeps DDP from warning
                        pl_module.log(key, value, sync_dist=True, add_dataloader_idx=False)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Remove the hooks."""
        self._remove_hooks()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Remove the hooks when a run dies half-way."""
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        """Detach every forward hook this callback registered."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _layer(net: nn.Module, name: str) -> nn.Module:
    """The submodule `name` of `net`, or a ValueError listing the layers there are."""
    try:
        return net.get_submodule(name)
    except AttributeError:
        known = ", ".join(net.param_layer_names())
        raise ValueError(f"{type(net).__name__} has no layer {name!r}; it has {known}") from None


def _tags(trainer: pl.Trainer, num_dataloaders: int) -> list[str]:
    """Metric suffix per test dataloader: the datamodule's `test_tags`, else dl0, dl1, ..."""
    tags = getattr(trainer.datamodule, "test_tags", None)
    if tags is None:
        return [f"dl{i}" for i in range(num_dataloaders)]
    if len(tags) != num_dataloaders:
        raise ValueError(
            f"datamodule.test_tags has {len(tags)} tags for {num_dataloaders} test dataloaders"
        )
    return list(tags)


def tag_groups(trainer: pl.Trainer, num_dataloaders: int) -> list[list[str]]:
    """Per test dataloader, every tag its results are logged under: its own, then its aliases
    (the datamodule's ``test_aliases``: level 0 of every kind is one clean test set)."""
    aliases = getattr(trainer.datamodule, "test_aliases", None) or {}
    return [[tag, *aliases.get(tag, [])] for tag in _tags(trainer, num_dataloaders)]
