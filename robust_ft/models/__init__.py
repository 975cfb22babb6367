"""The paper's three classifiers and a factory that builds them by name."""

from torch import nn

from robust_ft.models.alexnet import AlexNet
from robust_ft.models.cifar10_quick import Cifar10Quick
from robust_ft.models.lenet5 import LeNet5

MODELS: dict[str, type[nn.Module]] = {
    "lenet5": LeNet5,
    "cifar10_quick": Cifar10Quick,
    "alexnet": AlexNet,
}

__all__ = ["MODELS", "AlexNet", "Cifar10Quick", "LeNet5", "build"]


def build(name: str, num_classes: int | None = None, **kwargs) -> nn.Module:
    """A freshly initialised model `name`; `num_classes=None` keeps the model's default."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; accepted: {', '.join(MODELS)}")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return MODELS[name](**kwargs)
