"""The ``sd-onestep`` family: SD 2.1-base UNet + VAE with LoRA fused at load (OSEDiff, CTSR, PiSA-SR).

Files: ``base_model.py`` (the base model: schedule, loading, prompt embedding), ``model.py`` (the
loaded student: encode, one UNet call, the ctsr-flow and dual-lora knobs, decode, tiling),
``convert.py`` (OSEDiff's ``osediff.pkl``), ``pisa.py`` (PiSA-SR's ``pisa_sr.pkl``), this descriptor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ...device import Placement
from ...errors import IncompatibleWeightsError
from ...student_file import StudentFile, StudentMeta
from ..family import CheckpointFormat, CpuFastPath, Family, LoadContext, TilingPolicy
from .base_model import SD21_UNET, SD21_VAE, SD_SMALL_UNET, SD_SMALL_VAE, alphas_cumprod_scaled_linear, load_base
from .convert import convert_inputs, convert_osediff, is_osediff
from .model import FAMILY_NAME, KNOB_KINDS, PREDICTIONS, SDOneStep
from .pisa import convert_inputs as convert_pisa_inputs
from .pisa import convert_pisa, is_pisa

__all__ = ["FAMILY", "SDOneStep", "convert_osediff", "convert_pisa"]


def _build(student: StudentFile, placement: Placement, context: LoadContext) -> SDOneStep:
    if context.base_dir is None:
        raise IncompatibleWeightsError(f"`{context.name}` names no base model; give a diffusers folder with --base DIR (Python: `base=`).")
    unet, vae, alphas_cumprod = load_base(context.base_dir)
    return SDOneStep(student, unet, vae, alphas_cumprod, placement)


def _random_model(placement: Placement, small: bool) -> SDOneStep:
    from diffusers.models import AutoencoderKL, UNet2DConditionModel

    unet_config, vae_config = (SD_SMALL_UNET, SD_SMALL_VAE) if small else (SD21_UNET, SD21_VAE)
    prompt = torch.randn(1, 77, int(unet_config["cross_attention_dim"])) * 0.1
    student = StudentFile(StudentMeta(family=FAMILY_NAME, color_fix="wavelet"), {"prompt_embeds": prompt})
    unet, vae = UNet2DConditionModel(**unet_config).eval(), AutoencoderKL(**vae_config).eval()
    return SDOneStep(student, unet, vae, alphas_cumprod_scaled_linear(), placement)


def _check_config(config: Mapping[str, Any]) -> None:
    """The base model defines the network; ``config`` says only how x0 follows from the UNet's output."""
    unknown = sorted(set(config) - {"prediction"})
    if unknown:
        raise IncompatibleWeightsError(f"sd-onestep student `config` has unknown fields {unknown}; known: prediction.")
    if config.get("prediction", "epsilon") not in PREDICTIONS:
        raise IncompatibleWeightsError(f"sd-onestep student `config.prediction` must be one of {list(PREDICTIONS)}, "
                                       f"got {config.get('prediction')!r}.")


FAMILY = Family(
    name=FAMILY_NAME,
    description="SD 2.1-base UNet + VAE, LoRA fused at load (OSEDiff, CTSR, PiSA-SR)",
    build=_build,
    random_model=_random_model,
    options=("knob_steps", "seed", "encode", "tiling", "tile", "tile_overlap", "vae_tile", "memory_budget"),
    tiling=TilingPolicy(min_tile=16, tile_unit="latent"),
    # UNet and VAE encoder stay fp32: the one-step x0 formula divides the latent and the UNet's eps by
    # sqrt(alpha_bar_999), which multiplies their bf16 error by 14.6 (tiny model: 31 dB); the decoder
    # is bf16
    cpu_fast_path=CpuFastPath(network="fp32", encoder="fp32", decoder="bf16", channels_last=True),
    formats=(CheckpointFormat(name="osediff-pkl", description="OSEDiff's osediff.pkl (LoRA of SD 2.1-base)", detect=is_osediff,
                              convert=convert_inputs, needs_base=True),
             CheckpointFormat(name="pisa-sr-pkl", description="PiSA-SR's pisa_sr.pkl (pixel and semantic LoRA of SD 2.1-base)",
                              detect=is_pisa, convert=convert_pisa_inputs, needs_base=True)),
    check_config=_check_config,
    needs_base=True,
    knob_kinds=KNOB_KINDS,
)
