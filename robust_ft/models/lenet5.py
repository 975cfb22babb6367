"""LeNet-5 as the paper trained it on MNIST (Fig. 1; MatConvNet's ``cnn_mnist_init``)."""

import torch
import torch.nn.functional as F
from torch import nn


class LeNet5(nn.Module):
    """LeNet-5: two 5x5 conv + max-pool stages, then fc 800->500 ("flatten"), ReLU, fc 500->10."""

    input_shape = (1, 28, 28)
    PARAM_LAYERS = ("conv1", "conv2", "fc1", "fc2")
    default_gradvar_layer = "conv2"

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)  # 28 -> 24, pool -> 12
        self.conv2 = nn.Conv2d(20, 50, 5)  # 12 -> 8, pool -> 4
        self.fc1 = nn.Linear(50 * 4 * 4, 500)  # MatConvNet: a 4x4 conv over the 4x4x50 map
        self.fc2 = nn.Linear(500, num_classes)

    def param_layer_names(self) -> list[str]:
        """Names of the layers with parameters, in the paper's first-N order."""
        return list(self.PARAM_LAYERS)

    def param_layers(self) -> list[nn.Module]:
        """Layers with parameters, in the paper's first-N order."""
        return [self.get_submodule(name) for name in self.param_layer_names()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for images (N, 1, 28, 28)."""
        x = F.max_pool2d(self.conv1(x), 2)  # no ReLU after the convs, as in MatConvNet
        x = F.max_pool2d(self.conv2(x), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)
