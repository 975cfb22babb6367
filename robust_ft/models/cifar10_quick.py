"""CIFAR10-quick as the paper trained it on CIFAR-10 (Fig. 2; MatConvNet's ``cnn_cifar_init``).

Pooling follows MatConvNet (pad [0 1 0 1]) and Caffe (ceil mode): a 3x3 window with stride 2
takes 32 -> 16 -> 8 -> 4, so the map is 4x4x64 before the first fully connected layer.
PyTorch's ``ceil_mode=True`` with ``padding=0`` gives the same sizes, and its last window,
which hangs one pixel over the border, averages only the pixels inside the image (the divisor
is the window clipped to the input, whatever ``count_include_pad`` says, because the padding
is 0). That is what MatConvNet (window clipped to the image) and Caffe (window clipped to
input + pad, pad = 0) do, and what ``tests/test_models.py`` checks against a direct
computation.
"""

import torch
import torch.nn.functional as F
from torch import nn


class Cifar10Quick(nn.Module):
    """CIFAR10-quick: three 5x5 conv stages (32, 32, 64 maps), fc 1024->64, ReLU, fc 64->10."""

    input_shape = (3, 32, 32)
    PARAM_LAYERS = ("conv1", "conv2", "conv3", "fc1", "fc2")
    default_gradvar_layer = "conv3"

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 32, 5, padding=2)
        self.conv3 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(64 * 4 * 4, 64)  # MatConvNet: a 4x4 conv over the 4x4x64 map
        self.fc2 = nn.Linear(64, num_classes)

    def param_layer_names(self) -> list[str]:
        """Names of the layers with parameters, in the paper's first-N order."""
        return list(self.PARAM_LAYERS)

    def param_layers(self) -> list[nn.Module]:
        """Layers with parameters, in the paper's first-N order."""
        return [self.get_submodule(name) for name in self.param_layer_names()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for images (N, 3, 32, 32)."""
        x = F.relu(F.max_pool2d(self.conv1(x), 3, 2, ceil_mode=True))  # 32 -> 16, pool then ReLU
        x = F.avg_pool2d(F.relu(self.conv2(x)), 3, 2, ceil_mode=True)  # 16 -> 8
        x = F.avg_pool2d(F.relu(self.conv3(x)), 3, 2, ceil_mode=True)  # 8 -> 4
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)
