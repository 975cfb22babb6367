"""First-N fine-tuning: train the first N parameterised layers, freeze the rest."""

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.optim import Optimizer


def freeze_after(net: nn.Module, first_n: int) -> list[str]:
    """Make layers [0, first_n) of `net.param_layers()` trainable, freeze the rest; their names."""
    names = net.param_layer_names()
    if isinstance(first_n, bool) or not isinstance(first_n, int) or not 0 <= first_n <= len(names):
        raise ValueError(
            f"first_n={first_n!r} is out of range: {type(net).__name__} has {len(names)} "
            f"layers with parameters ({', '.join(names)}); use 0 (evaluate only) to "
            f"{len(names)} (re-train)"
        )
    net.requires_grad_(False)
    for layer in net.param_layers()[:first_n]:
        layer.requires_grad_(True)
    return names[:first_n]


class FirstNFinetuning(BaseFinetuning):
    """Train `pl_module.net`'s first N layers with parameters (paper's first-N), freeze the rest.

    Freezing happens in the ``setup`` hook, before ``configure_optimizers``, so an optimizer
    built from ``[p for p in self.parameters() if p.requires_grad]`` holds only the trained
    layers. Nothing is unfrozen later. first-N trains a prefix, so backward still has to run
    through the frozen suffix to reach it; only the frozen layers' weight gradients (and their
    optimizer state) are saved, there is no part of the graph to skip.
    """

    def __init__(self, first_n: int) -> None:
        super().__init__()
        if isinstance(first_n, bool) or not isinstance(first_n, int) or first_n < 0:
            raise ValueError(f"first_n must be an integer >= 0, got {first_n!r}")
        self.first_n = first_n
        self.trainable: list[str] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Freeze (every stage); refuse to fit with nothing to train."""
        if stage == "fit" and self.first_n == 0:
            raise ValueError("first_n=0 trains nothing: evaluate with validate/test instead of fit")
        super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        """Freeze every parameterised layer of `pl_module.net` from index first_n on."""
        net = getattr(pl_module, "net", None)
        if not hasattr(net, "param_layers"):
            raise TypeError(
                f"FirstNFinetuning needs the network at {type(pl_module).__name__}.net with a "
                "param_layers() method (a model from robust_ft.models)"
            )
        self.trainable = freeze_after(net, self.first_n)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """On resume, refuse a checkpoint whose optimizer holds a different first-N split."""
        # BaseFinetuning would silently put the checkpoint's param groups back in the optimizer
        stored = self._internal_optimizer_metadata if self._restarting else {}
        wanted = sorted(n for n, p in pl_module.named_parameters() if p.requires_grad)
        for groups in stored.values():
            held = sorted(name for group in groups for name in group["params"])
            if held != wanted:
                raise ValueError(
                    f"the checkpoint was trained with a different first-N split than "
                    f"first_n={self.first_n} (its optimizer holds {held}); resume with the "
                    "same first_n, or load its weights and start a new fit"
                )
        super().on_fit_start(trainer, pl_module)

    def finetune_function(
        self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer
    ) -> None:
        """No unfreezing schedule: the first-N split holds for the whole run."""
