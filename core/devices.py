"""Device and dtype choice: CUDA > MPS > CPU; half precision on accelerators, fp32 on CPU."""
from __future__ import annotations

import gc
import os

import torch

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
          "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def pick_device(name: str | None = None) -> torch.device:
    """The device named, or the best one present when `name` is None or "auto"."""
    if name and name != "auto":
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"--device {name} was asked for but CUDA is not available here.")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError(f"--device {name} was asked for but MPS is not available here.")
        return dev
    if torch.cuda.is_available():
        # under `accelerate launch` / torchrun each process takes its own GPU
        local = os.environ.get("LOCAL_RANK")
        return torch.device(f"cuda:{int(local) % torch.cuda.device_count()}" if local else "cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, name: str | None = None) -> torch.dtype:
    """The dtype named, else fp16 on CUDA/MPS (bf16 where CUDA supports it) and fp32 on CPU."""
    if name and name != "auto":
        try:
            return DTYPES[name.lower()]
        except KeyError:
            raise ValueError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}") from None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def release_memory() -> None:
    """Give cached accelerator memory back after a failure or a large job."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        torch.mps.empty_cache()


# --------------------------------------------------------------------------- the low-memory mode
# Automatic below 16 GiB: cards sold as "16 GB" (T4, V100-16GB) report a little less and are
# included; they are the ones the reference scripts run out of memory on (issue 19).
LOW_VRAM_BELOW_BYTES = 16 * 2**30
_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")


def parse_low_vram(value: str | bool | None) -> bool | None:
    """A forced setting from a flag or STUDIO_LOW_VRAM: True, False, or None (auto)."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("", "auto"):
        return None
    if text in _ON:
        return True
    if text in _OFF:
        return False
    raise ValueError(f"low-VRAM mode must be on, off or auto (got {value!r})")


def total_memory(device: torch.device, properties=None) -> int | None:
    """The accelerator's total memory in bytes (CUDA only; None elsewhere)."""
    if device.type != "cuda":
        return None
    properties = properties or torch.cuda.get_device_properties
    return int(properties(device).total_memory)


def low_vram_mode(device: torch.device, forced: bool | None = None, properties=None) -> bool:
    """Whether the low-memory mode is on: as forced (--low-vram / --no-low-vram, STUDIO_LOW_VRAM),
    else automatically on a CUDA GPU with less than 16 GiB; never automatically on CPU or MPS.
    `properties` stands in for torch.cuda.get_device_properties (tests)."""
    if forced is not None:
        return bool(forced)
    total = total_memory(device, properties)
    return total is not None and total < LOW_VRAM_BELOW_BYTES
