"""Load network weights safely (``torch.load(weights_only=True)``) from a Lightning or plain checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, unsafe, or of another architecture."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The network's state dict from a checkpoint file; never unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; give a .ckpt path or an MLflow run id"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise CheckpointError(
            f"cannot load checkpoint {path} safely ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "It is corrupt, truncated, or holds pickled objects that are not plain weights; "
            "use a checkpoint written by robust-ft or re-create it."
        ) from e
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    if any(k.startswith("net.") for k in obj):
        obj = {k[4:]: v for k, v in obj.items() if k.startswith("net.")}
    return obj


def load_net_weights(net: nn.Module, path: str | Path) -> None:
    """Copy a checkpoint's weights into ``net``, refusing one of another architecture."""
    state = read_state_dict(path)
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            s
            for s in (
                f"missing {missing[:4]}" if missing else "",
                f"unexpected {unexpected[:4]}" if unexpected else "",
                "shape mismatch "
                + ", ".join(
                    f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:4]
                )
                if wrong
                else "",
            )
            if s
        )
        raise CheckpointError(
            f"checkpoint {path} is for another architecture than {type(net).__name__} ({detail}); "
            "pick a checkpoint of the same model (and number of classes)"
        )
    net.load_state_dict(state)
