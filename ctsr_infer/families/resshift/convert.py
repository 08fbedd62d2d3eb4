"""Public ResShift-family checkpoints -> a resshift-onestep student file.

Formats: ``resshift-pth`` (the Swin-UNet of ResShift, SinSR, TAD-SR: ``resshift_realsrx4_s15_v1.pth``,
``SinSR_v1.pth`` ...; the state dict at the top level or under ``state_dict``, optional
``module.``/``_orig_mod.`` prefixes) converted together with its companion ``ldm-vq-pth`` (the
VQ-f4 autoencoder ``autoencoder_vq_f4.pth``, a bare latent-diffusion state dict). Both are detected
from their key names and loaded strictly into the networks before anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch

from ...errors import IncompatibleWeightsError
from ...knob import Knob
from ...safe_pickle import read_pickled_checkpoint
from ...student_file import FieldBounds, StudentFile, StudentMeta, check_fields
from ..family import Checkpoint, ConvertInputs
from .model import FAMILY_NAME, student_config
from .shift_diffusion import Sampler, ShiftSchedule
from .swin_unet import SwinUNet, SwinUNetConfig, load_public_state, strip_prefixes
from .vq_autoencoder import VQConfig, build_vq, load_ldm_state

__all__ = ["convert_resshift", "is_resshift_unet", "is_ldm_vq", "convert_inputs"]

SAMPLERS = ("onestep", "posterior", "ddim")

UNET_BOUNDS: dict[str, FieldBounds] = {
    "image_size": (int, 1, 1024), "in_channels": (int, 1, 64), "model_channels": (int, 1, 1024), "out_channels": (int, 1, 64),
    "attention_resolutions": (int, 1, 1024), "channel_mult": (int, 1, 16), "num_res_blocks": (int, 1, 16),
    "num_head_channels": (int, 1, 1024), "swin_depth": (int, 1, 16), "swin_embed_dim": (int, 1, 4096), "window_size": (int, 1, 64),
    "mlp_ratio": ((int, float), 0.25, 16), "lq_channels": (int, 0, 64),
}
VQ_BOUNDS: dict[str, FieldBounds] = {
    "ch": (int, 1, 1024), "ch_mult": (int, 1, 16), "num_res_blocks": (int, 1, 16), "z_channels": (int, 1, 64),
    "embed_dim": (int, 1, 64), "n_embed": (int, 1, 1 << 17), "in_channels": (int, 1, 64), "out_ch": (int, 1, 64),
}
SCHEDULE_BOUNDS: dict[str, FieldBounds] = {
    "steps": (int, 1, 1000), "kappa": ((int, float), 1e-6, 100), "etas_end": ((int, float), 1e-6, 1), "min_noise_level": ((int, float), 1e-6, 1),
    "power": ((int, float), 1e-6, 100), "normalize_input": (bool, 0, 1), "scale_factor": ((int, float), 1e-6, 100),
}


def check_settings(settings: Mapping[str, Any], *, where: str) -> None:
    """Types and bounds of converter settings (``unet``, ``vq``, ``schedule`` objects; ``sampler``)."""
    for name, bounds in (("unet", UNET_BOUNDS), ("vq", VQ_BOUNDS), ("schedule", SCHEDULE_BOUNDS)):
        part = settings.get(name)
        if part is None:
            continue
        if not isinstance(part, Mapping):
            raise IncompatibleWeightsError(f"{where} `{name}` must be an object of settings, got {part!r}.")
        check_fields(part, bounds, where=f"{where} `{name}`")


def is_resshift_unet(checkpoint: Checkpoint) -> bool:
    """A Swin-UNet of the ResShift layout: the LDM UNet's block names plus Swin attention tables."""
    state = checkpoint.state
    if state is None:
        return False
    keys = strip_prefixes(state).keys()
    return "input_blocks.0.0.weight" in keys and "time_embed.0.weight" in keys and any(k.endswith("relative_position_bias_table") for k in keys)


def is_ldm_vq(checkpoint: Checkpoint) -> bool:
    """A latent-diffusion VQ autoencoder: encoder, decoder and a codebook."""
    state = checkpoint.state
    return state is not None and {"encoder.conv_in.weight", "decoder.conv_out.weight", "quantize.embedding.weight"} <= set(state)


