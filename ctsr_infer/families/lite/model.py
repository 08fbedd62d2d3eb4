"""A loaded ``lite`` student: the network (:mod:`.network`) with tiling, resizing and colour fix.

t is an input of the network (knob kind ``native``): 0 gives the realistic end it was distilled
towards, 1 the faithful end. Other scales resize the x4 output with Pillow's bicubic (antialiased
when shrinking). Large inputs are tiled.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ...device import Placement, check_finite
from ...errors import KnobError
from ...progress import ProgressCallback, emit
from ...receptive import context_for, receptive_radius
from ...student_file import StudentFile
from ...tiling import tiled_apply
from ...tmap import TValue
from ..base import RunOptions, run_in_fp32
from ..framing import OutputsByT, to_size
from ..state import fit_state
from .network import LiteNet, config_from_state

__all__ = ["LiteStudent"]


class LiteStudent:
    """A loaded lite student."""

    border = 8
    """Input pixels replicated around the image before the network (cropped off after): the
    convolutions' zero padding otherwise tints the outermost pixels (a flat colour came back up to 5
    levels off at its edges; 1 level with this border), for 1.27x the work on a 128 px input."""
    tile = 512
    """Input tile size (pixels) for inputs above :attr:`untiled_pixels`. Each tile computes its context
    (the 35 px receptive radius, rounded to 40) again, so small tiles cost more: (512 + 80)² / 512² =
    1.34x the untiled work, against 1.67x for 272 px tiles."""
    untiled_pixels = 1_100_000
    """Inputs up to this many pixels (a 1,048² input) run in one piece when no ``tile`` is given: the
    fastest way (a 512² input: 2.4 s untiled against 3.3 s in 272 px tiles on a 2-core CPU, 1024²:
    16.0 s against 17.3 s) and about as much memory as tiles, since the full-resolution output and
    colour fix dominate (1.49 GB against 1.63 GB peak RSS at 1024²)."""
    overlap = 8
    context = 24
    """Pixels of real image around each tile; set at load to cover the network's measured receptive
    radius (19 px for 8 blocks, 35 for 16), so tiling does not change the result."""

    def __init__(self, student: StudentFile, placement: Placement) -> None:
        self.meta = student.meta
        if self.meta.knob.kind != "native":
            raise KnobError(f"lite students have a `native` knob, this file declares {self.meta.knob.kind!r}.")
        state = {k[len("net.") :]: v for k, v in student.tensors.items() if k.startswith("net.")}
        sizes = config_from_state(state, self.meta.config)
        self.net = fit_state(lambda: LiteNet(**sizes), state, source="lite student `net.*`", what=f"the lite network {sizes}")
        self.placement = placement
        net = self.net.eval().requires_grad_(False)
        # two different t values: the unfolded FiLM path, whose convs the measurement hooks see
        self.context = context_for(receptive_radius(net, 3, probe=16, call=lambda x: net(x.repeat(2, 1, 1, 1), torch.tensor([0.0, 1.0]))),
                                   align=8)
        self.net = placement.place(net)

    def _run(self, x: torch.Tensor, t: float, on_progress: ProgressCallback | None, tile: int | None = None,
             overlap: int | None = None, tiling: str = "auto") -> torch.Tensor:
        device, dtype = self.placement.device, self.placement.dtype

        def network(piece: torch.Tensor) -> torch.Tensor:
            batch = torch.full((piece.shape[0],), t, device=device)
            return self.net(self.placement.prepare(piece, dtype), batch).float().cpu()

        def on_tile(done: int, total: int) -> None:
            emit(on_progress, "network", done, total)

        pad, scale = self.border, self.net.scale
        x = F.pad(x, (pad,) * 4, mode="replicate")
        whole = tiling == "off" or (tile is None and x.shape[-2] * x.shape[-1] <= self.untiled_pixels)
        tile = max(x.shape[-2:]) if whole else tile or self.tile
        overlap = self.overlap if overlap is None else overlap
        out = tiled_apply(network, x, tile=tile, overlap=min(overlap, tile - 1), scale=scale, context=self.context, on_tile=on_tile)
        return out[..., pad * scale : out.shape[-2] - pad * scale, pad * scale : out.shape[-1] - pad * scale]

    @torch.inference_mode()
    def forward(self, lr: torch.Tensor, *, size: tuple[int, int], ts: list[TValue] | None, options: RunOptions,
                on_progress: ProgressCallback | None = None) -> list[torch.Tensor]:
        """(N, 3, h, w) in [0, 1] -> one (N, 3, *size) float32 tensor in [0, 1] per t. The N images go
        through the network together; resizing and colour fix are per image, so each result equals
        its own N = 1 call up to float rounding.

        A t map is an output-space blend (t is a network input for the whole image): the outputs at
        the map's lowest and highest t, mixed per pixel by the map resized to the output."""
        return self.prepare(lr, size=size, options=options).render(ts, on_progress)

    def prepare(self, lr: torch.Tensor, *, size: tuple[int, int], options: RunOptions,
                on_progress: ProgressCallback | None = None) -> OutputsByT:
        """Nothing to run ahead: t is an input of every block (FiLM), so each new t is one forward,
        memoised; the colour references are computed once."""
        references: list[torch.Tensor | None] = [None] * lr.shape[0]

        def compute(t: float, progress: ProgressCallback | None) -> torch.Tensor:
            emit(progress, "network", 0, 1)
            out = self._run(lr, t, progress, options.tile, options.tile_overlap, options.tiling)
            check_finite(out, "the network output")
            return to_size(out, lr, size, options, references)

        return OutputsByT(compute, size, default=float(self.meta.knob.default_t or 0.0))

    @contextmanager
    def in_fp32(self) -> Iterator[None]:
        """Run in float32 for the duration (the NaN retry), then go back to the loaded dtype."""
        with run_in_fp32(self, [(self.net, self.placement.dtype)]):
            yield
