"""Device and precision: resolve ``auto`` deterministically and say what was chosen."""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar, get_args

import torch

from .errors import DeviceError, InvalidInputError
from .settings import current

if TYPE_CHECKING:
    from .families.family import CpuFastPath

__all__ = ["DeviceName", "DtypeName", "Placement", "resolve", "native_bf16_cpu", "NonFinite", "check_finite", "to_channels_last"]

logger = logging.getLogger(__name__)
DeviceName = Literal["auto", "cpu", "cuda", "mps"]
DtypeName = Literal["auto", "fp32", "bf16", "fp16"]
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
M = TypeVar("M", bound=torch.nn.Module)


def to_channels_last(module: M) -> M:
    """``module`` with its 4-D parameters and buffers in channels-last memory format (``nn.Module.to``)."""
    # torch's stubs omit the memory_format keyword that nn.Module.to accepts
    return torch.nn.Module.to(module, memory_format=torch.channels_last)  # type: ignore[call-overload]


@lru_cache(maxsize=1)
def native_bf16_cpu() -> bool:
    """True when the CPU has bf16 instructions (AVX512-BF16 or AMX-BF16; read from /proc/cpuinfo,
    so False off Linux). Without them bf16 is emulated and slower than fp32."""
    if platform.system() != "Linux":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype
    """Compute dtype of the denoising network (UNet)."""
    vae_dtype: torch.dtype
    """Dtype of the VAE; fp32 under ``auto`` on CUDA so the decode never overflows."""
    channels_last: bool = False
    """Convolutions in channels-last memory format (faster with bf16 on CPUs and on tensor cores)."""
    decoder: torch.dtype | None = None
    """Dtype of the VAE's decoder when it differs from ``vae_dtype`` (a family's ``cpu_fast_path``)."""

    @property
    def decoder_dtype(self) -> torch.dtype:
        return self.decoder or self.vae_dtype

    def describe(self) -> str:
        """``network/VAE encoder/VAE decoder dtype[, channels-last]``, e.g. ``fp32/fp32/bf16, channels-last``."""
        names = {dtype: name for name, dtype in _DTYPES.items()}
        dtypes = "/".join(names[d] for d in (self.dtype, self.vae_dtype, self.decoder_dtype))
        return dtypes + (", channels-last" if self.channels_last else "")

    def prepare(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Move a 4-D activation to the device, in ``dtype`` (default: the network's) and layout."""
        x = x.to(self.device, dtype or self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def place(self, module: M, dtype: torch.dtype | None = None) -> M:
        """Move a module to the device, dtype and layout (``nn.Module.to``: no diffusers cast warnings)."""
        module = torch.nn.Module.to(module, device=self.device, dtype=dtype or self.dtype)
        return to_channels_last(module) if self.channels_last else module


def _cuda_ok() -> bool:
    return torch.cuda.is_available()


def _mps_ok() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def resolve(device: str = "auto", dtype: str = "auto", *, channels_last: bool | None = None,
            fast_path: CpuFastPath | None = None) -> Placement:
    """Resolve device and dtype names.

    ``auto`` is CUDA with bf16 (VAE in fp32) when CUDA is present, else the CPU: there, on a CPU with
    native bf16, the family's measured ``fast_path`` (``Family.cpu_fast_path``) when it has one,
    otherwise fp32. MPS is used only when asked for. ``cuda:N`` picks a GPU. ``channels_last`` None:
    the fast path's under ``auto``, else off.

    Raises:
        InvalidInputError: an unknown name.
        DeviceError: a device or dtype this machine does not have.
    """
    if dtype not in get_args(DtypeName):
        raise InvalidInputError(f"`dtype` must be one of {list(get_args(DtypeName))}, got {dtype!r}.")
    base = device.split(":", 1)[0]
    if base not in get_args(DeviceName) or (":" in device and base != "cuda"):
        raise InvalidInputError(f"`device` must be one of {list(get_args(DeviceName))} or cuda:N, got {device!r}.")
    if base == "auto":
        base = "cuda" if _cuda_ok() else "cpu"
        device = base
    if base == "cuda" and not _cuda_ok():
        raise DeviceError(
            f"`device` is {device!r} but torch sees no CUDA device (torch {torch.__version__}). "
            "Use `--device cpu`, or install a CUDA build of torch."
        )
    if base == "mps" and not _mps_ok():
        raise DeviceError("`device` is 'mps' but this torch has no MPS backend. Use `--device cpu`.")
    torch_device = torch.device(device)
    if dtype == "auto":
        if base == "cuda":
            placement = Placement(torch_device, torch.bfloat16, torch.float32)
        elif base == "cpu" and fast_path is not None and current().cpu_fast and native_bf16_cpu():
            placement = Placement(torch_device, _DTYPES[fast_path.network], _DTYPES[fast_path.encoder],
                                  channels_last=fast_path.channels_last if channels_last is None else channels_last,
                                  decoder=_DTYPES[fast_path.decoder])
        else:
            placement = Placement(torch_device, torch.float32, torch.float32)
    else:
        chosen = _DTYPES[dtype]
        if base == "cpu" and chosen is torch.float16:
            raise DeviceError("`dtype` fp16 is not supported on the CPU; use `--dtype bf16` or `--dtype fp32`.")
        if base == "cuda" and chosen is torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise DeviceError("this GPU has no bf16 support; use `--dtype fp16` or `--dtype fp32`.")
        placement = Placement(torch_device, chosen, chosen)
    if channels_last:
        placement = replace(placement, channels_last=True)
    logger.info("device %s, network/VAE encoder/VAE decoder %s", placement.device, placement.describe())
    return placement


class NonFinite(Exception):
    """Internal signal: a stage produced NaN/Inf (the pipeline retries in fp32, then raises
    :class:`~ctsr_infer.errors.NumericalError`)."""


def check_finite(tensor: torch.Tensor, what: str) -> None:
    if not torch.isfinite(tensor).all():
        raise NonFinite(what)
