"""``lite``: a compact feed-forward student that runs fast on a CPU (the embedded default).

The network works at the input resolution: a head conv, residual blocks whose first conv is
modulated by FiLM (scale and shift per channel) from an embedding of t, and a sub-pixel (pixel
shuffle) x4 tail added to a bilinear x4 of the input. t is an input of the network (knob kind
``native``): 0 gives the realistic end it was distilled towards, 1 the faithful end. Other scales
resize the x4 output with Pillow's bicubic (antialiased when shrinking). Large inputs are tiled.
"""

from __future__ import annotations


import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import StudentFile
from ..colorfix import color_fix
from ..device import Placement, check_finite
from ..errors import IncompatibleWeightsError, KnobError
from ..image import resize_bicubic
from ..progress import ProgressCallback, emit
from ..receptive import context_for, receptive_radius
from ..tiling import tiled_apply
from .base import RunOptions, run_in_fp32

__all__ = ["LiteNet", "LiteStudent"]


class LiteNet(nn.Module):
    """(N, 3, h, w) in [0, 1] and t (N,) in [0, 1] -> (N, 3, 4h, 4w), about [0, 1]."""

    def __init__(self, *, channels: int = 48, blocks: int = 8, scale: int = 4, embed: int = 16) -> None:
        super().__init__()
        self.channels, self.blocks, self.scale, self.embed = channels, blocks, scale, embed
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.film = nn.Sequential(nn.Linear(2 * embed, 64), nn.SiLU(), nn.Linear(64, blocks * 2 * channels))
        self.convs1 = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(blocks))
        self.convs2 = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(blocks))
        self.body = nn.Conv2d(channels, channels, 3, padding=1)
        self.tail = nn.Conv2d(channels, 3 * scale * scale, 3, padding=1)
        nn.init.zeros_(self.film[-1].weight)
        nn.init.zeros_(self.film[-1].bias)
        icnr_(self.tail.weight, scale)
        nn.init.zeros_(self.tail.bias)

    def config(self) -> dict[str, int]:
        return {"channels": self.channels, "blocks": self.blocks, "scale": self.scale, "embed": self.embed}

    def _t_features(self, t: torch.Tensor) -> torch.Tensor:
        frequencies = torch.exp(torch.arange(self.embed, device=t.device, dtype=torch.float32) * (math.log(100.0) / self.embed))
        angles = t.float()[:, None] * frequencies[None] * math.pi
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        film = self.film(self._t_features(t).to(x.dtype)).view(x.shape[0], self.blocks, 2, self.channels, 1, 1)
        features = F.leaky_relu(self.head(x * 2.0 - 1.0), 0.1)
        skip = features
        # one t for the whole batch at inference (every runtime call): FiLM folds into conv1's weights
        # and bias (scale the output channels, shift the bias), which saves two full-resolution passes
        # per block; the same result up to float rounding
        folded = not torch.is_grad_enabled() and (t.numel() == 1 or bool((t == t.flatten()[0]).all()))
        for index in range(self.blocks):
            conv = self.convs1[index]
            if folded:
                gain, shift = 1.0 + film[0, index, 0, :, 0, 0], film[0, index, 1, :, 0, 0]
                weight = conv.weight * gain.to(conv.weight.dtype)[:, None, None, None]
                bias = conv.bias * gain.to(conv.bias.dtype) + shift.to(conv.bias.dtype) if conv.bias is not None else shift
                residual = F.conv2d(features, weight, bias, padding=conv.padding)
            else:
                residual = conv(features)
                residual = residual * (1.0 + film[:, index, 0]) + film[:, index, 1]
            residual = self.convs2[index](F.leaky_relu(residual, 0.1, inplace=True))
            features = features + residual
        features = self.body(features) + skip
        detail = F.pixel_shuffle(self.tail(features), self.scale)
        base = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        if folded and detail.dtype == base.dtype:  # inference: in place, one output-sized tensor less at the peak
            return detail.add_(base)
        return base + detail


