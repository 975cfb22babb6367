"""A small CNN that tells which paper distortion an image carries (kind) and how strong (level).

Trained on the project's own distortions (``distort_batch``) of clean training images: each image
gets a kind drawn from ``KINDS`` and, unless clean, a level drawn from U(0.5, 4) (motion, whose
walk has round(level) steps: 1..4), fresh every epoch. One softmax over the joint classes
``clean`` and (kind, level bin) for the four kinds and ``BINS`` (0.5..4 in steps of 0.25): per
image, the kind is the most likely marginal and the level the posterior median of that kind;
for a set, the (kind, bin) with the largest summed log-probability over its images (images are
independent draws of one distortion), which averages out what no single image shows.
Images are uint8 (N,1,H,W); colour images are estimated on their luminance.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("clean", "motion", "defocus", "noise", "combined")
LEVEL_RANGE = (0.5, 4.0)
log = logging.getLogger("robust_ft")
BINS = np.arange(0.5, 4.01, 0.25)
N_CLASSES = 1 + (len(KINDS) - 1) * len(BINS)


class DistortionEstimator(nn.Module):
    """uint8 images (N,C,H,W) -> logits (N, N_CLASSES) over clean + (kind, level bin)."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Linear(4 * w, 64), nn.ReLU(), nn.Linear(64, N_CLASSES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = gray(torch.as_tensor(images)).float() / 32.0  # noise of sigma 1 is 1/32, not 1/255
        f = self.features(x)
        return self.head(torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1))


def joint_class(kinds: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """The joint class of (kind index, level): 0 for clean, else 1 + (kind-1)*bins + bin."""
    step = float(BINS[1] - BINS[0])
    b = ((levels - float(BINS[0])) / step).round().clamp(0, len(BINS) - 1).long()
    return torch.where(kinds == 0, 0, 1 + (kinds - 1) * len(BINS) + b)


def gray(images: torch.Tensor) -> torch.Tensor:
    """(N,H,W) or (N,C,H,W) -> (N,1,H,W); colour by ITU-R 601 luminance."""
    if images.ndim == 3:
        return images.unsqueeze(1)
    if images.shape[1] == 1:
        return images
    w = torch.tensor([0.299, 0.587, 0.114], device=images.device).view(1, 3, 1, 1)
    return (images.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)


def random_distortions(
    images: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each image (N,1,H,W uint8) distorted by a random kind at a random level: (x, kind, level)."""
    from robust_ft.data.distortions import distort_batch

    n = len(images)
    kinds = torch.randint(0, len(KINDS), (n,), generator=generator)
    low, high = LEVEL_RANGE
    levels = low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)
    levels[kinds == 0] = 0.0
    motion = kinds == KINDS.index("motion")
    levels[motion] = torch.randint(1, 5, (int(motion.sum()),), generator=generator).double()
    out = images.clone()
    for k in range(1, len(KINDS)):
        idx = (kinds == k).nonzero().flatten()
        if len(idx):
            out[idx] = distort_batch(images[idx], KINDS[k], levels[idx], generator)
    return out, kinds, levels.float()


@dataclass
class TrainStats:
    epochs: int
    images: int
    seconds: float
    final_loss: float


def train(
    images: np.ndarray, epochs: int = 4, seed: int = 0, batch: int = 128, lr: float = 2e-3
) -> tuple[DistortionEstimator, TrainStats]:
    """Train an estimator on random paper distortions of clean uint8 images (N,H,W)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    clean = gray(torch.from_numpy(np.asarray(images, dtype=np.uint8)))
    net = DistortionEstimator()
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * -(-len(clean) // batch)
    )
    start, loss = time.time(), torch.tensor(0.0)
    for epoch in range(1, epochs + 1):
        x, kinds, levels = random_distortions(clean, g)
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            j = order[i : i + batch]
            loss = F.cross_entropy(net(x[j]), joint_class(kinds[j], levels[j]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        log.info("estimator epoch %d/%d  loss %.4f  %.0f s", epoch, epochs, loss.item(),
                 time.time() - start)  # fmt: skip
    return net.eval(), TrainStats(epochs, len(clean), time.time() - start, loss.item())


@torch.no_grad()
def log_probs(net: nn.Module, images, batch: int = 1024) -> torch.Tensor:
    """log p(class | image) over clean + (kind, level bin), (N, N_CLASSES)."""
    x = gray(torch.as_tensor(np.asarray(images, dtype=np.uint8)))
    return torch.cat([net(x[i : i + batch]).log_softmax(1) for i in range(0, len(x), batch)])


def per_image(logp: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kind index, level (posterior median given that kind; 0 for clean), kind probabilities."""
    p = logp.exp()
    bins = p[:, 1:].reshape(len(p), len(KINDS) - 1, len(BINS))
    kind_p = torch.cat([p[:, :1], bins.sum(2)], dim=1)
    kinds = kind_p.argmax(1)
    cond = bins[torch.arange(len(p)), (kinds - 1).clamp(min=0)]
    cdf = cond.cumsum(1) / cond.sum(1, keepdim=True)
    median = torch.as_tensor(BINS, dtype=torch.float32)[(cdf < 0.5).sum(1).clamp(max=len(BINS) - 1)]
    levels = torch.where(kinds == 0, 0.0, median)
    return kinds.numpy(), levels.numpy(), kind_p.numpy()


def class_prior() -> torch.Tensor:
    """How often training drew each joint class: clean 1/5; each kind 1/5 spread over its bins
    (motion: the integer levels; the others: U(0.5, 4), half a bin at either end)."""
    share = 1.0 / len(KINDS)
    width = np.full(len(BINS), BINS[1] - BINS[0])
    width[[0, -1]] /= 2
    smooth = share * width / width.sum()
    motion = share * np.isin(BINS, [1, 2, 3, 4]) / 4
    per_kind = [motion if k == "motion" else smooth for k in KINDS[1:]]
    return torch.as_tensor(np.concatenate([[share], *per_kind]), dtype=torch.float32)


def set_estimate(logp: torch.Tensor, floor: float = 1e-3) -> dict:
    """One estimate for a set of images of one distortion: the (kind, level) of the largest
    likelihood, the summed log-probability over its images less the training prior (each
    probability floored at ``floor``: one odd image cannot veto the answer); with the per-image
    kinds' agreement, and the median and spread (IQR) of per-image levels."""
    prior = class_prior()
    total = logp.exp().clamp(min=floor).log().sum(0) - len(logp) * prior.clamp(min=1e-12).log()
    total[prior == 0] = -torch.inf
    best = int(total.argmax())
    kind, level = ("clean", 0.0) if best == 0 else (
        KINDS[1 + (best - 1) // len(BINS)], float(BINS[(best - 1) % len(BINS)]))  # fmt: skip
    kinds, levels, _ = per_image(logp)
    q1, median, q3 = np.percentile(levels, [25, 50, 75])
    return {
        "kind": kind,
        "level": level,
        "median_level": float(median),
        "kind_share": float(np.mean(kinds == KINDS.index(kind))),
        "level_iqr": float(q3 - q1),
        "images": len(kinds),
    }
