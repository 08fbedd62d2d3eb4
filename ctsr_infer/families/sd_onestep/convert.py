"""OSEDiff's public checkpoint (cswry/OSEDiff, ``preset/models/osediff.pkl``) -> a sd-onestep student.

The pickle holds the LoRA of three peft UNet adapters plus the fine-tuned ``conv_in`` and one VAE
encoder adapter; it is read with the restricted unpickler and detected by its keys.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import torch

from ...errors import IncompatibleWeightsError
from ...knob import Knob
from ...safe_pickle import read_pickled_checkpoint
from ...student_file import Adapter, Component, StudentFile, StudentMeta
from ..family import Checkpoint, ConvertInputs
from .base_model import encode_prompt
from .model import FAMILY_NAME

__all__ = ["OSEDIFF_LORA_ALPHA", "convert_inputs", "convert_osediff", "is_osediff"]

OSEDIFF_LORA_ALPHA = 8.0
"""OSEDiff's LoraConfig sets no ``lora_alpha``, so peft's default 8 applies (scale 8 / r)."""
LICENCE = "Apache-2.0 (OSEDiff code and LoRA); base model: CreativeML Open RAIL++-M"

_OSEDIFF_UNET_ADAPTERS = {"default_encoder": "unet_encoder", "default_decoder": "unet_decoder", "default_others": "unet_others"}
_OSEDIFF_VAE_ADAPTERS = {"default_encoder": "vae_encoder"}
_PEFT_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.(?P<adapter>[^.]+)\.weight$")


def _convert_peft_state(
    state: Mapping[str, torch.Tensor],
    *,
    component: Component,
    adapter_names: Mapping[str, str],
    rank: int,
    tensors: dict[str, torch.Tensor],
    source: str,
) -> None:
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise IncompatibleWeightsError(f"{source}: `{key}` is a {type(tensor).__name__}, expected a tensor.")
        match = _PEFT_LORA_KEY.match(key)
        if match:
            adapter = adapter_names.get(match["adapter"])
            if adapter is None:
                raise IncompatibleWeightsError(
                    f"{source}: `{key}` belongs to adapter `{match['adapter']}`; OSEDiff's {component} "
                    f"adapters are {sorted(adapter_names)}."
                )
            if match["which"] == "A" and tensor.shape[0] != rank:
                raise IncompatibleWeightsError(
                    f"{source}: `{key}` has rank {tensor.shape[0]} but the checkpoint says rank {rank}."
                )
            tensors[f"lora.{adapter}.{component}.{match['module']}.{match['which']}"] = tensor.float()
        elif component == "unet" and key in ("conv_in.base_layer.weight", "conv_in.base_layer.bias", "conv_in.weight", "conv_in.bias"):
            tensors[f"base.unet.{key.replace('.base_layer', '')}"] = tensor.float()
        else:
            raise IncompatibleWeightsError(f"{source}: unexpected {component} tensor `{key}` in an OSEDiff checkpoint.")


def _check_layout(data: Any, source: str) -> None:
    required = ("rank_unet", "rank_vae", "state_dict_unet", "state_dict_vae")
    if not isinstance(data, Mapping) or any(k not in data for k in required):
        found = sorted(map(str, cast(Mapping[str, Any], data)))[:8] if isinstance(data, Mapping) else type(data).__name__
        raise IncompatibleWeightsError(f"{source}: expected a dict with keys {list(required)}, found {found}.")


def _from_data(data: Any, *, source: str, source_name: str, prompt_embeds: torch.Tensor, base: Mapping[str, str], prompt: str,
               licence: str, provenance: Mapping[str, Any]) -> StudentFile:
    _check_layout(data, source)
    ranks = {}
    for key in ("rank_unet", "rank_vae"):
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
            raise IncompatibleWeightsError(f"{source}: `{key}` must be an integer in [1, 4096], got {value!r}.")
        ranks[key] = value
    rank_unet, rank_vae = ranks["rank_unet"], ranks["rank_vae"]
    tensors: dict[str, torch.Tensor] = {}
    parts: tuple[tuple[str, Component, Mapping[str, str], int], ...] = (
        ("state_dict_unet", "unet", _OSEDIFF_UNET_ADAPTERS, rank_unet), ("state_dict_vae", "vae", _OSEDIFF_VAE_ADAPTERS, rank_vae))
    for key, component, names, rank in parts:
        if not isinstance(data[key], Mapping):
            raise IncompatibleWeightsError(f"{source}: `{key}` must be a state dict, found {type(data[key]).__name__}.")
        _convert_peft_state(data[key], component=component, adapter_names=names, rank=rank, tensors=tensors, source=source)
    if prompt_embeds.dim() != 3 or prompt_embeds.shape[0] != 1:
        raise IncompatibleWeightsError(f"`prompt_embeds` must have shape (1, tokens, dim), got {tuple(prompt_embeds.shape)}.")
    tensors["prompt_embeds"] = prompt_embeds.detach().float().cpu()
    present = {key.split(".")[1] for key in tensors if key.startswith("lora.")}
    adapters = tuple(
        Adapter(name=name, component="vae" if name.startswith("vae") else "unet",
                rank=rank_vae if name.startswith("vae") else rank_unet, alpha=OSEDIFF_LORA_ALPHA)
        for name in (*_OSEDIFF_UNET_ADAPTERS.values(), *_OSEDIFF_VAE_ADAPTERS.values())
        if name in present
    )
    meta = StudentMeta(
        family=FAMILY_NAME,
        base=dict(base),
        adapters=adapters,
        knob=Knob(kind="none"),
        scale=4.0,
        color_fix="adain",
        encode="mean",
        timestep=999,
        licence=licence,
        provenance={"converted_from": "osediff.pkl", "source": source_name, "prompt": prompt,
                    "note": "OSEDiff samples the VAE posterior; this student uses its mean unless `sample` is asked for.",
                    **dict(provenance)},
    )
    student = StudentFile(meta=meta, tensors=tensors)
    student.validate(source=source)
    return student


def convert_osediff(
    path: str | os.PathLike[str],
    *,
    prompt_embeds: torch.Tensor,
    base: Mapping[str, str],
    prompt: str = "",
    licence: str = LICENCE,
) -> StudentFile:
    """Convert OSEDiff's ``osediff.pkl`` into a student file.

    The pickle holds ``rank_unet``, ``rank_vae``, the UNet LoRA of three peft adapters
    (``default_encoder``/``default_decoder``/``default_others``) plus the fine-tuned ``conv_in``,
    and the VAE-encoder LoRA. Alpha is not stored: peft's default 8 applies, so scale = 8 / r.

    Args:
        path: the ``osediff.pkl`` file (read with the restricted unpickler).
        prompt_embeds: the text-encoder output to carry (1, 77, 1024 for SD 2.1-base). OSEDiff tags
            each image with DAPE; the student carries one fixed prompt instead.
        base: the base model reference written into the metadata.
        prompt: the prompt text that produced ``prompt_embeds`` (provenance only).
    """
    return _from_data(read_pickled_checkpoint(path), source=f"OSEDiff checkpoint `{path}`", source_name=str(path),
                      prompt_embeds=prompt_embeds, base=base, prompt=prompt, licence=licence, provenance={})


def is_osediff(checkpoint: Checkpoint) -> bool:
    """OSEDiff's pickle: LoRA ranks and the UNet/VAE peft state dicts at the top level."""
    data = checkpoint.data
    return isinstance(data, Mapping) and {"rank_unet", "rank_vae", "state_dict_unet", "state_dict_vae"} <= set(data)


