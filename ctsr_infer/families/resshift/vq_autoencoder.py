"""ResShift's VQ-f4 autoencoder (``autoencoder_vq_f4.pth``, latent-diffusion's ``VQModelTorch``) as a
diffusers :class:`~diffusers.VQModel`, with the key converter from the latent-diffusion layout.

The public file is a bare state dict in latent-diffusion naming (``encoder.down.0.block.0.norm1``,
``encoder.mid.attn_1.q`` as 1x1 convolutions, ``quantize.embedding.weight`` [8192, 3], ...).
:func:`ldm_to_diffusers` maps every key to diffusers' naming (the decoder's ``up`` blocks are stored
in reverse order there) and reshapes the attention projections from 1x1 convolutions to linear
weights; a key it does not know fails naming it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from ...errors import IncompatibleWeightsError
from ..state import check_state

if TYPE_CHECKING:  # from diffusers.models: mypy reads diffusers' top level as its dummy objects
    from diffusers.models import VQModel

__all__ = ["VQConfig", "build_vq", "ldm_to_diffusers", "diffusers_to_ldm", "load_ldm_state", "quantize_nearest"]


@dataclass(frozen=True)
class VQConfig:
    """``autoencoder.params`` of ResShift's configs (defaults: ``autoencoder_vq_f4``)."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 3
    embed_dim: int = 3
    n_embed: int = 8192
    in_channels: int = 3
    out_ch: int = 3

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> VQConfig:
        unknown = sorted(set(config) - set(cls.__dataclass_fields__))
        if unknown:
            raise IncompatibleWeightsError(f"unknown VQ autoencoder setting(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}.")
        values = dict(config)
        if "ch_mult" in values:
            values["ch_mult"] = tuple(int(v) for v in values["ch_mult"])
        return cls(**values)

    def to_config(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @property
    def factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def build_vq(config: VQConfig) -> VQModel:
    """An uninitialised-weights diffusers ``VQModel`` of this configuration (eval mode)."""
    from diffusers.models import VQModel

    levels = len(config.ch_mult)
    model = VQModel(
        in_channels=config.in_channels, out_channels=config.out_ch,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(config.ch * m for m in config.ch_mult), layers_per_block=config.num_res_blocks,
        latent_channels=config.z_channels, num_vq_embeddings=config.n_embed, vq_embed_dim=config.embed_dim,
        norm_num_groups=32, sample_size=256,
    )
    return model.eval().requires_grad_(False)


def quantize_nearest(z: torch.Tensor, codebook: torch.Tensor, *, chunk: int = 16384) -> torch.Tensor:
    """Replace every latent vector of ``z`` (N, D, H, W) by its nearest code (squared distance
    |z|^2 + |e|^2 - 2 z.e, as latent-diffusion's quantiser), ``chunk`` positions at a time so a large
    latent never builds the full (positions x codes) distance matrix."""
    batch, dim, height, width = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, dim).float()
    codes = codebook.float().to(flat.device)
    norms = (codes**2).sum(dim=1)
    out = torch.empty_like(flat)
    for start in range(0, flat.shape[0], chunk):
        part = flat[start : start + chunk]
        distance = (part**2).sum(dim=1, keepdim=True) + norms[None] - 2 * part @ codes.T
        out[start : start + chunk] = codes[distance.argmin(dim=1)]
    return out.reshape(batch, height, width, dim).permute(0, 3, 1, 2).to(z.dtype)


_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_TOP = {"conv_in", "conv_out", "norm_out"}


def _map_key(key: str, levels: int) -> str | None:
    """latent-diffusion name -> diffusers name, or None when the key is not of this model."""
    if key.startswith(("quant_conv.", "post_quant_conv.", "quantize.embedding.")):
        return key
    match = re.fullmatch(r"(encoder|decoder)\.(.+)\.(weight|bias)", key)
    if not match:
        return None
    part, body, kind = match.groups()
    head = body.split(".")[0]
    if body in _TOP:
        return f"{part}.{'conv_norm_out' if body == 'norm_out' else body}.{kind}"
    m = re.fullmatch(r"mid\.block_([12])\.(\w+)", body)
    if m and m[2] in _RESNET:
        return f"{part}.mid_block.resnets.{int(m[1]) - 1}.{_RESNET[m[2]]}.{kind}"
    m = re.fullmatch(r"mid\.attn_1\.(\w+)", body)
    if m and m[1] in _ATTN:
        return f"{part}.mid_block.attentions.0.{_ATTN[m[1]]}.{kind}"
    m = re.fullmatch(r"(down|up)\.(\d+)\.block\.(\d+)\.(\w+)", body)
    if m and m[4] in _RESNET and ((head == "down") == (part == "encoder")):
        level = int(m[2]) if part == "encoder" else levels - 1 - int(m[2])
        return f"{part}.{'down_blocks' if part == 'encoder' else 'up_blocks'}.{level}.resnets.{m[3]}.{_RESNET[m[4]]}.{kind}"
    m = re.fullmatch(r"down\.(\d+)\.downsample\.conv", body)
    if m and part == "encoder":
        return f"encoder.down_blocks.{m[1]}.downsamplers.0.conv.{kind}"
    m = re.fullmatch(r"up\.(\d+)\.upsample\.conv", body)
    if m and part == "decoder":
        return f"decoder.up_blocks.{levels - 1 - int(m[1])}.upsamplers.0.conv.{kind}"
    return None


