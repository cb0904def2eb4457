"""The device a command runs on: one `resolve_device` and one `device_name` for every command.

`resolve_device("cuda")` never falls back to the CPU: when CUDA is not usable (no visible device,
a driver too old for this torch build, a GPU this build has no kernels for) it raises `DeviceError`
with torch's own reason, so a GPU job on a cluster fails at once instead of running for days on
the CPU. Only "auto" (or None) picks the CPU when there is no GPU.

torch is imported inside the functions so that the command line's parser (which lists
DEVICE_CHOICES) starts without loading it.
"""

from __future__ import annotations

import platform
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICE_CHOICES", "DeviceError", "device_name", "resolve_device"]

# What `device:` in the config and every command's --device accept.
DEVICE_CHOICES = ("auto", "cpu", "cuda")


# Phrases of torch's warnings for a GPU it sees but cannot use (driver too old, GPU architecture
# missing from the build).
UNUSABLE_MARKERS = ("too old", "not compatible", "incompatible", "no kernel image", "not supported")


class DeviceError(RuntimeError):
    """The requested device cannot be used; the message says why and what to do."""


def _cuda_problem() -> str | None:
    """Why CUDA cannot be used here, or None when it can (initialises CUDA)."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            available = torch.cuda.is_available()
            if available:
                torch.cuda.init()  # surfaces "driver too old" / "no kernel image" as an error or warning
        except (RuntimeError, AssertionError) as exc:  # AssertionError: a CPU-only torch build
            return str(exc).strip().splitlines()[0]
    # torch reports an unusable driver (too old, or a GPU this build does not support) as a warning
    reasons = [str(w.message).strip().splitlines()[0] for w in caught
               if "cuda" in str(w.message).lower() or "driver" in str(w.message).lower()]
    if not available:
        if reasons:
            return reasons[0]
        if torch.version.cuda is None:
            return f"this torch build ({torch.__version__}) has no CUDA support"
        return "torch sees no CUDA device (none installed, or CUDA_VISIBLE_DEVICES hides them)"
    # with a device present, only warnings saying this build cannot drive it (benign ones pass)
    fatal = [r for r in reasons if any(marker in r.lower() for marker in UNUSABLE_MARKERS)]
    return fatal[0] if fatal else None


def resolve_device(requested: str | torch.device | None) -> torch.device:
    """The torch device for `requested`: "auto"/None = CUDA when usable, else the CPU.

    "cuda" or "cuda:N" raises DeviceError when CUDA is not usable (never falls back); anything
    else torch does not know raises DeviceError naming the accepted values.
    """
    import torch

    if requested is None or str(requested) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"unknown device {str(requested)!r}; use one of {', '.join(DEVICE_CHOICES)} "
                          "(config `device:` or --device)") from exc
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise DeviceError(f"device {str(requested)!r} is not supported; "
                          f"use one of {', '.join(DEVICE_CHOICES)}")
    problem = _cuda_problem()
    if problem is not None:
        raise DeviceError(f"device {str(requested)!r} was requested (config `device:` or --device) but CUDA "
                          f"is not usable: {problem}. On a GPU node, check `nvidia-smi` and that torch's "
                          f"CUDA build ({torch.version.cuda}) suits the driver; to run on the CPU, pass "
                          "--device cpu (or set device: cpu, with resources.gpus 0)")
    if device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise DeviceError(f"device {str(requested)!r} was requested but {count} CUDA device(s) are visible")
    return device


def device_name(device: torch.device) -> str:
    """What reports record: the GPU's name, or the CPU model and the torch thread count."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu: {model}, {torch.get_num_threads()} threads"
