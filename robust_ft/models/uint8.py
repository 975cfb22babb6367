"""The network as it is deployed: raw uint8 images (N,C,H,W) in, class logits out."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class UInt8Classifier(nn.Module):
    """A paper CNN behind the DataModule's normalisation: uint8 (N,C,H,W) -> logits (N,classes).

    Scales to 0..1 and normalises with the training dataset's mean/std, as the DataModule did
    during training, so a model logged to MLflow takes images as they come from a camera or file.
    Any batch size; a (N,H,W) batch of one-channel images is taken as (N,1,H,W).
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.net = net
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.net.input_shape)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(images)
        if x.ndim == 3:
            x = x.unsqueeze(1)
        return self.net((x.float() / 255.0 - self.mean) / self.std)
