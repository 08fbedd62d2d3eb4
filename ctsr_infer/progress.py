"""Progress events: the library reports, the CLI draws."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ProgressEvent", "ProgressCallback", "emit"]


@dataclass(frozen=True)
class ProgressEvent:
    stage: str
    """``preprocess``, ``encode``, ``denoise``, ``knob``, ``decode``, ``postprocess``."""
    done: int
    total: int


ProgressCallback = Callable[[ProgressEvent], None]


def emit(callback: ProgressCallback | None, stage: str, done: int, total: int) -> None:
    if callback is not None:
        callback(ProgressEvent(stage, done, total))
