"""``ctsr train``: thin commands over :mod:`ctsr_infer.train.recipe`, which runs the same recipes
from Python. The train extra is imported only when a command runs (the runtime CLI never loads it)."""

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import MissingDependencyError
from .app import err, out
from .options import CheckpointOption, ConfigOption, PhotosOption, RequiredBaseOption, StudentOutOption

if TYPE_CHECKING:
    from ..train.recipe import PreparedRecipe

__all__ = ["train_app"]

train_app = typer.Typer(no_args_is_help=True, help="Training recipes (needs `pip install 'ctsr-infer\\[train]'`).")


@contextmanager
def _train_extra() -> Iterator[None]:
    """Around a train command: a package of the train extra that cannot be imported becomes a
    MissingDependencyError (exit 3) with the install command."""
    try:
        yield
    except MissingDependencyError:
        raise
    except ImportError as exc:
        raise MissingDependencyError(f"the train extra is missing ({exc}); run `pip install 'ctsr-infer[train]'`.") from None


def _run(prepared: "PreparedRecipe", output: Path, checkpoint: Path | None) -> None:
    """Run a prepared recipe with a progress bar on the main process; print what it wrote."""
    from ..train.recipe import run_recipe

    trainer = prepared.trainer
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                   disable=not (err.is_terminal and trainer.engine.is_main))

    def on_resume(step: int) -> None:
        bar.console.print(f"resumed from {checkpoint} at step {step}")
        bar.update(task, completed=step)

    def on_step(step: int, terms: dict[str, float]) -> None:
        bar.update(task, completed=step, description=f"{prepared.name} loss {terms[prepared.loss]:.4g}")

    with bar:
        task = bar.add_task(prepared.name, total=trainer.config.steps, completed=trainer.step)
        path = run_recipe(prepared, output, checkpoint=checkpoint, on_step=on_step, on_resume=on_resume)
    if path is not None:
        out.print(f"wrote {path}")


@train_app.command("lite")
def train_lite_command(
    photos: PhotosOption,
    work: Annotated[Path, typer.Option("--work", help="Cache and output folder.")],
    fidelity_steps: Annotated[int | None, typer.Option(help="Steps of the fidelity teacher.")] = None,
    stage1_steps: Annotated[int | None, typer.Option(help="Steps of stage 1 (dual-teacher).")] = None,
    stage2_steps: Annotated[int | None, typer.Option(help="Steps of stage 2 (the t path).")] = None,
    batch: Annotated[int | None, typer.Option(help="Patches per step.")] = None,
    patches_per_image: Annotated[int | None, typer.Option(help="HR patches cut from each training photo.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of data, degradations and initialisation.")] = None,
) -> None:
    """Distil Real-ESRGAN x4plus (realness) and an MSE-trained network (fidelity) into ctsr-lite.

    The defaults are the recipe of the shipped model (see the README's model card)."""
    logging.getLogger("ctsr_infer").setLevel(logging.INFO)
    given: dict[str, Any] = {"fidelity_steps": fidelity_steps, "stage1_steps": stage1_steps, "stage2_steps": stage2_steps, "batch": batch,
                 "patches_per_image": patches_per_image, "seed": seed}
    with _train_extra():
        from ..train.lite import LiteConfig
        from ..train.recipe import run_lite

        path = run_lite(LiteConfig(photos=photos, work=work, **{k: v for k, v in given.items() if v is not None}))
    out.print(f"wrote {path}")


@train_app.command("ctsr-stage1")
def train_ctsr_stage1(
    student: Annotated[Path, typer.Option("--student", help="Initial student file (a converted OSEDiff = the realness teacher).")],
    base: RequiredBaseOption,
    fidelity: Annotated[Path, typer.Option("--fidelity", help="Fidelity teacher: a resshift-onestep student file (e.g. `ctsr models download resshift-x4-s15`).")],
    photos: PhotosOption,
    output: StudentOutOption,
    config: ConfigOption = None,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps (paper: 20,000).")] = None,
    lr: Annotated[float | None, typer.Option(help="AdamW learning rate (paper: 5e-5).")] = None,
    perceptual: Annotated[str | None, typer.Option(help="lpips-vgg (the paper's; needs the lpips package) or untrained-features (explicit opt-out).")] = None,
    crop: Annotated[int, typer.Option(help="High-resolution crop side (paper: 512).")] = 512,
    seed: Annotated[int | None, typer.Option(help="Seed of data, timesteps and noise.")] = None,
    checkpoint: CheckpointOption = None,
) -> None:
    """CTSR stage 1: distil a realness (OSEDiff) and a fidelity (ResShift) teacher into the student's LoRA."""
    with _train_extra():
        from ..train.recipe import ctsr_stage1

        _run(ctsr_stage1(student, base, fidelity, photos, config=config, crop=crop, steps=steps, lr=lr, perceptual=perceptual, seed=seed),
             output, checkpoint)


