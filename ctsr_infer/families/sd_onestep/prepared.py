"""One image encoded and ready for any t: the latent, its tile plan, and the UNet outputs the knob
needs, each computed on the first render that needs it and kept (the slider of ``ctsr serve``, and
every ``forward`` as a prepare + one render)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ...colorfix import color_fix
from ...device import check_finite
from ...progress import ProgressCallback, emit
from ...tmap import TValue
from ..base import RunOptions, TilePlan

if TYPE_CHECKING:
    from .model import SDOneStep

__all__ = ["PreparedLatents"]


class PreparedLatents:
    """What a render needs of one encoded image; :meth:`render` gives one image per t.

    Cached: the plain student z0 (``none``/``ctsr-flow``), the one-step knob velocity (``ctsr-flow``),
    the two branch outputs (``dual-lora``). A later t costs the knob's arithmetic and one decode;
    ``knob_steps`` > 1 runs its Euler steps for every t (the field is evaluated along each path)."""

    def __init__(self, model: SDOneStep, *, latents: torch.Tensor, plan: TilePlan, upsampled: torch.Tensor,
                 size: tuple[int, int], options: RunOptions) -> None:
        self.model, self.latents, self.plan, self.upsampled = model, latents, plan, upsampled
        self.size, self.options = size, options
        self.cache: dict[str, torch.Tensor] = {}

    def render(self, ts: list[TValue] | None, on_progress: ProgressCallback | None = None) -> list[torch.Tensor]:
        model, plan, cache = self.model, self.plan, self.cache
        emit(on_progress, "denoise", 0, 1)
        if model.meta.knob.kind == "dual-lora":
            finals = model.mix_branches(self.latents, ts, on_progress, plan=plan, cache=cache)
        else:
            if "z0" not in cache:
                eps = model.noise(self.latents, plan=plan, on_progress=on_progress)
                check_finite(eps, "the UNet output")
                cache["z0"] = model.to_x0(self.latents, eps)
                check_finite(cache["z0"], "the denoised latent")
            finals = model.apply_knob(cache["z0"], ts, self.options.knob_steps, on_progress, plan=plan, cache=cache)
        height, width = self.size
        outputs: list[torch.Tensor] = []
        for z in finals:
            emit(on_progress, "decode", 0, 1)
            image = model.decode(z, plan=plan, on_progress=on_progress)
            check_finite(image, "the decoded image")
            image = ((image[..., :height, :width] + 1.0) / 2.0).clamp(0.0, 1.0).cpu()
            outputs.append(color_fix(image, self.upsampled, self.options.color_fix))
        emit(on_progress, "colour fix", 1, 1)
        return outputs
