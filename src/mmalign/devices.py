"""The torch device a config key names, for every stage that runs torch; and the
``gpu`` resource of the rules whose device a config key names.

Torch-free at import: the Snakefile reads :func:`gpu_resources` while it plans
(``snakemake -n`` runs with torch unimportable), and only :func:`torch_device`
imports torch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: One folder per GPU the NVIDIA driver sees (Linux).
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


class DeviceError(ValueError):
    """A configured device this machine does not have; the message names the key."""


def torch_device(name: str, key: str) -> torch.device:
    """The device of config key ``key`` (e.g. ``"learn.device"``) set to ``name``:
    ``auto`` = CUDA when torch sees a GPU, else the CPU; ``cuda`` without a GPU
    is an error naming ``key`` (never a silent fall back to the CPU)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{key} is 'cuda' but torch sees no GPU; use 'auto' or 'cpu'")
    return torch.device(name)


def gpu_visible() -> bool:
    """Whether this machine shows CUDA a GPU, judged without torch (cheap, at
    planning time): the NVIDIA driver lists one under :data:`NVIDIA_GPUS`, and
    ``CUDA_VISIBLE_DEVICES``, where set, starts with a device (an index, or a
    ``GPU-``/``MIG-`` UUID); CUDA stops at the first entry that is not one, so
    ``""``, ``"-1"`` and SLURM's ``"NoDevFiles"`` hide them all."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        first = visible.split(",")[0].strip()
        if not (first.isdigit() or first.startswith(("GPU-", "MIG-"))):
            return False
    try:
        return any(NVIDIA_GPUS.iterdir())
    except OSError:
        return False


def gpu_resources(name: str) -> dict[str, int]:
    """The resources a rule adds whose torch work runs on the device named
    ``name`` (auto | cpu | cuda): ``{"gpu": 1}`` for cuda, and for auto where
    :func:`gpu_visible` at planning time; else none, so the job neither waits
    for the GPU (``--resources gpu=1``) nor asks SLURM for one.

    For auto this is a guess about where the job will run: on one machine it is
    right; on a cluster planned from a login node without GPUs, auto's jobs ask
    for none and run on the CPU (auto resolves there, in the job). Ask for
    ``cuda`` to run them on GPU nodes."""
    if name == "cuda" or (name == "auto" and gpu_visible()):
        return {"gpu": 1}
    return {}
