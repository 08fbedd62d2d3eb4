"""Student files (safetensors + JSON header metadata) and converters from public checkpoints.

A student file holds, as tensors:

* ``lora.<adapter>.<component>.<module>.A`` / ``.B``: LoRA down/up weights in peft shapes;
* ``base.<component>.<parameter>``: base-model tensors the student overrides (OSEDiff's
  fine-tuned UNet ``conv_in``);
* ``prompt_embeds``: the fixed text-encoder output (1, 77, cross-attention dim), so no text
  encoder is needed at run time;
* ``net.<parameter>``: networks stored in full (the ``lite`` family; ``net.unet.*`` and
  ``net.vq.*`` of the ``resshift-onestep`` family).

and, in the safetensors header, ``ctsr.meta``: a JSON object (see :class:`StudentMeta`).

Pickled checkpoints (OSEDiff's ``osediff.pkl``) are read with torch's allow-listed
``weights_only`` unpickler: tensors, containers and primitives only. Anything that would build
another object (and so could run code) is refused with :class:`UnsafeCheckpointError`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_write
from .errors import IncompatibleWeightsError, WeightsNotFoundError
from .knob import Knob
from .safe_pickle import read_pickled_checkpoint

META_KEY = "ctsr.meta"
"""The safetensors header key holding a student file's metadata."""

__all__ = [
    "FORMAT_VERSION",
    "Adapter",
    "StudentMeta",
    "StudentFile",
    "save_student",
    "load_student",
    "read_pickled_checkpoint",
    "convert_osediff",
    "convert_resshift",
]

FORMAT_VERSION = 1
Component = Literal["unet", "vae"]
Phase = Literal["sr", "ctrl"]
_COMPONENTS = ("unet", "vae")
_PHASES = ("sr", "ctrl")
OSEDIFF_LORA_ALPHA = 8.0
"""OSEDiff's LoraConfig sets no ``lora_alpha``, so peft's default 8 applies (scale 8 / r)."""


@dataclass(frozen=True)
class Adapter:
    """One LoRA adapter of a student."""

    name: str
    component: Component
    rank: int
    alpha: float
    phase: Phase = "sr"
    """``sr`` adapters are fused at load; a ``ctrl`` adapter drives the ctsr-flow knob."""

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", self.name):
            raise IncompatibleWeightsError(f"adapter name {self.name!r} must be letters, digits, '_' or '-'.")
        if self.component not in _COMPONENTS:
            raise IncompatibleWeightsError(
                f"adapter `{self.name}`: `component` must be one of {_COMPONENTS}, got {self.component!r}."
            )
        if self.phase not in _PHASES:
            raise IncompatibleWeightsError(
                f"adapter `{self.name}`: `phase` must be one of {_PHASES}, got {self.phase!r}."
            )
        if self.rank < 1 or self.alpha <= 0:
            raise IncompatibleWeightsError(
                f"adapter `{self.name}`: rank must be >= 1 and alpha > 0, got rank {self.rank}, alpha {self.alpha}."
            )