def _from_data(unet_data: Any, vq_data: Any, *, unet_source: str, vq_source: str, schedule: Mapping[str, Any] | None,
               sampler: str, unet: Mapping[str, Any] | None, vq: Mapping[str, Any] | None, licence: str,
               provenance: Mapping[str, Any]) -> StudentFile:
    if sampler not in SAMPLERS:
        raise IncompatibleWeightsError(f"`sampler` must be one of {list(SAMPLERS)}, got {sampler!r}.")
    check_settings({"unet": unet, "vq": vq, "schedule": schedule}, where="ResShift conversion setting")
    unet_config = SwinUNetConfig.from_config(unet or {})
    vq_config = VQConfig.from_config(vq or {})
    shift = ShiftSchedule.from_config(schedule or {})
    if not isinstance(unet_data, Mapping):
        raise IncompatibleWeightsError(f"{unet_source}: expected a state dict, found {type(unet_data).__name__}.")
    net = SwinUNet(unet_config)
    load_public_state(net, cast(Mapping[str, Any], unet_data), source=unet_source)
    if isinstance(vq_data, Mapping) and isinstance(vq_data.get("state_dict"), Mapping):
        vq_data = vq_data["state_dict"]
    if not isinstance(vq_data, Mapping):
        raise IncompatibleWeightsError(f"{vq_source}: expected a state dict, found {type(vq_data).__name__}.")
    load_ldm_state(build_vq(vq_config), cast(Mapping[str, torch.Tensor], vq_data), vq_config, source=vq_source)
    tensors = {f"net.unet.{k}": v.detach().float() for k, v in net.state_dict().items()}
    tensors.update({f"net.vq.{k}": cast(torch.Tensor, v).float() for k, v in vq_data.items()})
    meta = StudentMeta(
        family=FAMILY_NAME, knob=Knob(kind="none"), scale=4.0, color_fix="none", timestep=shift.steps - 1, licence=licence,
        provenance=dict(provenance), config=student_config(unet=unet_config, vq=vq_config, schedule=shift,
                                                              sampler=cast(Sampler, sampler)),  # checked above
    )
    student = StudentFile(meta=meta, tensors=tensors)
    student.validate(source=unet_source)
    return student


def convert_resshift(
    unet_path: str | os.PathLike[str],
    vq_path: str | os.PathLike[str],
    *,
    schedule: Mapping[str, Any] | None = None,
    sampler: str = "onestep",
    unet: Mapping[str, Any] | None = None,
    vq: Mapping[str, Any] | None = None,
    licence: str = "unknown",
    provenance: Mapping[str, Any] | None = None,
) -> StudentFile:
    """Convert a ResShift-family UNet checkpoint plus the VQ-f4 autoencoder into one student file.

    Both files are read with the restricted unpickler. ``schedule``/``unet``/``vq`` override the
    defaults of :class:`ShiftSchedule`, :class:`SwinUNetConfig`, :class:`VQConfig` (the x4 real-SR
    settings). ``sampler``: ``onestep`` for distilled students, ``posterior`` or ``ddim`` for the teacher.
    """
    return _from_data(read_pickled_checkpoint(unet_path), read_pickled_checkpoint(vq_path),
                      unet_source=f"ResShift-family checkpoint `{unet_path}`", vq_source=f"VQ autoencoder `{vq_path}`",
                      schedule=schedule, sampler=sampler, unet=unet, vq=vq, licence=licence,
                      provenance={"converted_from": Path(unet_path).name, "autoencoder": Path(vq_path).name, **dict(provenance or {})})


def convert_inputs(inputs: ConvertInputs) -> StudentFile:
    """The ``resshift-pth`` converter of the registry (the companion is the VQ autoencoder)."""
    if inputs.companion is None:
        raise IncompatibleWeightsError(f"converting the ResShift-family UNet `{inputs.source.path}` needs the VQ autoencoder "
                                       "(autoencoder_vq_f4.pth): pass it with --vq FILE.")
    settings = inputs.settings
    unknown = sorted(set(settings) - {"sampler", "schedule", "unet", "vq"})
    if unknown:
        raise IncompatibleWeightsError(f"unknown ResShift conversion setting(s) {unknown}; known: sampler, schedule, unet, vq.")
    check_settings(settings, where="ResShift conversion setting")
    source, companion = inputs.source, inputs.companion
    return _from_data(source.data, companion.data, unet_source=f"ResShift-family checkpoint `{source.path}`",
                      vq_source=f"VQ autoencoder `{companion.path}`", schedule=settings.get("schedule"),
                      sampler=str(settings.get("sampler", "onestep")), unet=settings.get("unet"), vq=settings.get("vq"),
                      licence=inputs.licence,
                      provenance={"converted_from": source.path.name, "autoencoder": companion.path.name, **dict(inputs.provenance)})
