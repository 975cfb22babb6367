"""Lightning callbacks: first-N fine-tuning and the gradient-variance analysis."""

from robust_ft.callbacks.freeze import FirstNFinetuning, freeze_after
from robust_ft.callbacks.grad_stats import GradientVarianceCallback

__all__ = ["FirstNFinetuning", "GradientVarianceCallback", "freeze_after"]
