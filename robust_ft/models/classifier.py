"""One LightningModule for all three paper models: SGD with the paper's schedules, error rates."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from robust_ft.models import build
from robust_ft.settings import is_finetune, method_name  # noqa: F401 (method_name: re-export)

PARTIAL_LOSS = "robust_ft_partial_train_loss"
"""checkpoint key: (sum, images) of ``train/loss`` in an epoch cut by the checkpoint"""


@dataclass
class Schedule:
    """An SGD learning-rate schedule (see ``ImageClassifier``); ``max_epochs`` sets the trainer's."""

    lr: float = 1e-5
    lr_schedule: Literal["constant", "step", "logspace"] = "constant"
    lr_milestones: list[int] | None = None
    lr_gamma: float = 0.1
    lr_final: float | None = None
    max_epochs: int | None = None


class ImageClassifier(L.LightningModule):
    """A paper CNN (``arch``) trained with SGD; logs ``train/loss``, ``val/err``, ``test/err/...``."""

    # Over 50 lines for its Args docstring, which LightningCLI shows as the options' help.
    def __init__(
        self,
        arch: str = "lenet5",
        num_classes: int = 10,
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_schedule: Literal["constant", "step", "logspace"] = "constant",
        lr_milestones: list[int] | None = None,
        lr_gamma: float = 0.1,
        lr_final: float | None = None,
        first_n: int | None = None,
        finetune: Schedule | None = None,
        init_from: str | None = None,
        pretrained: bool = False,
        channels_last: bool = True,
    ):
        """A classifier.

        Args:
            arch: network name (lenet5, cifar10_quick, alexnet).
            num_classes: classes of the dataset (linked from the DataModule by the CLI).
            lr: initial learning rate.
            momentum: SGD momentum.
            weight_decay: SGD weight decay.
            lr_schedule: ``constant``; ``step`` (times ``lr_gamma`` at each of ``lr_milestones``
                epochs: CIFAR10-quick); ``logspace`` (log-spaced per epoch from ``lr`` to
                ``lr_final`` over ``max_epochs``: AlexNet).
            lr_milestones: epochs at which the step schedule multiplies the rate by ``lr_gamma``.
            lr_gamma: step factor.
            lr_final: last epoch's rate of the logspace schedule.
            first_n: train only the first N parameterised layers (0: evaluate only; None or all:
                re-train); freezing is done by the FirstNFinetuning callback.
            finetune: the schedule used instead of the one above when 0 < first_n < all layers
                (the paper fine-tunes with other rates and epochs than it trains).
            init_from: start from these weights: a checkpoint path, an MLflow run id,
                ``runs:/<id>/<path>`` or ``latest`` (the newest clean pre-train of this model and
                dataset) — the CLI resolves references to a local file.
            pretrained: load published weights where the architecture has them (AlexNet).
            channels_last: NHWC memory layout for weights and batches. Measured (README,
                Performance): 1.1-1.5x faster training on a 2-core CPU, neutral to 1.1x on an
                H200 in float32, and with bf16 autocast it lifts AlexNet to 1.5-1.8x.
        """
        super().__init__()
        if isinstance(finetune, Schedule):  # plain types only: checkpoints load weights_only
            finetune = asdict(finetune)
        self.save_hyperparameters(logger=False)
        self.net = build(arch, num_classes=num_classes)
        n_layers = len(self.net.param_layers())
        if first_n is not None and not 0 <= first_n <= n_layers:
            raise ValueError(
                f"first_n={first_n} is out of range for {arch}, which has {n_layers} "
                f"parameterised layers ({', '.join(self.net.param_layer_names())}); use 0..{n_layers}"
            )
        sch = self.schedule
        if sch.lr <= 0:
            raise ValueError(f"learning rate must be > 0 (got {sch.lr})")
        if sch.lr_schedule == "logspace" and not sch.lr_final:
            raise ValueError("lr_schedule logspace needs lr_final, e.g. --model.lr_final 1e-10")
        if pretrained:
            try:
                self.net.load_pretrained()
            except RuntimeError as e:
                raise ValueError(
                    f"{e}; or pass --model.pretrained false to start from random weights"
                ) from None
        if (
            init_from
            and not init_from.startswith(("latest", "runs:/"))
            and not _is_run_id(init_from)
        ):
            from robust_ft.checkpoints import load_net_weights

            load_net_weights(self.net, init_from)
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.top5 = num_classes > 10
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_metrics = torch.nn.ModuleList()
        self._loss_sum, self._loss_count = torch.zeros(()), 0  # this epoch's train/loss so far

    @property
    def n_layers(self) -> int:
        return len(self.net.param_layers())

    @property
    def is_finetune(self) -> bool:
        """Whether this run trains with the ``finetune`` schedule (``settings.is_finetune``)."""
        hp = self.hparams
        return is_finetune(hp.first_n, len(self.net.param_layers()), hp.init_from)

    @property
    def schedule(self) -> Schedule:
        """The schedule in force: ``finetune`` for a first-N fine-tune when given, else the main one."""
        hp = self.hparams
        if self.is_finetune and hp.finetune is not None:
            ft = hp.finetune
            return ft if isinstance(ft, Schedule) else Schedule(**dict(ft))
        return Schedule(hp.lr, hp.lr_schedule, hp.lr_milestones, hp.lr_gamma, hp.lr_final, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def configure_callbacks(self):
        """Freezing belongs to a callback; the module only says how many layers train."""
        from robust_ft.callbacks.freeze import FirstNFinetuning

        first_n = self.hparams.first_n
        return [] if first_n is None else [FirstNFinetuning(first_n)]

    # ----------------------------------------------------------------- steps
    # train/loss is the epoch's mean over its samples. It is summed here and logged once, at the
    # epoch's last batch (so callbacks' on_train_epoch_end see it): a per-step self.log costs
    # ~0.5 ms a step (3% of a LeNet-5 step on 2 cores), torchmetrics' MeanMetric ~0.1 ms.
    # A checkpoint taken mid-epoch (interrupted.ckpt) carries the partial sum, so a resumed
    # epoch's loss is the whole epoch's.
    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        part = loss.detach() * len(y)
        self._loss_sum = self._loss_sum + part if self._loss_count else part
        self._loss_count += len(y)
        if self.trainer.is_last_batch:
            self._log_train_loss()
        return loss

    def on_train_epoch_end(self):
        self._log_train_loss()  # an epoch cut short (max_steps) has no last batch

    def _log_train_loss(self):
        if self._loss_count:
            mean = self._loss_sum / self._loss_count
            kw = {"on_step": False, "on_epoch": True, "batch_size": self._loss_count}
            self.log("train/loss", mean, sync_dist=True, **kw)
            self._loss_count = 0

    def on_save_checkpoint(self, checkpoint):
        if self._loss_count:
            checkpoint[PARTIAL_LOSS] = (float(self._loss_sum), self._loss_count)

    def on_load_checkpoint(self, checkpoint):
        loss_sum, self._loss_count = checkpoint.get(PARTIAL_LOSS, (0.0, 0))
        self._loss_sum = torch.tensor(loss_sum)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.val_acc.update(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), batch_size=len(y), sync_dist=True)

    def on_validation_epoch_end(self):
        # compute() already gathers every rank's counts; sync_dist averages equal values (and
        # keeps Lightning from warning that an epoch-level value is not synced)
        self.log("val/err", 100.0 * (1.0 - self.val_acc.compute()), sync_dist=True)
        self.val_acc.reset()

    def _tag_groups(self) -> list[list[str]]:
        """Per test dataloader, the tags its errors are logged under (see ``tag_groups``)."""
        from robust_ft.callbacks.grad_stats import tag_groups

        return tag_groups(self.trainer, len(self.trainer.test_dataloaders or []))

    def on_test_start(self):
        n_cls = self.hparams.num_classes
        metrics = []
        for _ in self._tag_groups():
            m = {"top1": MulticlassAccuracy(n_cls, average="micro")}
            if self.top5:
                m["top5"] = MulticlassAccuracy(n_cls, top_k=5, average="micro")
            metrics.append(torch.nn.ModuleDict(m))
        self.test_metrics = torch.nn.ModuleList(metrics).to(self.device)

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        x, y = batch
        logits = self(x)
        for m in self.test_metrics[dataloader_idx].values():
            m.update(logits, y)
        return logits.argmax(1)  # for callbacks (the confusion matrices); not kept by Lightning

    def on_test_epoch_end(self):
        for tags, metrics in zip(self._tag_groups(), self.test_metrics, strict=True):
            for key, m in metrics.items():
                name = "err" if key == "top1" else "err5"
                err = 100.0 * (1.0 - m.compute())
                for t in tags:  # level 0 of every kind: one test set, logged under each L0 tag
                    self.log(f"test/{name}/{t}", err, add_dataloader_idx=False, sync_dist=True)
                m.reset()

    # ----------------------------------------------------------------- optimisation
    def lr_factor(self, epoch: int) -> float:
        """Multiplier of ``lr`` at an epoch under the configured schedule."""
        s = self.schedule
        if s.lr_schedule == "step":
            return s.lr_gamma ** sum(epoch >= m for m in (s.lr_milestones or []))
        if s.lr_schedule == "logspace":
            last = max(1, (self.trainer.max_epochs or 1) - 1)
            return (s.lr_final / s.lr) ** (min(epoch, last) / last)
        return 1.0

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError(
                "no trainable parameters (first_n=0 freezes everything): use `test`, not `fit`"
            )
        opt = torch.optim.SGD(
            params,
            lr=self.schedule.lr,
            momentum=self.hparams.momentum,
            weight_decay=self.hparams.weight_decay,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def _is_run_id(ref: str) -> bool:
    return len(ref) == 32 and all(c in "0123456789abcdef" for c in ref)