@dataclass(frozen=True)
class StudentMeta:
    """What a student file says about itself (the JSON in the safetensors header)."""

    family: str
    """``sd-onestep``, ``resshift-onestep`` or ``lite``."""
    base: Mapping[str, str] = field(default_factory=dict)
    """Base model reference: {"repo_id", "revision"} or {"path"}; empty when self-contained."""
    adapters: tuple[Adapter, ...] = ()
    knob: Knob = field(default_factory=Knob)
    scale: float = 4.0
    """Default upscaling factor."""
    color_fix: str = "adain"
    """Default colour fix: ``adain``, ``wavelet`` or ``none``."""
    encode: Literal["mean", "sample"] = "mean"
    """VAE posterior: its mean (deterministic) or a seeded sample (OSEDiff samples)."""
    timestep: int = 999
    """The one UNet timestep of the SR step."""
    licence: str = "unknown"
    provenance: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    """Family-specific architecture settings (the ``lite`` network's widths)."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "family": self.family,
                "base": dict(self.base),
                "adapters": [a.__dict__ for a in self.adapters],
                "knob": self.knob.to_json(),
                "scale": self.scale,
                "color_fix": self.color_fix,
                "encode": self.encode,
                "timestep": self.timestep,
                "licence": self.licence,
                "provenance": dict(self.provenance),
                "config": dict(self.config),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, *, source: str = "student file") -> StudentMeta:
        try:
            data = json.loads(text)
            version = int(data.get("format_version", 0))
            if version > FORMAT_VERSION:
                raise IncompatibleWeightsError(
                    f"{source} has format version {version}; this ctsr-infer reads up to "
                    f"{FORMAT_VERSION}. Upgrade: `pip install -U ctsr-infer`."
                )
            return cls(
                family=str(data["family"]),
                base=dict(data.get("base", {})),
                adapters=tuple(Adapter(**a) for a in data.get("adapters", [])),
                knob=Knob.from_json(data.get("knob", {})),
                scale=float(data.get("scale", 4.0)),
                color_fix=str(data.get("color_fix", "adain")),
                encode=data.get("encode", "mean"),
                timestep=int(data.get("timestep", 999)),
                licence=str(data.get("licence", "unknown")),
                provenance=dict(data.get("provenance", {})),
                config=dict(data.get("config", {})),
            )
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            if isinstance(exc, IncompatibleWeightsError):
                raise
            raise IncompatibleWeightsError(f"{source}: the `ctsr.meta` header is malformed ({exc!r}).") from exc


@dataclass
class StudentFile:
    """A student file in memory: metadata and tensors."""

    meta: StudentMeta
    tensors: dict[str, torch.Tensor]

    def adapter(self, name: str) -> Adapter:
        for adapter in self.meta.adapters:
            if adapter.name == name:
                return adapter
        raise KeyError(name)

    def lora_pairs(self, adapter: Adapter) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Module name (within the adapter's component) -> (A, B)."""
        prefix = f"lora.{adapter.name}.{adapter.component}."
        pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for key in sorted(self.tensors):
            if key.startswith(prefix) and key.endswith(".A"):
                module = key[len(prefix) : -2]
                pairs[module] = (self.tensors[key], self.tensors[f"{prefix}{module}.B"])
        return pairs

    def base_overrides(self, component: Component) -> dict[str, torch.Tensor]:
        prefix = f"base.{component}."
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    @property
    def prompt_embeds(self) -> torch.Tensor | None:
        return self.tensors.get("prompt_embeds")

    def validate(self, *, source: str = "student file") -> None:
        """Check that tensor keys and the adapters in the metadata agree."""
        names = {a.name: a for a in self.meta.adapters}
        if len(names) != len(self.meta.adapters):
            raise IncompatibleWeightsError(f"{source}: adapter names are not unique.")
        for key, tensor in self.tensors.items():
            if key.startswith("lora."):
                parts = key.split(".")
                if len(parts) < 5 or parts[-1] not in ("A", "B"):
                    raise IncompatibleWeightsError(
                        f"{source}: tensor `{key}` is not of the form lora.<adapter>.<component>.<module>.A|B."
                    )
                adapter = names.get(parts[1])
                if adapter is None or adapter.component != parts[2]:
                    raise IncompatibleWeightsError(
                        f"{source}: tensor `{key}` belongs to adapter `{parts[1]}` of component "
                        f"`{parts[2]}`, which the metadata does not declare (declared: "
                        f"{[(a.name, a.component) for a in self.meta.adapters]})."
                    )
                partner = key[:-1] + ("B" if parts[-1] == "A" else "A")
                if partner not in self.tensors:
                    raise IncompatibleWeightsError(f"{source}: `{key}` has no partner `{partner}`.")
                if parts[-1] == "A" and tensor.shape[0] != adapter.rank:
                    raise IncompatibleWeightsError(
                        f"{source}: `{key}` has rank {tensor.shape[0]}, adapter `{adapter.name}` declares rank {adapter.rank}."
                    )
            elif not (key.startswith(("base.", "net.")) or key == "prompt_embeds"):
                raise IncompatibleWeightsError(f"{source}: unexpected tensor `{key}`.")
            if not tensor.is_floating_point():
                raise IncompatibleWeightsError(
                    f"{source}: tensor `{key}` has dtype {tensor.dtype}; student tensors are floating point."
                )


