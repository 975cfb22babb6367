"""robust-ft: classify blurred and noisy images; first-N fine-tuning vs re-training, tracked."""

__version__ = "0.1.0"
