"""Which torch device a run uses: ``cpu``, ``cuda[:i]`` or ``auto`` (CUDA when present).

``auto`` is what the paper-size runs (``reproduce --full``) ask for, so one config trains on a
GPU machine and still runs on a laptop. Under Ray a trial with a fractional ``resources.gpu``
sees only its GPU (``CUDA_VISIBLE_DEVICES``), so ``cuda`` means "the GPU Ray gave me" and several
trials share one card.
"""

from __future__ import annotations

import torch

from ambient_core.errors import ConfigError

AUTO = "auto"


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; other names are checked.

    Asking for CUDA on a machine without one is the user's error (a config written for a GPU
    box), reported as a ConfigError naming ``train.device`` rather than a torch traceback.
    """
    if isinstance(name, torch.device):
        return name
    text = str(name).strip().lower()
    if text == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise ConfigError(f"train.device: {name!r} is not a torch device ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device: {name!r} asks for CUDA but this machine has no usable GPU; "
            "use 'auto' (GPU when present) or 'cpu'"
        )
    return device


def device_name(name: str | torch.device) -> str:
    """The resolved device as a plain string (what configs and checkpoints record)."""
    return str(resolve_device(name))