def save_student(student: StudentFile, path: str | os.PathLike[str]) -> Path:
    """Write a student file atomically (temporary file, then rename)."""
    student.validate()
    tensors = {k: v.detach().contiguous().cpu() for k, v in student.tensors.items()}
    metadata = {"format": "pt", META_KEY: student.meta.to_json()}
    return atomic_write(path, writer=lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_student(path: str | os.PathLike[str]) -> StudentFile:
    """Read and validate a student file.

    Raises:
        WeightsNotFoundError: the file does not exist.
        IncompatibleWeightsError: not a safetensors file, truncated, or no ``ctsr.meta`` header.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"student file `{path}` does not exist.")
    source = f"student file `{path}`"
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise IncompatibleWeightsError(
            f"{source} is not a readable safetensors file ({exc}). If it is a pickled checkpoint "
            "(.pkl/.pth), convert it first: `ctsr models convert IN OUT`."
        ) from exc
    if "ctsr.meta" not in header:
        raise IncompatibleWeightsError(
            f"{source} has no `ctsr.meta` header, so it is not a ctsr student file. Convert public "
            "checkpoints with `ctsr models convert IN OUT`."
        )
    student = StudentFile(meta=StudentMeta.from_json(header["ctsr.meta"], source=source), tensors=tensors)
    student.validate(source=source)
    return student


# ---------------------------------------------------------------------------------------------
# OSEDiff (cswry/OSEDiff, preset/models/osediff.pkl)
# ---------------------------------------------------------------------------------------------

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


def convert_osediff(
    path: str | os.PathLike[str],
    *,
    prompt_embeds: torch.Tensor,
    base: Mapping[str, str],
    prompt: str = "",
    licence: str = "Apache-2.0 (OSEDiff code and LoRA); base model: CreativeML Open RAIL++-M",
) -> StudentFile:
    """Convert OSEDiff's ``osediff.pkl`` into a student file.

    The pickle holds ``rank_unet``, ``rank_vae``, the UNet LoRA of three peft adapters
    (``default_encoder``/``default_decoder``/``default_others``) plus the fine-tuned ``conv_in``,
    and the VAE-encoder LoRA. Alpha is not stored: peft's default 8 applies, so scale = 8 / r.

    Args:
        path: the ``osediff.pkl`` file.
        prompt_embeds: the text-encoder output to carry (1, 77, 1024 for SD 2.1-base). OSEDiff tags
            each image with DAPE; the student carries one fixed prompt instead.
        base: the base model reference written into the metadata.
        prompt: the prompt text that produced ``prompt_embeds`` (provenance only).
    """
    source = f"OSEDiff checkpoint `{path}`"
    data = read_pickled_checkpoint(path)
    required = ("rank_unet", "rank_vae", "state_dict_unet", "state_dict_vae")
    if not isinstance(data, Mapping) or any(k not in data for k in required):
        found = sorted(cast(Mapping[str, Any], data)) if isinstance(data, Mapping) else type(data).__name__
        raise IncompatibleWeightsError(f"{source}: expected a dict with keys {list(required)}, found {found}.")
    rank_unet, rank_vae = int(data["rank_unet"]), int(data["rank_vae"])
    tensors: dict[str, torch.Tensor] = {}
    _convert_peft_state(data["state_dict_unet"], component="unet", adapter_names=_OSEDIFF_UNET_ADAPTERS, rank=rank_unet, tensors=tensors, source=source)
    _convert_peft_state(data["state_dict_vae"], component="vae", adapter_names=_OSEDIFF_VAE_ADAPTERS, rank=rank_vae, tensors=tensors, source=source)
    if prompt_embeds.dim() != 3 or prompt_embeds.shape[0] != 1:
        raise IncompatibleWeightsError(f"`prompt_embeds` must have shape (1, tokens, dim), got {tuple(prompt_embeds.shape)}.")
    tensors["prompt_embeds"] = prompt_embeds.detach().float().cpu()
    present = {key.split(".")[1] for key in tensors if key.startswith("lora.")}
    adapters = tuple(
        Adapter(name=name, component=cast(Component, "vae" if name.startswith("vae") else "unet"),
                rank=rank_vae if name.startswith("vae") else rank_unet, alpha=OSEDIFF_LORA_ALPHA)
        for name in (*_OSEDIFF_UNET_ADAPTERS.values(), *_OSEDIFF_VAE_ADAPTERS.values())
        if name in present
    )
    meta = StudentMeta(
        family="sd-onestep",
        base=dict(base),
        adapters=adapters,
        knob=Knob(kind="none"),
        scale=4.0,
        color_fix="adain",
        encode="mean",
        timestep=999,
        licence=licence,
        provenance={"converted_from": "osediff.pkl", "source": str(path), "prompt": prompt,
                    "note": "OSEDiff samples the VAE posterior; this student uses its mean unless `sample` is asked for."},
    )
    student = StudentFile(meta=meta, tensors=tensors)
    student.validate(source=source)
    return student


# ---------------------------------------------------------------------------------------------
# ResShift / SinSR (zsyOAOA/ResShift and wyf0912/SinSR release assets, ``.pth``)
# ---------------------------------------------------------------------------------------------


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

    ``unet_path``: ``resshift_realsrx4_s15_v1.pth``, ``resshift_realsrx4_s4_v3.pth``, ``SinSR_v1.pth``
    or any file of that layout (state dict at the top level or under ``state_dict``, optional
    ``module.``/``_orig_mod.`` prefixes). ``vq_path``: ``autoencoder_vq_f4.pth`` (a bare
    latent-diffusion state dict). Both are read with the allow-listed unpickler and loaded strictly
    into the networks before anything is written. ``schedule``/``unet``/``vq`` override the defaults of
    :class:`ShiftSchedule`, :class:`SwinUNetConfig`, :class:`VQConfig` (the x4 real-SR settings).
    ``sampler``: ``onestep`` for distilled students, ``posterior`` or ``ddim`` for the teacher.
    """
    from .families.resshift import FAMILY, student_config
    from .families.shift_diffusion import ShiftSchedule
    from .families.swin_unet import SwinUNet, SwinUNetConfig, load_public_state
    from .families.vq_autoencoder import VQConfig, build_vq, load_ldm_state

    if sampler not in ("onestep", "posterior", "ddim"):
        raise IncompatibleWeightsError(f"`sampler` must be 'onestep', 'posterior' or 'ddim', got {sampler!r}.")
    unet_config = SwinUNetConfig.from_config(unet or {})
    vq_config = VQConfig.from_config(vq or {})
    shift = ShiftSchedule.from_config(schedule or {})
    unet_source = f"ResShift-family checkpoint `{unet_path}`"
    data = read_pickled_checkpoint(unet_path)
    if not isinstance(data, Mapping):
        raise IncompatibleWeightsError(f"{unet_source}: expected a state dict, found {type(data).__name__}.")
    net = SwinUNet(unet_config)
    load_public_state(net, cast(Mapping[str, Any], data), source=unet_source)
    vq_source = f"VQ autoencoder `{vq_path}`"
    vq_state = read_pickled_checkpoint(vq_path)
    if isinstance(vq_state, Mapping) and isinstance(vq_state.get("state_dict"), Mapping):
        vq_state = vq_state["state_dict"]
    if not isinstance(vq_state, Mapping):
        raise IncompatibleWeightsError(f"{vq_source}: expected a state dict, found {type(vq_state).__name__}.")
    load_ldm_state(build_vq(vq_config), cast(Mapping[str, torch.Tensor], vq_state), vq_config, source=vq_source)
    tensors = {f"net.unet.{k}": v.detach().float() for k, v in net.state_dict().items()}
    tensors.update({f"net.vq.{k}": cast(torch.Tensor, v).float() for k, v in vq_state.items()})
    meta = StudentMeta(
        family=FAMILY, knob=Knob(kind="none"), scale=4.0, color_fix="none", timestep=shift.steps - 1, licence=licence,
        provenance={"converted_from": Path(unet_path).name, "autoencoder": Path(vq_path).name, **dict(provenance or {})},
        config=student_config(unet=unet_config, vq=vq_config, schedule=shift, sampler=sampler),  # type: ignore[arg-type]
    )
    student = StudentFile(meta=meta, tensors=tensors)
    student.validate(source=unet_source)
    return student