def icnr_(weight: torch.Tensor, scale: int) -> None:
    """ICNR initialisation of a conv feeding ``pixel_shuffle(scale)``: the scale² sub-pixel outputs of
    each channel start identical, so the untrained tail is a nearest-neighbour upsampler and training
    does not start from (and tends not to keep) a checkerboard (Aitken et al., 2017)."""
    out_channels = weight.shape[0] // (scale * scale)
    base = torch.empty(out_channels, *weight.shape[1:])
    nn.init.kaiming_normal_(base, a=0.1)
    with torch.no_grad():
        weight.copy_(base.repeat_interleave(scale * scale, dim=0) * 0.1)


class LiteStudent:
    """A loaded lite student."""

    family = "lite"
    batchable = True
    """``forward`` takes N > 1 images of one size (the batch runner stacks small equal-size images)."""
    options: tuple[str, ...] = ("tiling", "tile", "tile_overlap")
    """The family-specific options this family reads (``tiling`` auto/off, input tile and its overlap, in input pixels)."""
    min_tile = 16
    """Smallest input tile (pixels)."""
    border = 8
    """Input pixels replicated around the image before the network (cropped off after): the
    convolutions' zero padding otherwise tints the outermost pixels (a flat colour came back up to 5
    levels off at its edges; 1 level with this border), for 1.27x the work on a 128 px input."""
    tiling_modes = ("auto", "off")
    """``exact``/``fast`` are VAE tiling modes; this family has no VAE."""
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
        try:
            self.net = LiteNet(**{k: int(v) for k, v in self.meta.config.items()})
        except TypeError as exc:
            raise IncompatibleWeightsError(f"lite student `config` {dict(self.meta.config)} is malformed: {exc}") from exc
        state = {k[len("net.") :]: v for k, v in student.tensors.items() if k.startswith("net.")}
        missing = sorted(set(self.net.state_dict()) - set(state))
        unexpected = sorted(set(state) - set(self.net.state_dict()))
        if missing or unexpected:
            raise IncompatibleWeightsError(f"lite student does not fit its config: missing {missing[:5]}, unexpected {unexpected[:5]}.")
        for key, value in state.items():
            expected = self.net.state_dict()[key].shape
            if value.shape != expected:
                raise IncompatibleWeightsError(f"lite student tensor `net.{key}` has shape {tuple(value.shape)}, expected {tuple(expected)}.")
        self.net.load_state_dict({k: v.float() for k, v in state.items()})
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
    def forward(self, lr: torch.Tensor, *, size: tuple[int, int], ts: list[float] | None, options: RunOptions,
                on_progress: ProgressCallback | None = None) -> list[torch.Tensor]:
        """(N, 3, h, w) in [0, 1] -> one (N, 3, *size) float32 tensor in [0, 1] per t. The N images go
        through the network together; resizing and colour fix are per image, so each result equals
        its own N = 1 call up to float rounding."""
        outputs: list[torch.Tensor] = []
        values = ts if ts is not None else [float(self.meta.knob.default_t or 0.0)]
        references: list[torch.Tensor | None] = [None] * lr.shape[0]
        for t in values:
            emit(on_progress, "network", 0, 1)
            out = self._run(lr, t, on_progress, options.tile, options.tile_overlap, options.tiling)
            check_finite(out, "the network output")
            frames = []
            for index, frame in enumerate(out if options.color_fix != "none" else out.clamp(0.0, 1.0)):
                frame = frame[None]
                if tuple(frame.shape[-2:]) != size:
                    resized = resize_bicubic(frame[0].permute(1, 2, 0).numpy(), size, bit_depth=32)
                    frame = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)[None]
                if options.color_fix != "none":
                    if references[index] is None:
                        low = lr[index].permute(1, 2, 0).numpy()
                        references[index] = torch.from_numpy(resize_bicubic(low, size, bit_depth=options.bit_depth)).permute(2, 0, 1)[None]
                    # on the unclamped output: clamping first would bias the colour of saturated areas
                    frame = color_fix(frame, references[index], options.color_fix, inplace=True)
                frames.append(frame)
            outputs.append(frames[0] if len(frames) == 1 else torch.cat(frames))
        return outputs

    @contextmanager
    def in_fp32(self) -> Iterator[None]:
        """Run in float32 for the duration (the NaN retry), then go back to the loaded dtype."""
        with run_in_fp32(self, [(self.net, self.placement.dtype)]):
            yield
