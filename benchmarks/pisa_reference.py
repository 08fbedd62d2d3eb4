"""ctsr_infer's PiSA-SR (the ``dual-lora`` sd-onestep student) against PiSA-SR's own code, on tiny random
weights, on the CPU, in float32.

    python benchmarks/pisa_reference.py --pisa-repo /tmp/pisa_ref [--json out.json]

``--pisa-repo`` is a checkout of csslc/PiSA-SR (e.g. ``git -C <mirror> archive HEAD | tar -x -C /tmp/pisa_ref``).
Its code is imported from there at run time and never copied into this project.

Both sides get the same tiny SD-architecture base (``tests/tiny.write_base``), the same tiny ``pisa_sr.pkl``
(``tests/tiny.write_pisa_pkl``, written as ``PiSASR.save_model`` writes it), the same prompt embedding (the
student's ``prompt_embeds``, which the tests' ``prompt_embeds()`` made) and the same latent z (the VAE
posterior *mean*; PiSA-SR itself samples the posterior). PiSA-SR's ``PiSASR_eval.__init__`` hard-codes CUDA
and reads a full SD folder, so the script builds an instance with ``__new__`` and replays what ``__init__``
does with PiSA-SR's own methods: ``_load_pretrained_weights`` (pixel LoRA merged by their
``merge_and_unload``, semantic adapters added), ``_prepare_lora_deltas`` (adjustable mode only),
``set_weights_and_activate_adapters`` + ``merge_and_unload`` of the semantic adapters. It then calls their
``_predict_no_tiling``. Their ``.to("cuda")`` calls are redirected to the CPU while their loader runs.

Compared (max abs difference of eps and of x0 = z - eps):

* default: their single pass (``default=True``, both branches merged) vs ctsr ``mix_branches`` at t = 0;
* adjustable: their ``default=False`` path at (lambda_pix, lambda_sem) in (1, 1), (1, 0), (1, 0.5),
  (0.8, 1.2) vs ctsr ``mix_branches`` at the t whose ``Knob.lambdas(t)`` gives that pair. (0.8, 1.2) is
  outside the student's default mapping; it is reached with ctsr's own ``mix_branches`` under a knob
  whose t = 0 end is (0.8, 1.2) (``Knob(lambda_pix=(0.8, 1.0), lambda_sem=(1.2, 0.0))``);
* side checks: their UNet class vs diffusers' on the plain base UNet, their VAE's posterior mean vs
  ctsr's ``encode``, their VAE decode vs ctsr's ``decode`` of the same x0, ctsr's two branch calls
  (``noise`` / ``velocity``) vs their pixel-only and merged passes.

Compatibility shims (only those the installed libraries need; each is listed in the output): PiSA-SR pins
diffusers 0.25, whose ``PositionNet``, ``diffusers.models.unet_2d_blocks`` and ``FromOriginalVAEMixin`` are
renamed or moved in later diffusers; the names are aliased to their successors (none is used by an SD 2.1
UNet/VAE forward); later diffusers' ``ModelMixin`` no longer carries ``PeftAdapterMixin`` (``add_adapter``), so
their UNet class is subclassed with it appended (their ``forward`` and ``merge_and_unload`` come first). ``src.my_utils.vaehook`` (needs einops; used only by their tiled VAE, not called here) is
stubbed if it does not import.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import sys
import tempfile
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
RANK_PIX, RANK_SEM = 4, 2
SEM = ["default_encoder_sem", "default_decoder_sem", "default_others_sem"]
PAIRS = [(1.0, 1.0), (1.0, 0.0), (1.0, 0.5), (0.8, 1.2)]


# -- PiSA-SR's code, imported from its checkout ---------------------------------------------------

def _alias(module: str, name: str, successor: str, shims: list[str]) -> None:
    mod = importlib.import_module(module)
    if not hasattr(mod, name):
        setattr(mod, name, getattr(mod, successor))
        shims.append(f"{module}.{name} = {successor}")


def import_pisa(repo: Path) -> tuple[types.ModuleType, list[str]]:
    """PiSA-SR's ``pisasr`` module from ``repo``, with the shims the installed diffusers needs."""
    shims: list[str] = []
    _alias("diffusers.models.embeddings", "PositionNet", "GLIGENTextBoundingboxProjection", shims)
    _alias("diffusers.loaders", "FromOriginalVAEMixin", "FromOriginalModelMixin", shims)
    try:
        importlib.import_module("diffusers.models.unet_2d_blocks")
    except ImportError:
        sys.modules["diffusers.models.unet_2d_blocks"] = importlib.import_module("diffusers.models.unets.unet_2d_blocks")
        shims.append("diffusers.models.unet_2d_blocks -> diffusers.models.unets.unet_2d_blocks")
    sys.path.insert(0, str(repo))
    try:
        importlib.import_module("src.my_utils.vaehook")
    except ImportError as exc:
        stub = types.ModuleType("src.my_utils.vaehook")
        stub.VAEHook = None  # type: ignore[attr-defined]  # only _init_tiled_vae uses it
        sys.modules["src.my_utils.vaehook"] = stub
        shims.append(f"src.my_utils.vaehook stubbed ({exc}; used only by the tiled VAE, not called)")
    pisasr = importlib.import_module("pisasr")
    if not hasattr(pisasr.UNet2DConditionModel, "add_adapter"):
        # diffusers 0.25's ModelMixin carried PeftAdapterMixin (add_adapter, ...); later ones list it per model.
        # Their class first in the MRO: forward and merge_and_unload stay theirs.
        from diffusers.loaders.peft import PeftAdapterMixin

        pisasr.UNet2DConditionModel = type("UNet2DConditionModel", (pisasr.UNet2DConditionModel, PeftAdapterMixin), {})
        shims.append("PiSA-SR's UNet2DConditionModel subclassed with diffusers' PeftAdapterMixin (add_adapter)")
    return pisasr, shims


