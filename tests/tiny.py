"""Tiny random SD-architecture models and checkpoints in the public formats, built by the tests."""

from __future__ import annotations

from pathlib import Path

import torch

CROSS_DIM = 32
PATTERNS_UNET = ["to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in", "conv_shortcut", "conv_out",
                 "proj_out", "proj_in", "ff.net.2", "ff.net.0.proj"]
PATTERNS_VAE = ["conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out", "to_k", "to_q", "to_v", "to_out.0"]


def tiny_unet(seed: int = 0, *, attention: bool = True):
    """SD 2.1's UNet layout at toy width. Without attention (for large images: self-attention over a
    whole large latent is what the tiling issue handles) it keeps only the conv blocks."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    down = ("CrossAttnDownBlock2D", "DownBlock2D") if attention else ("DownBlock2D", "DownBlock2D")
    up = ("UpBlock2D", "CrossAttnUpBlock2D") if attention else ("UpBlock2D", "UpBlock2D")
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2DCrossAttn" if attention else None,
        cross_attention_dim=CROSS_DIM, attention_head_dim=8, norm_num_groups=8,
    ).eval()


def tiny_vae(seed: int = 1, *, attention: bool = True):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16), sample_size=32, mid_block_add_attention=attention,
    ).eval()


def write_base(folder: Path, *, attention: bool = True) -> Path:
    """A tiny base model in diffusers layout (unet/, vae/, scheduler/)."""
    from diffusers import DDPMScheduler

    tiny_unet(attention=attention).save_pretrained(folder / "unet")
    tiny_vae(attention=attention).save_pretrained(folder / "vae")
    DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                  prediction_type="epsilon", clip_sample=False, steps_offset=1).save_pretrained(folder / "scheduler")
    return folder


def osediff_targets(model: torch.nn.Module, patterns: list[str], *, vae: bool) -> dict[str, list[str]]:
    """Module lists as OSEDiff's initialize_unet / initialize_vae build them."""
    groups: dict[str, list[str]] = {"encoder": [], "decoder": [], "others": []}
    for name, _ in model.named_parameters():
        if "bias" in name or "norm" in name:
            continue
        module = name.replace(".weight", "")
        if vae:
            if "encoder" in name and any(p in name for p in patterns):
                groups["encoder"].append(module)
            continue
        if not any(p in name for p in patterns):
            continue
        if "down_blocks" in name or "conv_in" in name:
            groups["encoder"].append(module)
        elif "up_blocks" in name or "conv_out" in name:
            groups["decoder"].append(module)
        else:
            groups["others"].append(module)
    return groups


def peft_osediff_models(rank: int = 4, seed: int = 2):
    """Tiny UNet and VAE with OSEDiff's peft adapters, random LoRA weights and a changed conv_in."""
    from peft import LoraConfig

    unet, vae = tiny_unet(), tiny_vae()
    u = osediff_targets(unet, PATTERNS_UNET, vae=False)
    v = osediff_targets(vae, PATTERNS_VAE, vae=True)
    for group in ("encoder", "decoder", "others"):
        unet.add_adapter(LoraConfig(r=rank, init_lora_weights="gaussian", target_modules=u[group]), adapter_name=f"default_{group}")
    vae.add_adapter(LoraConfig(r=rank, init_lora_weights="gaussian", target_modules=v["encoder"]), adapter_name="default_encoder")
    generator = torch.Generator().manual_seed(seed)
    for model in (unet, vae):
        for name, param in model.named_parameters():
            # OSEDiff trains every LoRA and, in the UNet only, conv_in in full
            if "lora_B" in name or (model is unet and "conv_in" in name):
                param.data = torch.randn(param.shape, generator=generator) * 0.05
    unet.set_adapter(["default_encoder", "default_decoder", "default_others"])
    vae.set_adapter(["default_encoder"])
    return unet, vae, u, v


def write_osediff_pkl(path: Path, rank: int = 4) -> tuple[Path, torch.nn.Module, torch.nn.Module]:
    """Write an osediff.pkl exactly as OSEDiff_gen.save_model does (a torch.save'd dict)."""
    unet, vae, u, v = peft_osediff_models(rank)
    checkpoint = {
        "unet_lora_encoder_modules": u["encoder"], "unet_lora_decoder_modules": u["decoder"],
        "unet_lora_others_modules": u["others"], "rank_unet": rank,
        "state_dict_unet": {k: p for k, p in unet.state_dict().items() if "lora" in k or "conv_in" in k},
        "vae_lora_encoder_modules": v["encoder"], "rank_vae": rank,
        "state_dict_vae": {k: p for k, p in vae.state_dict().items() if "lora" in k},
    }
    torch.save(checkpoint, path)
    return path, unet, vae


