"""Device rules, written once: which device strings exist, what ``auto`` picks, where fp16 may run.

The backends, ``fsmde eval``, the trainer and the ROS node's parameters all take
a device string and a precision. Each used to spell its own check (and its own
``torch.cuda.is_available()`` decision); here they are one set of functions so
a rule changes in one place. ``torch`` is imported only by the functions that
need to look at the hardware, so validating a string stays cheap.
"""

from __future__ import annotations

from typing import Any

from fsmde_core.runtime.base import BackendUnavailableError

PRECISIONS: tuple[str, ...] = ("fp32", "fp16")
#: What a device parameter may say (for help texts and error messages).
DEVICE_CHOICES = "'cpu', 'cuda' or 'cuda:<index>'"


def check_precision(precision: str) -> str:
    """Return ``precision`` if supported, else raise a ValueError listing the choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def is_cuda_device(device: str) -> bool:
    """True for ``"cuda"`` and ``"cuda:<index>"``."""
    return device == "cuda" or device.startswith("cuda:")


def check_device(device: str) -> str:
    """Accept ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"``; anything else is a typo worth failing on."""
    if device in ("cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit()):
        return device
    raise ValueError(f"device must be {DEVICE_CHOICES}, got {device!r}")


def check_precision_on_device(precision: str, device: str) -> str:
    """fp16 only on CUDA: half precision on a CPU is slow, and a silent fp32 fallback would make timings lie."""
    check_precision(precision)
    if precision == "fp16" and not is_cuda_device(check_device(device)):
        raise ValueError(
            f"precision='fp16' needs CUDA but device is {device!r}; use precision='fp32' on the CPU, "
            "or device='cuda'"
        )
    return precision


def cuda_available() -> bool:
    """Whether torch sees a usable CUDA device (the one place that asks)."""
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(device: str | None) -> str:
    """``None`` or ``"auto"`` -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``; other values are checked."""
    if device is None or device == "auto":
        return "cuda" if cuda_available() else "cpu"
    return check_device(device)


def require_cuda(device: str = "cuda", who: str = "this backend") -> Any:
    """Return ``torch`` after checking that ``device`` names a usable CUDA device.

    Raises:
        ValueError: ``device`` is not a CUDA device string.
        BackendUnavailableError: no CUDA device here, or the index is out of range.
    """
    import torch

    if not is_cuda_device(check_device(device)):
        raise ValueError(f"{who} runs on a CUDA device; got device={device!r} (use 'cuda' or 'cuda:<i>')")
    if not cuda_available():
        raise BackendUnavailableError(
            f"{who} needs a CUDA device (device={device!r}) but there is no CUDA device usable by torch here "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}); use device='cpu'"
        )
    index = torch.device(device).index or 0
    if index >= torch.cuda.device_count():
        raise BackendUnavailableError(f"no CUDA device {index}: only {torch.cuda.device_count()} visible")
    return torch
