"""Progress events: the library reports, the CLI draws."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

__all__ = ["ProgressEvent", "ProgressCallback", "Stage", "STAGES", "emit"]

Stage = Literal["download", "file", "preprocess", "encode", "denoise", "knob", "decode", "network", "colour fix"]
"""The stages the library emits, in the order a run goes through them:

* ``download``: bytes of a model file (``hub``); ``file``: files of a folder run (``batch``);
* ``preprocess``: the image in (transparency, stacking) before the network;
* ``encode``, ``denoise``, ``knob``, ``decode``: the diffusion families' stages (``done``/``total``
  count tiles or steps); ``knob`` counts the extra network calls of the t knob;
* ``network``: a feed-forward family's one network stage (tiles);
* ``colour fix``: the end of the colour fix (emitted once, 1/1).
"""
STAGES: tuple[str, ...] = get_args(Stage)


@dataclass(frozen=True)
class ProgressEvent:
    stage: Stage
    """One of :data:`STAGES`."""
    done: int
    total: int


ProgressCallback = Callable[[ProgressEvent], None]


def emit(callback: ProgressCallback | None, stage: Stage, done: int, total: int) -> None:
    if callback is not None:
        callback(ProgressEvent(stage, done, total))