@contextmanager
def cuda_on_cpu(counter: list[int]) -> Iterator[None]:
    """``Tensor.to("cuda")`` (any cuda device) goes to the CPU for the duration; counts redirects."""
    original = torch.Tensor.to

    def is_cuda(value: Any) -> bool:
        return (isinstance(value, str) and value.startswith("cuda")) or (isinstance(value, torch.device) and value.type == "cuda")

    def to(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if any(is_cuda(a) for a in args) or is_cuda(kwargs.get("device")):
            counter[0] += 1
            args = tuple("cpu" if is_cuda(a) else a for a in args)
            if is_cuda(kwargs.get("device")):
                kwargs["device"] = "cpu"
        return original(self, *args, **kwargs)

    torch.Tensor.to = to  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        torch.Tensor.to = original  # type: ignore[method-assign]


def reference(pisasr: types.ModuleType, base: Path, pkl: Path, *, default: bool, redirects: list[int]) -> Any:
    """A ``PiSASR_eval`` on the CPU in float32, set up as its ``__init__`` does (minus text encoder,
    VAE tiling and CUDA), for ``args.default = default``."""
    ref = pisasr.PiSASR_eval.__new__(pisasr.PiSASR_eval)
    torch.nn.Module.__init__(ref)
    ref.device = "cpu"
    ref.weight_dtype = torch.float32
    ref.args = SimpleNamespace(default=default, lambda_pix=1.0, lambda_sem=1.0, mixed_precision="fp32",
                               latent_tiled_size=96, latent_tiled_overlap=32, pretrained_path=str(pkl),
                               pretrained_model_path=str(base))
    ref.unet = pisasr.UNet2DConditionModel.from_pretrained(str(base), subfolder="unet")
    with cuda_on_cpu(redirects):
        ref._load_pretrained_weights(str(pkl))
    if not default:
        ref._prepare_lora_deltas(SEM)
    pisasr.set_weights_and_activate_adapters(ref.unet, SEM, [1.0, 1.0, 1.0])
    ref.unet.merge_and_unload()
    ref.unet.to("cpu", dtype=torch.float32)
    ref.unet.requires_grad_(False)
    ref.unet.eval()
    ref.timesteps1 = torch.tensor([1], device="cpu").long()
    ref.lambda_pix = torch.tensor([1.0])
    ref.lambda_sem = torch.tensor([1.0])
    return ref


# -- the comparison -------------------------------------------------------------------------------

def _max(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def run(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "tests"))
    import diffusers
    import peft
    from diffusers import UNet2DConditionModel as DiffusersUNet
    from tiny import prompt_embeds, write_base, write_pisa_pkl

    import ctsr_infer
    from ctsr_infer.families.sd_onestep.pisa import convert_pisa
    from ctsr_infer.knob import Knob
    from ctsr_infer.student_file import save_student

    torch.set_num_threads(args.threads)
    repo = Path(args.pisa_repo).resolve()
    pisasr, shims = import_pisa(repo)
    out: dict[str, Any] = {
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "peft": peft.__version__},
        "pisa_repo": str(repo), "pisa_sha256_16": {p: _sha(repo / p) for p in ("pisasr.py", "src/models/unet_2d_condition.py")},
        "shims": shims, "image": [args.height, args.width], "ranks": [RANK_PIX, RANK_SEM], "tolerance": args.tol,
    }
    with tempfile.TemporaryDirectory(prefix="pisa-ref-") as tmp_name:
        tmp = Path(tmp_name)
        base = write_base(tmp / "base")
        pkl, _ = write_pisa_pkl(tmp / "pisa_sr.pkl", RANK_PIX, RANK_SEM)
        student = convert_pisa(pkl, prompt_embeds=prompt_embeds(), base={"path": str(base)})
        up = ctsr_infer.load(save_student(student, tmp / "pisa.safetensors"), device="cpu", dtype="fp32")
        model = up.model
        pe = model.prompt_embeds.detach().clone()
        assert torch.equal(pe, prompt_embeds()), "the student's prompt_embeds are not tests/tiny.prompt_embeds()"

        redirects = [0]
        ref_default = reference(pisasr, base, pkl, default=True, redirects=redirects)
        ref_adjust = reference(pisasr, base, pkl, default=False, redirects=redirects)
        out["cuda_redirects"] = redirects[0]

        image = torch.rand(1, 3, args.height, args.width, generator=torch.Generator().manual_seed(args.seed)) * 2 - 1
        side: dict[str, float] = {}
        with torch.inference_mode():
            z = model.encode(image)  # posterior mean, scaled
            their_vae = pisasr.AutoencoderKL.from_pretrained(str(base), subfolder="vae").eval()
            z_ref = their_vae.encode(image).latent_dist.mean * their_vae.config.scaling_factor
            side["encode: their VAE posterior mean vs ctsr encode"] = _max(z_ref, z)

            # their UNet class vs diffusers' on the plain base (same folder, same weights)
            theirs = pisasr.UNet2DConditionModel.from_pretrained(str(base), subfolder="unet").eval()
            stock = DiffusersUNet.from_pretrained(str(base), subfolder="unet").eval()
            sd_t, sd_s = theirs.state_dict(), stock.state_dict()
            assert sd_t.keys() == sd_s.keys() and all(torch.equal(sd_t[k], sd_s[k]) for k in sd_t)
            t1 = torch.tensor([1]).long()
            side["base UNet: their class vs diffusers' (plain forward)"] = _max(
                theirs(z, t1, encoder_hidden_states=pe).sample, stock(z, t1, encoder_hidden_states=pe).sample)

            eps_pix_ctsr, eps_sem_ctsr = model.noise(z), model.velocity(z, 1)
            side["|eps_pix - eps_base| (how much the pixel branch changes eps)"] = _max(
                eps_pix_ctsr, stock(z, t1, encoder_hidden_states=pe).sample)
            side["|eps_sem - eps_pix| (how much the semantic branch changes eps)"] = _max(eps_sem_ctsr, eps_pix_ctsr)
            side["max |eps| (scale)"] = float(eps_sem_ctsr.abs().max())

        rows: list[dict[str, Any]] = []
        with torch.no_grad():
            eps_ref = ref_default._predict_no_tiling(z.clone(), pe, True)
        with torch.inference_mode():
            x0 = model.mix_branches(z, [0.0])[0]
        rows.append({"mode": "default (single merged pass)", "lambda_pix": 1.0, "lambda_sem": 1.0, "ctsr": "mix_branches t=0",
                     "eps": _max(eps_ref, z - x0), "x0": _max(z - eps_ref, x0)})
        side["ctsr velocity(z, 1) vs their default pass"] = _max(eps_sem_ctsr, eps_ref)
        with torch.inference_mode():
            image_ctsr = model.decode(x0)
            image_ref = their_vae.decode((z - eps_ref) / their_vae.config.scaling_factor).sample.clamp(-1, 1)
        side["decode: their VAE decode(their x0) vs ctsr decode(ctsr x0), default"] = _max(image_ref, image_ctsr)

        knob: Knob = model.meta.knob
        meta = model.meta
        for lam_pix, lam_sem in PAIRS:
            ts = [t for t in (0.0, 0.5, 1.0) if knob.lambdas(t) == (lam_pix, lam_sem)]
            if ts:
                t, use, how = ts[0], knob, f"mix_branches t={ts[0]:g}"
            else:  # outside the default mapping: the same code under a knob whose t = 0 end is the pair
                t, use = 0.0, replace(knob, lambda_pix=(lam_pix, knob.lambda_pix[1]), lambda_sem=(lam_sem, knob.lambda_sem[1]))
                how = f"mix_branches t=0, knob lambda_pix={use.lambda_pix}, lambda_sem={use.lambda_sem}"
            assert use.lambdas(t) == (lam_pix, lam_sem)
            ref_adjust.lambda_pix = torch.tensor([lam_pix])
            ref_adjust.lambda_sem = torch.tensor([lam_sem])
            with torch.no_grad():
                eps_ref = ref_adjust._predict_no_tiling(z.clone(), pe, False)
            model.meta = replace(meta, knob=use)
            try:
                with torch.inference_mode():
                    x0 = model.mix_branches(z, [t])[0]
            finally:
                model.meta = meta
            rows.append({"mode": "adjustable", "lambda_pix": lam_pix, "lambda_sem": lam_sem, "ctsr": how,
                         "eps": _max(eps_ref, z - x0), "x0": _max(z - eps_ref, x0)})
            if (lam_pix, lam_sem) == (1.0, 0.0):
                side["ctsr noise(z) vs their pixel-only pass (adjustable, (1, 0))"] = _max(eps_pix_ctsr, eps_ref)
    out["rows"] = rows
    out["side"] = side
    out["pass"] = all(r["eps"] <= args.tol and r["x0"] <= args.tol for r in rows) and all(
        v <= args.tol for k, v in side.items() if "vs" in k)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pisa-repo", required=True, help="a checkout of csslc/PiSA-SR (its pisasr.py and src/)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--height", type=int, default=32, help="image height in pixels (multiple of 16)")
    parser.add_argument("--width", type=int, default=48, help="image width in pixels (multiple of 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tol", type=float, default=1e-5, help="max abs difference allowed (float32 rounding)")
    args = parser.parse_args()
    out = run(args)
    print(f"torch {out['versions']['torch']}, diffusers {out['versions']['diffusers']}, peft {out['versions']['peft']}; "
          f"image {args.height}x{args.width}; ranks pix {RANK_PIX}, sem {RANK_SEM}; cuda->cpu redirects {out['cuda_redirects']}")
    for shim in out["shims"]:
        print(f"shim: {shim}")
    print(f"\n{'mode':<30} {'l_pix':>5} {'l_sem':>5}  {'max|d eps|':>10} {'max|d x0|':>10}  ctsr side")
    for r in out["rows"]:
        print(f"{r['mode']:<30} {r['lambda_pix']:>5g} {r['lambda_sem']:>5g}  {r['eps']:>10.2e} {r['x0']:>10.2e}  {r['ctsr']}")
    print()
    for key, value in out["side"].items():
        print(f"{value:>10.2e}  {key}")
    print(f"\n{'PASS' if out['pass'] else 'FAIL'} (tolerance {args.tol:g})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    sys.exit(0 if out["pass"] else 1)


if __name__ == "__main__":
    main()
