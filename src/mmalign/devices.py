"""The torch device a config key names, for every stage that runs torch."""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A configured device this machine does not have; the message names the key."""


def torch_device(name: str, key: str) -> torch.device:
    """The device of config key ``key`` (e.g. ``"learn.device"``) set to ``name``:
    ``auto`` = CUDA when torch sees a GPU, else the CPU; ``cuda`` without a GPU
    is an error naming ``key`` (never a silent fall back to the CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{key} is 'cuda' but torch sees no GPU; use 'auto' or 'cpu'")
    return torch.device(name)
