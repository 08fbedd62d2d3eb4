"""The ``resshift-onestep`` family: ResShift-family students (SinSR, TAD-SR, co-learning) and the
ResShift teacher.

Files: ``swin_unet.py`` (the network, public parameter names), ``vq_autoencoder.py`` (VQ-f4 in
diffusers with the latent-diffusion names), ``shift_diffusion.py`` (the schedule and samplers),
``model.py`` (the loaded student), ``convert.py`` (public ``.pth`` checkpoints), this descriptor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...device import Placement
from ...errors import IncompatibleWeightsError
from ...knob import Knob
from ...student_file import FieldBounds, StudentFile, StudentMeta, check_fields
from ..family import CheckpointFormat, CpuFastPath, Family, LoadContext, TilingPolicy
from .convert import SCHEDULE_BOUNDS, UNET_BOUNDS, VQ_BOUNDS, convert_inputs, convert_resshift, is_ldm_vq, is_resshift_unet
from .model import FAMILY_NAME, ResShiftModel, student_config
from .shift_diffusion import ShiftSchedule
from .swin_unet import SwinUNet, SwinUNetConfig
from .vq_autoencoder import VQConfig, build_vq, diffusers_to_ldm

__all__ = ["FAMILY", "ResShiftModel", "convert_resshift"]

def _check_config(config: Mapping[str, Any]) -> None:
    """Bounds of a resshift student's ``config``: the network, autoencoder and schedule settings."""
    unknown = sorted(set(config) - {"unet", "vq", "schedule", "sampler"})
    if unknown:
        raise IncompatibleWeightsError(f"resshift student `config` has unknown fields {unknown}; known: sampler, schedule, unet, vq.")
    for name, bounds in (("unet", UNET_BOUNDS), ("vq", VQ_BOUNDS), ("schedule", SCHEDULE_BOUNDS)):
        part = config.get(name)
        if not isinstance(part, Mapping):
            raise IncompatibleWeightsError(f"resshift student `config` lacks `{name}` (an object); it has {sorted(config)}.")
        check_fields(part, bounds, where=f"resshift student `config.{name}`")
    if config.get("sampler", "onestep") not in ("onestep", "posterior", "ddim"):
        raise IncompatibleWeightsError(f"resshift student `config.sampler` must be onestep, posterior or ddim, got {config.get('sampler')!r}.")


def _build(student: StudentFile, placement: Placement, context: LoadContext) -> ResShiftModel:
    return ResShiftModel(student, placement)


def _random_model(placement: Placement, small: bool) -> ResShiftModel:
    vq_config = VQConfig(ch=32, ch_mult=(1, 2, 4), num_res_blocks=1, n_embed=64) if small else VQConfig()
    unet_config = (SwinUNetConfig(image_size=16, model_channels=32, num_res_blocks=(1, 1, 1, 1), attention_resolutions=(16, 8, 4, 2),
                                  swin_embed_dim=64, window_size=4) if small else SwinUNetConfig())
    tensors = {f"net.unet.{k}": v for k, v in SwinUNet(unet_config).state_dict().items()}
    tensors.update({f"net.vq.{k}": v for k, v in diffusers_to_ldm(build_vq(vq_config).state_dict(), vq_config).items()})
    meta = StudentMeta(family=FAMILY_NAME, knob=Knob(kind="none"), color_fix="none", timestep=14,
                       config=student_config(unet=unet_config, vq=vq_config, schedule=ShiftSchedule(), sampler="onestep"))
    return ResShiftModel(StudentFile(meta, tensors), placement)


FAMILY = Family(
    name=FAMILY_NAME,
    description="ResShift Swin-UNet + VQ-f4 (SinSR, TAD-SR, co-learning students; the ResShift teacher)",
    build=_build,
    random_model=_random_model,
    options=("seed", "tiling", "tile", "tile_overlap", "vae_tile", "memory_budget"),
    tiling=TilingPolicy(tile_unit="latent"),  # tiles: multiples of 64 latent px (checked by the model)
    cpu_fast_path=CpuFastPath(network="bf16", encoder="bf16", decoder="bf16", channels_last=True),
    formats=(
        CheckpointFormat(name="resshift-pth", description="a ResShift-family Swin-UNet (.pth of ResShift, SinSR, TAD-SR)",
                         detect=is_resshift_unet, convert=convert_inputs, companion="ldm-vq-pth", companion_option="--vq"),
        CheckpointFormat(name="ldm-vq-pth", description="the VQ-f4 autoencoder of ResShift (autoencoder_vq_f4.pth)", detect=is_ldm_vq),
    ),
    check_config=_check_config,
    knob_kinds=("none",),
)
