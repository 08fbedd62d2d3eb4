"""The SD 2.1-base model a sd-onestep student runs on: its noise schedule, loading the UNet and VAE
from a diffusers folder, and the CLIP prompt embedding converters compute once."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ...errors import IncompatibleWeightsError, WeightsNotFoundError, require

if TYPE_CHECKING:  # from diffusers.models: mypy reads diffusers' top level as its dummy objects
    from diffusers.models import AutoencoderKL, UNet2DConditionModel

__all__ = ["SD21_BASE", "SD21_UNET", "SD21_VAE", "VAE_SCALING", "alphas_cumprod_scaled_linear", "encode_prompt", "load_base", "predict_x0"]

logger = logging.getLogger(__name__)

SD21_BASE = "SD 2.1-base (epsilon prediction, 4 latent channels, cross-attention dim 1024)"
VAE_SCALING = 0.18215

# SD 2.1-base as diffusers configs (UNet 865 M, VAE 84 M parameters): random full-size models for
# benchmarks and device checks; the SMALL ones are the same architectures at toy width.
SD21_UNET: dict[str, Any] = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
)
SD21_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=768,
)
SD_SMALL_UNET: dict[str, Any] = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
)
SD_SMALL_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16),
)


def alphas_cumprod_scaled_linear(beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = 1000) -> torch.Tensor:
    """The cumulative alpha products of a scaled_linear DDPM schedule, computed as diffusers does (fp32)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def predict_x0(sample: torch.Tensor, eps: torch.Tensor, alphas_cumprod: torch.Tensor, timestep: int) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - abar_t) * eps) / sqrt(abar_t), in the same float operations as diffusers."""
    alpha_prod = alphas_cumprod[timestep].to(device=sample.device)
    beta_prod = 1 - alpha_prod
    return (sample.float() - beta_prod**0.5 * eps.float()) / alpha_prod**0.5


def _read_scheduler(base_dir: Path) -> torch.Tensor:
    config_path = base_dir / "scheduler" / "scheduler_config.json"
    if not config_path.is_file():
        logger.info("no scheduler config in %s; using the SD 2.1-base schedule", base_dir)
        return alphas_cumprod_scaled_linear()
    config: dict[str, Any] = json.loads(config_path.read_text())
    prediction = config.get("prediction_type", "epsilon")
    schedule = config.get("beta_schedule", "scaled_linear")
    if prediction != "epsilon" or schedule != "scaled_linear":
        raise IncompatibleWeightsError(
            f"base model `{base_dir}` has prediction_type {prediction!r} and beta_schedule {schedule!r}; "
            f"sd-onestep students expect {SD21_BASE} with a scaled_linear schedule. Point the student at "
            "stable-diffusion-2-1-base (not the 768-px v-prediction model)."
        )
    return alphas_cumprod_scaled_linear(
        float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012)), int(config.get("num_train_timesteps", 1000))
    )


def load_base(base_dir: str | os.PathLike[str]) -> tuple[UNet2DConditionModel, AutoencoderKL, torch.Tensor]:
    """Load UNet, VAE and ``alphas_cumprod`` from a folder in diffusers layout (fp32, CPU, eval)."""
    from diffusers.models import AutoencoderKL, UNet2DConditionModel

    base_dir = Path(base_dir)
    for sub in ("unet", "vae"):
        if not (base_dir / sub / "config.json").is_file():
            raise WeightsNotFoundError(
                f"base model folder `{base_dir}` has no `{sub}/config.json`; expected a diffusers layout "
                "(unet/, vae/, scheduler/) such as a snapshot of stable-diffusion-2-1-base. Download it with "
                "`ctsr models download MODEL` (the model that needs it), or give a folder that has it with --base DIR "
                "(Python: `base=`)."
            )
    unet = UNet2DConditionModel.from_pretrained(base_dir, subfolder="unet", torch_dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(base_dir, subfolder="vae", torch_dtype=torch.float32)
    if unet.config.in_channels != 4 or vae.config.latent_channels != 4:
        raise IncompatibleWeightsError(
            f"base model `{base_dir}` has UNet in_channels {unet.config.in_channels} and VAE latent channels "
            f"{vae.config.latent_channels}; expected {SD21_BASE}."
        )
    return unet.eval().requires_grad_(False), vae.eval().requires_grad_(False), _read_scheduler(base_dir)


def encode_prompt(base_dir: str | Path, prompt: str) -> torch.Tensor:
    """Run the base model's CLIP text encoder once: prompt -> (1, 77, dim) embedding (for converters)."""
    require("transformers", extra="convert", purpose="Converting an SD-based checkpoint (its prompt embedding)")
    from transformers import CLIPTextModel, CLIPTokenizer

    base_dir = Path(base_dir)
    tokenizer = CLIPTokenizer.from_pretrained(base_dir, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(base_dir, subfolder="text_encoder").eval()
    ids = tokenizer(prompt, max_length=tokenizer.model_max_length, padding="max_length", truncation=True, return_tensors="pt").input_ids
    with torch.inference_mode():
        return encoder(ids)[0].float()