def peft_pisa_unet(rank_pix: int = 4, rank_sem: int = 2, seed: int = 4):
    """The tiny UNet with PiSA-SR's six peft adapters (encoder/decoder/others x pix/sem) and random
    LoRA weights, as PiSA-SR's ``initialize_unet`` builds them; returns (unet, module groups)."""
    from peft import LoraConfig

    unet = tiny_unet()
    groups = osediff_targets(unet, PATTERNS_UNET, vae=False)
    for branch, rank in (("pix", rank_pix), ("sem", rank_sem)):
        for group in ("encoder", "decoder", "others"):
            unet.add_adapter(LoraConfig(r=rank, init_lora_weights="gaussian", target_modules=groups[group]),
                             adapter_name=f"default_{group}_{branch}")
    generator = torch.Generator().manual_seed(seed)
    for name, param in unet.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.05
    return unet, groups


def write_pisa_pkl(path: Path, rank_pix: int = 4, rank_sem: int = 2) -> tuple[Path, torch.nn.Module]:
    """Write a pisa_sr.pkl exactly as PiSASR.save_model does (a torch.save'd dict)."""
    unet, groups = peft_pisa_unet(rank_pix, rank_sem)
    checkpoint = {f"unet_lora_{group}_modules_{branch}": groups[group] for branch in ("pix", "sem") for group in ("encoder", "decoder", "others")}
    checkpoint.update({"lora_rank_unet_pix": rank_pix, "lora_rank_unet_sem": rank_sem,
                       "state_dict_unet": {k: v for k, v in unet.state_dict().items() if "lora" in k}})
    torch.save(checkpoint, path)
    return path, unet


def prompt_embeds(seed: int = 3) -> torch.Tensor:
    return torch.randn(1, 77, CROSS_DIM, generator=torch.Generator().manual_seed(seed))


CTRL_MODULES = (
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    "down_blocks.1.resnets.0.conv1",
    "mid_block.resnets.0.conv2",
    "up_blocks.1.attentions.0.proj_out",
    "conv_out",
)


def add_ctrl_adapter(student_path: Path, target: Path, *, rank: int = 2, alpha: float = 2.0, seed: int = 5) -> Path:
    """Write a ctsr-flow student: the given student plus a ctrl LoRA on a few UNet layers."""
    from dataclasses import replace

    from ctsr_infer.student_file import Adapter, load_student, save_student
    from ctsr_infer.knob import Knob

    student = load_student(student_path)
    unet = tiny_unet()
    generator = torch.Generator().manual_seed(seed)
    tensors = dict(student.tensors)
    for name in CTRL_MODULES:
        weight = unet.get_submodule(name).weight
        a_shape = (rank, weight.shape[1], *weight.shape[2:])
        b_shape = (weight.shape[0], rank, *((1, 1) if weight.dim() == 4 else ()))
        tensors[f"lora.ctrl.unet.{name}.A"] = torch.randn(a_shape, generator=generator) * 0.2
        tensors[f"lora.ctrl.unet.{name}.B"] = torch.randn(b_shape, generator=generator) * 0.2
    meta = replace(
        student.meta,
        adapters=(*student.meta.adapters, Adapter(name="ctrl", component="unet", rank=rank, alpha=alpha, phase="ctrl")),
        knob=Knob(kind="ctsr-flow", default_t=0.5, tau_start=0, tau_end=999, steps=1),
    )
    student.meta, student.tensors = meta, tensors
    return save_student(student, target)


def write_text_encoder(folder: Path) -> Path:
    """A tiny CLIP tokenizer (byte-level, no merges) and text encoder in diffusers layout."""
    import json

    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    # GPT-2's byte -> printable-character table, which CLIP's byte-level BPE uses
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    table = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(b for b in range(256) if b not in printable)}
    characters = [table[b] for b in range(256)]
    vocab = {token: index for index, token in enumerate([*characters, *(c + "</w>" for c in characters), "<|startoftext|>", "<|endoftext|>"])}
    tokenizer_dir = folder / "tokenizer"
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77).save_pretrained(tokenizer_dir)
    (tokenizer_dir / "vocab.json").write_text(json.dumps(vocab))
    torch.manual_seed(4)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=CROSS_DIM, intermediate_size=37, num_hidden_layers=1,
                            num_attention_heads=4, max_position_embeddings=77)
    CLIPTextModel(config).eval().save_pretrained(folder / "text_encoder")
    return folder


# -- ResShift family ------------------------------------------------------------------------------

def tiny_swin_config():
    from ctsr_infer.families.resshift.swin_unet import SwinUNetConfig

    return SwinUNetConfig(image_size=16, model_channels=32, num_res_blocks=(1, 1, 1, 1), attention_resolutions=(16, 8, 4, 2),
                          swin_embed_dim=64, window_size=4)


def tiny_vq_config():
    from ctsr_infer.families.resshift.vq_autoencoder import VQConfig

    return VQConfig(ch=32, ch_mult=(1, 2, 4), num_res_blocks=1, n_embed=64)


