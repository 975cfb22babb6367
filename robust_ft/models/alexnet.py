"""AlexNet as torchvision builds it, with the paper's layer names conv1..conv5, fc6..fc8.

Loads torchvision's ImageNet weights (``AlexNet_Weights.IMAGENET1K_V1``); they expect RGB in
[0, 1] normalised with the ImageNet mean and std (``IMAGENET_MEAN``, ``IMAGENET_STD``).
"""

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision's state_dict prefixes -> ours
TORCHVISION_KEYS = {
    "features.0": "conv1",
    "features.3": "conv2",
    "features.6": "conv3",
    "features.8": "conv4",
    "features.10": "conv5",
    "classifier.1": "fc6",
    "classifier.4": "fc7",
    "classifier.6": "fc8",
}


class AlexNet(nn.Module):
    """AlexNet (torchvision variant): 5 conv layers and 3 fully connected, 61,100,840 parameters."""

    input_shape = (3, 224, 224)
    PARAM_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
    default_gradvar_layer = "conv3"

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 11, stride=4, padding=2)  # 224 -> 55, pool -> 27
        self.conv2 = nn.Conv2d(64, 192, 5, padding=2)  # 27, pool -> 13
        self.conv3 = nn.Conv2d(192, 384, 3, padding=1)  # 13
        self.conv4 = nn.Conv2d(384, 256, 3, padding=1)  # 13
        self.conv5 = nn.Conv2d(256, 256, 3, padding=1)  # 13, pool -> 6
        self.fc6 = nn.Linear(256 * 6 * 6, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)
        self.dropout = nn.Dropout(dropout)

    def param_layer_names(self) -> list[str]:
        """Names of the layers with parameters, in the paper's first-N order."""
        return list(self.PARAM_LAYERS)

    def param_layers(self) -> list[nn.Module]:
        """Layers with parameters, in the paper's first-N order."""
        return [self.get_submodule(name) for name in self.param_layer_names()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for normalised images (N, 3, 224, 224)."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 3, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 3, 2)
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        x = F.max_pool2d(F.relu(self.conv5(x)), 3, 2)
        x = F.adaptive_avg_pool2d(x, (6, 6)).flatten(1)
        x = F.relu(self.fc6(self.dropout(x)))
        x = F.relu(self.fc7(self.dropout(x)))
        return self.fc8(x)

    def load_pretrained(
        self, path: str | os.PathLike | None = None, download: bool = True
    ) -> "AlexNet":
        """Load torchvision's ImageNet weights from `path`, the torch hub cache, or the web.

        With ``num_classes`` other than 1000 (own data), fc8 keeps its random initialisation.
        """
        own = self.state_dict()
        weights = _read_weights(path, download)
        if self.fc8.out_features != 1000:
            own = {k: v for k, v in own.items() if not k.startswith("fc8.")}
            weights = {k: v for k, v in weights.items() if not k.startswith("classifier.6.")}
        self.load_state_dict(_remap(weights, own), strict=self.fc8.out_features == 1000)
        return self


def _read_weights(path: str | os.PathLike | None, download: bool) -> dict[str, torch.Tensor]:
    """The torchvision AlexNet state_dict from `path`, else the hub cache, else a download."""
    from torchvision.models import AlexNet_Weights

    url = AlexNet_Weights.IMAGENET1K_V1.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    hint = (
        f"download {url} where there is network and pass its path to "
        f"AlexNet.load_pretrained(path) or put it at {cached}"
    )
    if path is not None:
        if not Path(path).is_file():
            raise RuntimeError(f"AlexNet weights not found at {path}: {hint}")
        return torch.load(path, map_location="cpu", weights_only=True)
    if cached.is_file():
        return torch.load(cached, map_location="cpu", weights_only=True)
    if not download:
        raise RuntimeError(f"AlexNet ImageNet weights are not in {cached.parent}: {hint}")
    try:
        return torch.hub.load_state_dict_from_url(
            url, map_location="cpu", weights_only=True, check_hash=True
        )
    except Exception as e:  # URLError, timeouts, a bad hash: all mean "no usable weights"
        raise RuntimeError(f"could not download the AlexNet ImageNet weights ({e}): {hint}") from e


def _remap(weights: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict:
    """torchvision keys renamed to ours (ours pass through), shapes checked against `own`."""
    out = {}
    for key, value in weights.items():
        prefix, _, param = key.rpartition(".")
        out[f"{TORCHVISION_KEYS.get(prefix, prefix)}.{param}"] = value
    missing, unexpected = sorted(own.keys() - out.keys()), sorted(out.keys() - own.keys())
    if missing or unexpected:
        raise RuntimeError(f"not an AlexNet state_dict: missing {missing}, unexpected {unexpected}")
    for key, value in out.items():
        if value.shape != own[key].shape:
            raise RuntimeError(
                f"AlexNet weight {key} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(own[key].shape)} (pretrained weights need num_classes=1000)"
            )
    return out
