"""The trainable SD one-step student: base UNet + VAE with the student's LoRA adapters as peft
adapters (OSEDiff's layout when started from a converted OSEDiff: three UNet adapters, one on the
VAE encoder, and ``conv_in`` trained in full), and its export back to a student file.

The forward pass is the runtime's (``families/sd_onestep.py``): bicubic-upsampled input in [-1, 1],
VAE posterior mean x 0.18215, one UNet call at the student's timestep with its prompt embedding, z0
in closed form, decode. At inference the LoRA is fused into the weights; here it stays a peft branch
(W x + s B A x), which agrees with the fused weights to float32 rounding.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from ..student_file import Adapter, StudentFile, load_student, save_student
from ..errors import IncompatibleWeightsError
from ..families.sd_onestep.base_model import VAE_SCALING, load_base, predict_x0
from ..families.sd_onestep.model import FAMILY_NAME as SD_FAMILY

if TYPE_CHECKING:  # from diffusers.models: mypy reads diffusers' top level as its dummy objects
    from diffusers.models import AutoencoderKL

__all__ = ["TrainableStudent", "lora_weight"]


def lora_weight(module: nn.Module, layer: str, which: Literal["A", "B"], adapter: str) -> nn.Parameter:
    """The weight of peft's LoRA matrix ``which`` of ``adapter`` on ``module``'s layer ``layer``."""
    return module.get_parameter(f"{layer}.lora_{which}.{adapter}.weight")


class TrainableStudent(nn.Module):
    """An sd-onestep student whose ``sr`` LoRA adapters (and ``conv_in`` when the file overrides it)
    are trainable; everything else is frozen."""

    alphas_cumprod: torch.Tensor  # buffers
    prompt_embeds: torch.Tensor

    def __init__(self, student: StudentFile, base: str | os.PathLike[str]) -> None:
        from peft import LoraConfig

        super().__init__()
        if student.meta.family != SD_FAMILY:
            raise IncompatibleWeightsError(f"a trainable SD student must be of family {SD_FAMILY}, not {student.meta.family!r}.")
        self.student = student
        if student.prompt_embeds is None:
            raise IncompatibleWeightsError("the student file has no `prompt_embeds` tensor; sd-onestep students carry one.")
        unet, vae, alphas = load_base(base)
        self.unet, self.vae = unet.requires_grad_(False), vae.requires_grad_(False)
        self.register_buffer("alphas_cumprod", alphas, persistent=False)
        self.register_buffer("prompt_embeds", student.prompt_embeds.float(), persistent=False)
        self.timestep = student.meta.timestep
        self.adapters = {"unet": [], "vae": []}  # type: dict[str, list[str]]
        for adapter in student.meta.adapters:
            if adapter.phase != "sr":
                raise IncompatibleWeightsError("stage 1 trains the SR adapters; this file already has a ctrl adapter.")
            module = self.unet if adapter.component == "unet" else self.vae
            pairs = student.lora_pairs(adapter)
            # peft annotates lora_alpha as int; it takes a float (the scale is alpha / r)
            config = LoraConfig(r=adapter.rank, lora_alpha=adapter.alpha, target_modules=sorted(pairs))  # type: ignore[arg-type]
            module.add_adapter(config, adapter_name=adapter.name)
            with torch.no_grad():
                for name, (a, b) in pairs.items():
                    weight_a, weight_b = lora_weight(module, name, "A", adapter.name), lora_weight(module, name, "B", adapter.name)
                    weight_a.copy_(a.reshape(weight_a.shape))
                    weight_b.copy_(b.reshape(weight_b.shape))
            self.adapters[adapter.component].append(adapter.name)
        for component, names in self.adapters.items():
            if names:
                (self.unet if component == "unet" else self.vae).set_adapter(names)
        self.overrides = student.base_overrides("unet")
        params = dict(self.unet.named_parameters())
        with torch.no_grad():
            for name, tensor in self.overrides.items():
                target = params.get(name) or params.get(name.replace("conv_in.", "conv_in.base_layer."))
                if target is None or target.shape != tensor.shape:
                    raise IncompatibleWeightsError(f"`base.unet.{name}` does not fit the base UNet.")
                target.copy_(tensor)
        for name, param in self.unet.named_parameters():
            param.requires_grad_("lora_" in name or (bool(self.overrides) and name.startswith("conv_in.") and "lora_" not in name))
        for name, param in self.vae.named_parameters():
            param.requires_grad_("lora_" in name)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], base: str | os.PathLike[str]) -> TrainableStudent:
        return cls(load_student(path), base)

    # -- the one-step path ---------------------------------------------------------------------

    def encode(self, image: torch.Tensor, *, lora: bool = True) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> scaled posterior mean; ``lora=False``: the frozen base encoder."""
        if lora:
            return self.vae.encode(image).latent_dist.mean * VAE_SCALING
        with _Adapters(self.vae):
            return self.vae.encode(image).latent_dist.mean * VAE_SCALING

    def eps(self, z: torch.Tensor, timestep: int | torch.Tensor) -> torch.Tensor:
        steps = torch.as_tensor(timestep, device=z.device).reshape(-1).expand(z.shape[0])
        return self.unet(z, steps, encoder_hidden_states=self.prompt_embeds.expand(z.shape[0], -1, -1)).sample.float()

    def sr_latent(self, upsampled: torch.Tensor) -> torch.Tensor:
        """Bicubic-upsampled image in [-1, 1] -> z0 of the student (one UNet call)."""
        z1 = self.encode(upsampled)
        return predict_x0(z1, self.eps(z1, self.timestep), self.alphas_cumprod, self.timestep)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / VAE_SCALING).sample.float()

    def forward(self, upsampled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z0, image in [-1, 1], not clamped)."""
        z0 = self.sr_latent(upsampled)
        return z0, self.decode(z0)

    # -- export ------------------------------------------------------------------------------------

    def export(self, path: str | os.PathLike[str], *, provenance: dict | None = None) -> Path:
        """The trained adapters (and conv_in) as a student file with the original metadata."""
        tensors = {k: v for k, v in self.student.tensors.items() if not k.startswith("lora.") and not k.startswith("base.unet.conv_in")}
        adapters: list[Adapter] = []
        for adapter in self.student.meta.adapters:
            module = self.unet if adapter.component == "unet" else self.vae
            for name in self.student.lora_pairs(adapter):
                a = lora_weight(module, name, "A", adapter.name).detach().float().cpu()
                b = lora_weight(module, name, "B", adapter.name).detach().float().cpu()
                tensors[f"lora.{adapter.name}.{adapter.component}.{name}.A"] = a.clone()
                tensors[f"lora.{adapter.name}.{adapter.component}.{name}.B"] = b.clone()
            adapters.append(adapter)
        if self.overrides:
            params = dict(self.unet.named_parameters())
            for name in self.overrides:
                source = params.get(name) or params[name.replace("conv_in.", "conv_in.base_layer.")]
                tensors[f"base.unet.{name}"] = source.detach().float().cpu().clone()
        meta = replace(self.student.meta, adapters=tuple(adapters),
                       provenance={**dict(self.student.meta.provenance), **(provenance or {})})
        return save_student(StudentFile(meta, tensors), path)


class _Adapters:
    """Fallback context: disable a module's peft adapters for the duration."""

    def __init__(self, module: AutoencoderKL) -> None:
        self.module = module

    def __enter__(self) -> None:
        if getattr(self.module, "_hf_peft_config_loaded", False):
            self.module.disable_adapters()

    def __exit__(self, *exc: object) -> None:
        if getattr(self.module, "_hf_peft_config_loaded", False):
            self.module.enable_adapters()