def ldm_to_diffusers(state: Mapping[str, torch.Tensor], config: VQConfig, *, source: str) -> dict[str, torch.Tensor]:
    """Rename a latent-diffusion ``VQModelTorch`` state dict to diffusers' ``VQModel`` names."""
    levels = len(config.ch_mult)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise IncompatibleWeightsError(f"{source}: `{key}` is a {type(value).__name__}, expected a tensor.")
        name = _map_key(key, levels)
        if name is None:
            raise IncompatibleWeightsError(f"{source}: unexpected key `{key}` for a VQ-f{config.factor} autoencoder (latent-diffusion layout).")
        if ".attentions.0.to_" in name and name.endswith(".weight") and value.dim() == 4:
            value = value[:, :, 0, 0]
        out[name] = value
    return out


def diffusers_to_ldm(state: Mapping[str, torch.Tensor], config: VQConfig) -> dict[str, torch.Tensor]:
    """The inverse of :func:`ldm_to_diffusers`: a diffusers ``VQModel`` state dict in the public layout."""
    out = {}
    for key in _public_keys(config):
        value = state[cast(str, _map_key(key, len(config.ch_mult)))]
        out[key] = value[:, :, None, None] if ".attn_1." in key and key.endswith(".weight") and ".norm." not in key else value
    return out


def load_ldm_state(model: nn.Module, state: Mapping[str, torch.Tensor], config: VQConfig, *, source: str,
                   check_only: bool = False) -> None:
    """Load a latent-diffusion-layout state dict into ``model`` strictly, naming missing keys in
    the public layout (``check_only``: names and shapes only, e.g. against a model on the meta device)."""
    converted = ldm_to_diffusers(state, config, source=source)
    inverse = {_map_key(k, len(config.ch_mult)): k for k in _public_keys(config)}
    check_state(model.state_dict(), converted, source=source, what=f"the VQ autoencoder {config.to_config()}",
                name=lambda key: inverse.get(key) or key)
    if check_only:
        return
    model.load_state_dict({k: v.float() for k, v in converted.items()}, strict=True)


def _public_keys(config: VQConfig) -> list[str]:
    """Every parameter name of the latent-diffusion layout for ``config`` (for messages and tests)."""
    keys = ["quant_conv.weight", "quant_conv.bias", "post_quant_conv.weight", "post_quant_conv.bias", "quantize.embedding.weight"]
    levels = len(config.ch_mult)

    def resnet(prefix: str, shortcut: bool) -> None:
        for name in ("norm1", "conv1", "norm2", "conv2", *(("nin_shortcut",) if shortcut else ())):
            keys.extend(f"{prefix}.{name}.{kind}" for kind in ("weight", "bias"))

    for part in ("encoder", "decoder"):
        for name in ("conv_in", "norm_out", "conv_out"):
            keys.extend(f"{part}.{name}.{kind}" for kind in ("weight", "bias"))
        for block in (1, 2):
            resnet(f"{part}.mid.block_{block}", False)
        keys.extend(f"{part}.mid.attn_1.{name}.{kind}" for name in _ATTN for kind in ("weight", "bias"))
    channels = config.ch
    for level, mult in enumerate(config.ch_mult):
        for index in range(config.num_res_blocks):
            resnet(f"encoder.down.{level}.block.{index}", index == 0 and channels != config.ch * mult)
            channels = config.ch * mult
        if level != levels - 1:
            keys.extend(f"encoder.down.{level}.downsample.conv.{kind}" for kind in ("weight", "bias"))
    channels = config.ch * config.ch_mult[-1]
    for level in reversed(range(levels)):
        for index in range(config.num_res_blocks + 1):
            resnet(f"decoder.up.{level}.block.{index}", index == 0 and channels != config.ch * config.ch_mult[level])
            channels = config.ch * config.ch_mult[level]
        if level != 0:
            keys.extend(f"decoder.up.{level}.upsample.conv.{kind}" for kind in ("weight", "bias"))
    return keys