def _resshift_command(recipe: Literal["tadsr", "colearn"], *, paper_steps: str, paper_batch: str) -> Callable[..., None]:
    """The one command of the ResShift-teacher recipes (TAD-SR, co-learning): same options, the
    paper's numbers in the help."""

    def command(
        teacher: Annotated[Path, typer.Option("--teacher", help="ResShift teacher as a resshift-onestep file (`ctsr models download resshift-x4-s15`).")],
        photos: PhotosOption,
        output: StudentOutOption,
        config: ConfigOption = None,
        steps: Annotated[int | None, typer.Option(help=f"Optimiser steps ({paper_steps}).")] = None,
        batch: Annotated[int | None, typer.Option(help=f"Pairs per step ({paper_batch}).")] = None,
        crop: Annotated[int | None, typer.Option(help="HR crop side (paper: 256).")] = None,
        seed: Annotated[int | None, typer.Option(help="Seed of data and noise.")] = None,
        checkpoint: CheckpointOption = None,
    ) -> None:
        with _train_extra():
            from ..train.recipe import resshift_distillation

            _run(resshift_distillation(recipe, teacher, photos, config=config, steps=steps, batch=batch, crop=crop, seed=seed),
                 output, checkpoint)

    command.__name__ = f"train_{recipe}"
    return command


train_app.command("tadsr", help="TAD-SR: distil the ResShift teacher into a one-step student (distillation + HSD + time-aware GAN).")(
    _resshift_command("tadsr", paper_steps="paper: 30,000", paper_batch="paper: 8"))
train_app.command("colearn", help="Co-learning: a one-step upsampler with a learnable downsampler and two discriminators.")(
    _resshift_command("colearn", paper_steps="paper: 20,000", paper_batch="not given by the paper"))


@train_app.command("ctsr-stage2")
def train_ctsr_stage2(
    stage1: Annotated[Path, typer.Option("--stage1", help="The stage-1 student file (e.g. a converted OSEDiff, or stage 1's export).")],
    base: RequiredBaseOption,
    images: Annotated[Path, typer.Option("--images", help="Folder of low-resolution training images.")],
    output: StudentOutOption,
    config: ConfigOption = None,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps (paper: 50,000).")] = None,
    lr: Annotated[float | None, typer.Option(help="AdamW learning rate (paper: 5e-5).")] = None,
    rank: Annotated[int | None, typer.Option(help="Rank of the ctrl LoRA (paper: 4; alpha = rank).")] = None,
    tau_start: Annotated[int | None, typer.Option(help="UNet timestep at t = 0.")] = None,
    tau_end: Annotated[int | None, typer.Option(help="UNet timestep at t = 1.")] = None,
    crop: Annotated[int, typer.Option(help="Low-resolution crop side per sample.")] = 128,
    seed: Annotated[int | None, typer.Option(help="Seed of crops, (t, t') draws and initialisation.")] = None,
    checkpoint: CheckpointOption = None,
) -> None:
    """CTSR stage 2: distil the fidelity path of the stage-1 student into a ctrl LoRA (Eq. 8); the student's knob is ctsr-flow."""
    with _train_extra():
        from ..train.recipe import ctsr_stage2

        _run(ctsr_stage2(stage1, base, images, config=config, crop=crop, steps=steps, lr=lr, rank=rank,
                         alpha=None if rank is None else float(rank), tau_start=tau_start, tau_end=tau_end, seed=seed),
             output, checkpoint)
