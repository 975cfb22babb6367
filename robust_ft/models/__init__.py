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

__all__ = ["MODELS", "AlexNet", "Cifar10Quick", "LeNet5", "build", "input_shape", "n_param_layers"]


def build(name: str, num_classes: int | None = None, **kwargs) -> nn.Module:
    """A freshly initialised model `name`; `num_classes=None` keeps the model's default."""
    cls = _cls(name)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return cls(**kwargs)


def _cls(name: str) -> type[nn.Module]:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; accepted: {', '.join(MODELS)}")
    return MODELS[name]


def n_param_layers(name: str) -> int:
    """How many parameterised layers (the first-N range) model `name` has, without building it."""
    return len(_cls(name).PARAM_LAYERS)


def input_shape(name: str) -> tuple[int, int, int]:
    """The (C,H,W) images model `name` takes, without building it."""
    return tuple(_cls(name).input_shape)
