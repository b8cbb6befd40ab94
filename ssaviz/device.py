"""Pick the compute device: CUDA when available, else CPU; ``--device`` or SSAVIZ_DEVICE force it."""

import os

import torch

from .errors import SsavizError


def resolve_device(requested: str | None = None) -> torch.device:
    name = (requested or os.environ.get("SSAVIZ_DEVICE") or "").strip().lower()
    if not name or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise SsavizError(f"unknown device {name!r}; use cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SsavizError("CUDA was requested but no CUDA GPU is available; use --device cpu")
    return torch.device(name)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU ({torch.cuda.get_device_name(device)})"
    return f"CPU ({torch.get_num_threads()} threads)"
