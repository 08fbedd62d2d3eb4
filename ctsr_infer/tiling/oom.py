"""Out-of-memory recovery: :func:`with_oom_retry` halves the tile on an out-of-memory error, down to
a floor, then fails naming the sizes and the flag to change."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import DeviceError

__all__ = ["is_out_of_memory", "with_oom_retry"]


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError) or isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def with_oom_retry(run: Callable[[int], torch.Tensor], *, tile: int, floor: int, what: str, flag: str) -> torch.Tensor:
    """Call ``run(tile)``; on out-of-memory halve the tile and retry down to ``floor``, then fail
    naming the sizes and the flag to change."""
    current = tile
    while True:
        try:
            return run(current)
        except BaseException as exc:  # noqa: BLE001 - only out-of-memory is handled
            if not is_out_of_memory(exc):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if current // 2 < floor:
                raise DeviceError(
                    f"out of memory in {what} even with tiles of {current} px (floor {floor}); lower `{flag}`, "
                    "use `--tiling fast`, `--dtype bf16`, or a smaller image."
                ) from exc
            current //= 2