def convert_with_base(inputs: ConvertInputs, *, what: str, check_layout: Callable[[Any, str], object],
                      from_data: Callable[..., StudentFile], licence: str) -> StudentFile:
    """A converter of the registry for an SD-based checkpoint (OSEDiff, PiSA-SR): the base model is
    required (its text encoder computes the prompt embedding), which runs only after the file's
    layout is checked; ``licence`` applies unless the caller names one."""
    source = f"{what} checkpoint `{inputs.source.path}`"
    if inputs.base_dir is None:
        raise IncompatibleWeightsError(f"converting the {source} needs the SD 2.1-base model (for its prompt embedding): "
                                       "give a local diffusers folder with --base DIR (Python: `base=`).")
    if inputs.settings:
        raise IncompatibleWeightsError(f"{what} conversion has no settings; got {sorted(inputs.settings)}.")
    check_layout(inputs.source.data, source)
    return from_data(inputs.source.data, source=source, source_name=str(inputs.source.path),
                     prompt_embeds=encode_prompt(inputs.base_dir, inputs.prompt),
                     base=dict(inputs.base_ref) or {"path": str(Path(inputs.base_dir).resolve())}, prompt=inputs.prompt,
                     licence=inputs.licence if inputs.licence != "unknown" else licence, provenance=inputs.provenance)


def convert_inputs(inputs: ConvertInputs) -> StudentFile:
    """The ``osediff-pkl`` converter of the registry."""
    return convert_with_base(inputs, what="OSEDiff", check_layout=_check_layout, from_data=_from_data, licence=LICENCE)
