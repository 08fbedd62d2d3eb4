"""PiSA-SR's public checkpoint (csslc/PiSA-SR, ``pisa_sr.pkl``) -> a sd-onestep student with a
``dual-lora`` knob.

The pickle (``PiSASR.save_model``) holds six peft adapters on the SD 2.1-base UNet -- encoder,
decoder and "others" module groups for a pixel branch (``default_*_pix``) and a semantic branch
(``default_*_sem``) -- their module lists (``unet_lora_*_modules_{pix,sem}``), the two ranks
(``lora_rank_unet_pix``/``_sem``) and ``state_dict_unet`` with every ``lora`` tensor. peft's default
alpha 8 applies (scale 8 / r). There is no VAE LoRA and no ``conv_in`` override.

In the student the pixel adapters are ``sr`` adapters (fused at load) and the semantic ones ``ctrl``
adapters (kept as deltas, applied for the second UNet call). PiSA-SR's inference convention is kept:
UNet timestep 1, x0 = z - eps (``config.prediction = "residual"``), empty prompt, AdaIN colour fix.
PiSA-SR samples the VAE posterior; the student uses its mean unless ``encode="sample"`` is asked for.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, cast

import torch

from ...errors import IncompatibleWeightsError
from ...knob import Knob
from ...safe_pickle import read_pickled_checkpoint
from ...student_file import Adapter, StudentFile, StudentMeta
from ..family import Checkpoint, ConvertInputs
from .convert import convert_with_base
from .model import FAMILY_NAME

__all__ = ["GROUPS", "PISA_LORA_ALPHA", "convert_inputs", "convert_pisa", "is_pisa"]

PISA_LORA_ALPHA = 8.0
"""PiSA-SR's LoraConfig sets no ``lora_alpha``: peft's default 8 (scale 8 / r)."""
LICENCE = "Apache-2.0 as PiSA-SR's README states (the repository has no LICENSE file); base model: CreativeML Open RAIL++-M"
GROUPS = ("encoder", "decoder", "others")
BRANCHES = {"pix": "sr", "sem": "ctrl"}
"""Branch -> the adapter phase in the student: the pixel branch is fused, the semantic one drives the knob."""
_REQUIRED = ("lora_rank_unet_pix", "lora_rank_unet_sem", "state_dict_unet")
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.default_(?P<group>encoder|decoder|others)_(?P<branch>pix|sem)\.weight$")


def is_pisa(checkpoint: Checkpoint) -> bool:
    """PiSA-SR's pickle: the two branch ranks and the UNet LoRA state dict at the top level."""
    data = checkpoint.data
    return isinstance(data, Mapping) and set(_REQUIRED) <= set(data)


def _check_layout(data: Any, source: str) -> dict[str, int]:
    if not isinstance(data, Mapping) or any(k not in data for k in _REQUIRED):
        found = sorted(map(str, cast(Mapping[str, Any], data)))[:8] if isinstance(data, Mapping) else type(data).__name__
        raise IncompatibleWeightsError(f"{source}: expected a dict with keys {list(_REQUIRED)}, found {found}.")
    ranks = {}
    for branch in BRANCHES:
        value = data[f"lora_rank_unet_{branch}"]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
            raise IncompatibleWeightsError(f"{source}: `lora_rank_unet_{branch}` must be an integer in [1, 4096], got {value!r}.")
        ranks[branch] = value
    if not isinstance(data["state_dict_unet"], Mapping) or not data["state_dict_unet"]:
        raise IncompatibleWeightsError(f"{source}: `state_dict_unet` must be a non-empty state dict.")
    return ranks


