"""Feature-map statistics of the paper's analysis (Eq. 1-2, Fig. 8)."""

import torch
import torch.nn.functional as F

# Eq. 1: Sobel with the paper's 1/4 factor; s_y is s_x transposed
SOBEL_X = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]) / 4
SOBEL_Y = SOBEL_X.T.contiguous()


def gradient_variance(feature_maps: torch.Tensor) -> torch.Tensor:
    """Variance (N-1) of each map's Sobel gradient magnitude: (N, C, H, W) -> (N, C)."""
    if feature_maps.ndim != 4:
        raise ValueError(
            f"feature_maps must be (N, C, H, W), got shape {tuple(feature_maps.shape)}"
        )
    n, c, h, w = feature_maps.shape
    if h * w < 2:
        raise ValueError(f"a variance needs at least 2 pixels per map, got {h}x{w}")
    x = feature_maps.detach()
    if x.dtype != torch.float64:
        x = x.float()  # half/bfloat16 maps from mixed precision are measured in float32
    kernels = torch.stack([SOBEL_X, SOBEL_Y]).unsqueeze(1).to(x)  # (2, 1, 3, 3)
    with torch.autocast(x.device.type, enabled=False):
        # conv2d is correlation; padding=1 is zero padding to 'same' size
        g = F.conv2d(x.reshape(n * c, 1, h, w), kernels, padding=1)  # (N*C, 2, H, W)
    magnitude = g.square().sum(dim=1).sqrt()  # Eq. 2
    return magnitude.reshape(n, c, h * w).var(dim=2, correction=1)