def randomised(module: torch.nn.Module, seed: int, std: float = 0.15) -> torch.nn.Module:
    """Every parameter drawn at random: the stock init zeroes the last conv of each ResBlock, which
    would hide wiring mistakes."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return module


def public_swin_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as the public ResShift/SinSR checkpoints hold it: the parameters plus each Swin
    block's ``attn.relative_position_index`` and, for shifted blocks, ``attn_mask`` (never used)."""
    from ctsr_infer.families.resshift.swin_unet import SwinBlock

    state = {k: v.clone() for k, v in net.state_dict().items()}
    for name, module in net.named_modules():
        if isinstance(module, SwinBlock):
            state[f"{name}.attn.relative_position_index"] = module.attn.relative_position_index.clone()
            if module.shift:
                count = module.window**2
                state[f"{name}.attn_mask"] = torch.zeros(4, count, count)
    return state


def public_vq_state(model: torch.nn.Module, config) -> dict[str, torch.Tensor]:
    """The diffusers VQModel's weights renamed to latent-diffusion's layout (attention as 1x1 convs)."""
    from ctsr_infer.families.resshift.vq_autoencoder import diffusers_to_ldm

    return {k: v.clone() for k, v in diffusers_to_ldm(model.state_dict(), config).items()}


def write_resshift_pair(folder: Path, *, seed: int = 7, prefix: str = "module.") -> tuple[Path, Path]:
    """A tiny UNet checkpoint ({"state_dict": ...} with a ``module.`` prefix, as trainers save) and a bare
    VQ state dict, both as pickled ``.pth`` files in the public layouts."""
    from ctsr_infer.families.resshift.swin_unet import SwinUNet
    from ctsr_infer.families.resshift.vq_autoencoder import build_vq

    folder.mkdir(parents=True, exist_ok=True)
    net = randomised(SwinUNet(tiny_swin_config()), seed)
    vq_config = tiny_vq_config()
    vq = randomised(build_vq(vq_config), seed + 1)
    unet_path, vq_path = folder / "resshift_tiny.pth", folder / "autoencoder_vq_tiny.pth"
    torch.save({"state_dict": {prefix + k: v for k, v in public_swin_state(net).items()}}, unet_path)
    torch.save(public_vq_state(vq, vq_config), vq_path)
    return unet_path, vq_path


def write_resshift_teacher(folder: Path, *, seed: int = 7, steps: int = 15, min_noise_level: float = 0.04) -> Path:
    """A tiny ResShift teacher as a ``resshift-onestep`` student file (multi-step sampler)."""
    from ctsr_infer.families.resshift.convert import convert_resshift
    from ctsr_infer.student_file import save_student

    unet, vq = write_resshift_pair(folder, seed=seed)
    student = convert_resshift(unet, vq, unet=tiny_swin_config().to_config(), vq=tiny_vq_config().to_config(),
                               schedule={"steps": steps, "min_noise_level": min_noise_level}, sampler="posterior")
    return save_student(student, folder / "teacher.safetensors")


def tiny_pair(seed: int = 0, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(LR 16 x 16, HR 64 x 64) in [0, 1], LR by area downsampling."""
    import numpy as np
    import torch.nn.functional as F

    hr = torch.from_numpy(np.random.default_rng(seed).random((batch, 3, 64, 64), dtype=np.float32))
    return F.interpolate(hr, scale_factor=0.25, mode="area"), hr


def straight_and_resumed(make, batches, checkpoint: Path, *, steps: int = 1):
    """Two runs of a recipe: one trains ``steps``, checkpoints and trains ``steps`` more; a fresh one
    resumes from that checkpoint (which must say step ``steps``) and trains ``steps``. Returns both."""
    straight = make()
    straight.train(batches, steps=steps)
    straight.save_checkpoint(checkpoint)
    straight.train(batches, steps=steps)
    resumed = make()
    resumed.load_checkpoint(checkpoint)
    assert resumed.step == steps
    resumed.train(batches, steps=steps)
    return straight, resumed


def free_port() -> int:
    """A TCP port on the loopback that is free now (the OS picks it), for tests that start servers."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def torchrun(args: list[str], *, env: dict[str, str], cwd: Path, timeout: int):
    """``python -m torch.distributed.run --nproc_per_node 2 --master_port <free port> *args``. One retry
    when a rank aborts in gloo's C++ teardown ("terminate called without an active exception"), which
    was seen once in 20+ runs on a loaded 2-core machine; any other failure is returned as it is."""
    import subprocess
    import sys

    for attempt in range(2):
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                                 str(free_port()), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        if result.returncode == 0 or "terminate called without an active exception" not in result.stderr or attempt:
            return result
    return result


def same_8bit(a, b) -> bool:  # noqa: ANN001 - numpy arrays
    """Equal 8-bit images up to float rounding: the same computation on buffers of another alignment
    can sum in another order (3e-7 measured), which flips a value sitting on a rounding boundary by
    one level; at most 0.1 % of the values may differ, by one."""
    import numpy as np

    diff = np.abs(np.asarray(a).astype(np.int16) - np.asarray(b).astype(np.int16))
    return a.shape == b.shape and int(diff.max()) <= 1 and float((diff > 0).mean()) < 0.001