def _from_data(data: Any, *, source: str, source_name: str, prompt_embeds: torch.Tensor, base: Mapping[str, str], prompt: str,
               licence: str, provenance: Mapping[str, Any]) -> StudentFile:
    ranks = _check_layout(data, source)
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in cast(Mapping[str, Any], data["state_dict_unet"]).items():
        match = _KEY.match(str(key))
        if match is None:
            raise IncompatibleWeightsError(f"{source}: unexpected tensor `{key}` (PiSA-SR checkpoints hold only the six "
                                           "default_{encoder,decoder,others}_{pix,sem} LoRA adapters).")
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise IncompatibleWeightsError(f"{source}: `{key}` is not a floating-point tensor.")
        rank = ranks[match["branch"]]
        if match["which"] == "A" and tensor.shape[0] != rank:
            raise IncompatibleWeightsError(f"{source}: `{key}` has rank {tensor.shape[0]} but the checkpoint says rank {rank}.")
        name = f"unet_{match['group']}_{match['branch']}"
        tensors[f"lora.{name}.unet.{match['module']}.{match['which']}"] = tensor.float()
    for group in GROUPS:  # the module lists, where present, must name exactly the modules that have tensors
        for branch in BRANCHES:
            listed = data.get(f"unet_lora_{group}_modules_{branch}")
            if listed is None:
                continue
            have = {key.split(".", 3)[3].rsplit(".", 1)[0] for key in tensors if key.startswith(f"lora.unet_{group}_{branch}.unet.")}
            if not isinstance(listed, (list, tuple)) or not have <= set(map(str, listed)):
                raise IncompatibleWeightsError(f"{source}: `unet_lora_{group}_modules_{branch}` does not list the modules "
                                               f"its LoRA tensors are for ({len(have)} with tensors).")
    if prompt_embeds.dim() != 3 or prompt_embeds.shape[0] != 1:
        raise IncompatibleWeightsError(f"`prompt_embeds` must have shape (1, tokens, dim), got {tuple(prompt_embeds.shape)}.")
    tensors["prompt_embeds"] = prompt_embeds.detach().float().cpu()
    present = {key.split(".")[1] for key in tensors if key.startswith("lora.")}
    adapters = tuple(
        Adapter(name=f"unet_{group}_{branch}", component="unet", rank=ranks[branch], alpha=PISA_LORA_ALPHA, phase=phase)  # type: ignore[arg-type]
        for branch, phase in BRANCHES.items() for group in GROUPS if f"unet_{group}_{branch}" in present
    )
    if not any(a.phase == "ctrl" for a in adapters):
        raise IncompatibleWeightsError(f"{source}: no semantic (`_sem`) adapter tensors: the dual-LoRA knob needs both branches.")
    meta = StudentMeta(
        family=FAMILY_NAME, base=dict(base), adapters=adapters,
        knob=Knob(kind="dual-lora", default_t=0.0), scale=4.0, color_fix="adain", encode="mean", timestep=1, licence=licence,
        provenance={"converted_from": "pisa_sr.pkl", "source": source_name, "prompt": prompt,
                    "note": "PiSA-SR samples the VAE posterior; this student uses its mean unless `sample` is asked for.",
                    **dict(provenance)},
        config={"prediction": "residual"},
    )
    student = StudentFile(meta=meta, tensors=tensors)
    student.validate(source=source)
    return student


def convert_pisa(path: str | os.PathLike[str], *, prompt_embeds: torch.Tensor, base: Mapping[str, str], prompt: str = "",
                 licence: str = LICENCE) -> StudentFile:
    """Convert PiSA-SR's ``pisa_sr.pkl`` (read with the restricted unpickler) into a student file.
    ``prompt_embeds``: the text-encoder output of ``prompt`` (PiSA-SR: the empty prompt)."""
    return _from_data(read_pickled_checkpoint(path), source=f"PiSA-SR checkpoint `{path}`", source_name=str(path),
                      prompt_embeds=prompt_embeds, base=base, prompt=prompt, licence=licence, provenance={})


def convert_inputs(inputs: ConvertInputs) -> StudentFile:
    """The ``pisa-sr-pkl`` converter of the registry."""
    return convert_with_base(inputs, what="PiSA-SR", check_layout=_check_layout, from_data=_from_data, licence=LICENCE)
