"""A loaded classic SR network (any spandrel architecture): tiles, dtype, scale, framing, and the
``blend`` knob of a pair of networks.

The network runs on the input at its native scale; other scales resize its output (bicubic,
antialiased when shrinking). Large inputs are tiled with context: each tile sees
:attr:`ClassicModel.context` pixels of real image around it (the convolutions' measured receptive
radius, capped at :data:`MAX_CONTEXT`), so a convolutional network with a radius within the cap gives
the untiled result up to float rounding; deeper networks (RRDBNet: ~350 px) and attention-based ones
(SwinIR, HAT, DAT: windows of global-ish attention) are close, not exact, as with every tiled
runner. spandrel's own padding to each architecture's size requirements (multiples of a window)
applies per tile.

A ``blend`` student holds a realistic network (``net.*``, t = 0) and a faithful one
(``fidelity.*``, t = 1). Of one architecture with the same tensor shapes, their weights are
interpolated, w(t) = (1 - t) w0 + t w1: one forward per t (Real-ESRGAN's ``-dn``). Otherwise the
outputs are blended, (1 - t) y0 + t y1: two forwards, then every t for free. A t map is blended
per output pixel between the outputs at its lowest and highest t.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch

from ...device import Placement, check_finite
from ...errors import KnobError
from ...progress import ProgressCallback, emit
from ...receptive import context_for, receptive_radius
from ...student_file import StudentFile
from ...tiling import tiled_apply
from ...tmap import TValue
from ..base import RunOptions, run_in_fp32
from ..framing import OutputsByT, to_size
from .architectures import descriptor_from_state

__all__ = ["ClassicModel", "MAX_CONTEXT"]

logger = logging.getLogger(__name__)

MAX_CONTEXT = 64
"""Most pixels of context a tile reads on each side."""


class ClassicModel:
    """A loaded classic network as a runnable model of the pipeline."""

    tile = 256
    """Input tile (pixels) for inputs above :attr:`untiled_pixels`."""
    untiled_pixels = 512 * 512
    """Inputs up to this many pixels run in one piece when no ``tile`` is given."""
    overlap = 16

    def __init__(self, student: StudentFile, placement: Placement) -> None:
        self.meta = student.meta
        state = {k[len("net."):]: v for k, v in student.tensors.items() if k.startswith("net.")}
        faithful = {k[len("fidelity."):]: v for k, v in student.tensors.items() if k.startswith("fidelity.")}
        if (self.meta.knob.kind == "blend") != bool(faithful) or self.meta.knob.kind not in ("none", "blend"):
            raise KnobError(f"a classic student's knob is `blend` with a fidelity network or `none` without; this file declares "
                            f"{self.meta.knob.kind!r} and {'a' if faithful else 'no'} fidelity network.")
        self.descriptor: Any = descriptor_from_state(state, source="classic student `net.*`")
        fidelity: Any = descriptor_from_state(faithful, source="classic student `fidelity.*`") if faithful else None
        self.fidelity = fidelity
        self.interpolate = fidelity is not None and self._same_layout(state, faithful)
        """A pair of one layout: weights interpolated (else outputs blended)."""
        self.ends = ({k: v.float().clone() for k, v in self.descriptor.model.state_dict().items()},
                     {k: v.float().clone() for k, v in fidelity.model.state_dict().items()}) if self.interpolate else None
        self.weights_at: float | None = 0.0 if self.interpolate else None
        self.architecture = str(self.descriptor.architecture.name)
        self.scale = int(self.descriptor.scale)
        self.net = self.descriptor.model.eval().requires_grad_(False)
        self.placement = self._supported(placement)
        radius = receptive_radius(self.net, 3, probe=self._probe())
        self.context = min(context_for(radius, align=8), MAX_CONTEXT)
        """Pixels of real image around each tile: the measured receptive radius, capped."""
        self.placement.place(self.net)
        if self.fidelity is not None and not self.interpolate:
            self.placement.place(self.fidelity.model.eval().requires_grad_(False))

    @staticmethod
    def _same_layout(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
        return a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)

    def _set_weights(self, t: float) -> None:
        """w(t) = (1 - t) w0 + t w1 into the network (interpolating pairs), unless already there."""
        if self.ends is None or self.weights_at == t:
            return
        real, faithful = self.ends
        with torch.no_grad():
            for key, value in self.net.state_dict().items():
                value.copy_(torch.lerp(real[key], faithful[key], t) if value.is_floating_point() else real[key])
        self.weights_at = t

    def _probe(self) -> int:
        requirement = self.descriptor.size_requirements
        return max(32, requirement.minimum, requirement.multiple_of * 2)

    def _supported(self, placement: Placement) -> Placement:
        """The placement with a dtype the architecture supports (spandrel says which): bf16 or fp16
        it does not support runs in fp32 instead, with a note in the log."""
        wanted = placement.dtype
        ends = [self.descriptor] + ([self.fidelity] if self.fidelity is not None else [])
        ok = {torch.float32: True, torch.bfloat16: all(d.supports_bfloat16 for d in ends), torch.float16: all(d.supports_half for d in ends)}
        if ok.get(wanted, False):
            return placement
        logger.info("%s does not support %s; it runs in float32", self.architecture, wanted)
        return replace(placement, dtype=torch.float32, vae_dtype=torch.float32, decoder=None)

    def _run(self, x: torch.Tensor, options: RunOptions, on_progress: ProgressCallback | None, descriptor: Any = None) -> torch.Tensor:
        dtype, descriptor = self.placement.dtype, descriptor or self.descriptor

        def network(piece: torch.Tensor) -> torch.Tensor:
            return descriptor(self.placement.prepare(piece, dtype)).float().cpu()

        whole = options.tiling == "off" or (options.tile is None and x.shape[-2] * x.shape[-1] <= self.untiled_pixels)
        tile = max(x.shape[-2:]) if whole else options.tile or self.tile
        overlap = self.overlap if options.tile_overlap is None else options.tile_overlap
        return tiled_apply(network, x, tile=tile, overlap=min(overlap, tile - 1), scale=self.scale, context=self.context,
                           on_tile=lambda done, total: emit(on_progress, "network", done, total))

    @torch.inference_mode()
    def forward(self, lr: torch.Tensor, *, size: tuple[int, int], ts: list[TValue] | None, options: RunOptions,
                on_progress: ProgressCallback | None = None) -> list[torch.Tensor]:
        """(N, 3, h, w) in [0, 1] -> one (N, 3, *size) float32 tensor in [0, 1] per t (one when the
        student has no knob)."""
        return self.prepare(lr, size=size, options=options).render(ts, on_progress)

    def prepare(self, lr: torch.Tensor, *, size: tuple[int, int], options: RunOptions,
                on_progress: ProgressCallback | None = None) -> OutputsByT:
        """Interpolated weights: one forward per t, memoised. Two networks: both outputs on the first
        render, every t after that a mix of them (no network run)."""
        pair: list[torch.Tensor] = []

        def compute(t: float, progress: ProgressCallback | None) -> torch.Tensor:
            if self.fidelity is None:
                return self._output(lr, size, options, progress)
            if self.interpolate:  # one forward per t with the interpolated weights
                self._set_weights(t)
                return self._output(lr, size, options, progress)
            if not pair:  # the two networks' outputs once, every t a mix of them
                pair.extend(self._output(lr, size, options, progress, end) for end in (self.descriptor, self.fidelity))
            return torch.lerp(pair[0], pair[1], t)

        no_knob = "this classic student has no t knob (it is one network, not a blend pair)." if self.fidelity is None else None
        return OutputsByT(compute, size, default=float(self.meta.knob.default_t or 0.0), no_knob=no_knob)

    def _output(self, lr: torch.Tensor, size: tuple[int, int], options: RunOptions, on_progress: ProgressCallback | None,
                descriptor: Any = None) -> torch.Tensor:
        emit(on_progress, "network", 0, 1)
        out = self._run(lr.float(), options, on_progress, descriptor)
        check_finite(out, "the network output")
        return to_size(out, lr, size, options)

    @contextmanager
    def in_fp32(self) -> Iterator[None]:
        """Run in float32 for the duration (the NaN retry), then go back to the loaded dtype."""
        networks = [(self.net, self.placement.dtype)]
        if self.fidelity is not None and not self.interpolate:
            networks.append((self.fidelity.model, self.placement.dtype))
        with run_in_fp32(self, networks):
            yield
