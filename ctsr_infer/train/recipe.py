"""Running a training recipe from Python: prepare it (trainer plus data), then resume, train,
checkpoint and export. ``ctsr train ...`` is a thin layer over this module.

    from ctsr_infer.train.recipe import run_recipe, tadsr
    from ctsr_infer.train.tadsr import TadsrConfig

    prepared = tadsr("teacher.safetensors", "photos/", config=TadsrConfig(steps=1000))
    run_recipe(prepared, "student.safetensors", checkpoint="tadsr.ckpt")

Each ``prepare`` function takes its settings as a config object, a settings file (``.toml``,
``.json``, ``.yaml``) or None (the paper's defaults), plus keyword overrides that win over both (None
leaves a value alone). Under ``accelerate launch`` every process draws its own data; only the main
process reports steps and writes files. ctsr-lite has its own whole-recipe loop: :func:`run_lite`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ..errors import CtsrError, InvalidInputError, require
from ..image import IMAGE_EXTENSIONS
from ..plan import find_images as discover_images

if TYPE_CHECKING:
    import torch
    from _typeshed import DataclassInstance

    from .colearn import ColearnConfig
    from .ctsr_stage1 import Stage1Config
    from .ctsr_stage2 import Stage2Config
    from .lite import LiteConfig
    from .tadsr import TadsrConfig
    from .trainer import Recipe

__all__ = [
    "PreparedRecipe",
    "StepCallback",
    "colearn",
    "ctsr_stage1",
    "ctsr_stage2",
    "find_images",
    "resshift_distillation",
    "run_lite",
    "run_recipe",
    "tadsr",
]

logger = logging.getLogger(__name__)

C = TypeVar("C", bound="DataclassInstance")
PathLike = str | os.PathLike[str]
StepCallback = Callable[[int, dict[str, float]], None]
"""``on_step(step, terms)``: called on the main process after every optimiser step."""


@dataclass(frozen=True)
class PreparedRecipe:
    """A recipe ready to run: its trainer and where its batches come from."""

    name: str
    """Shown in logs and progress (``stage 1``, ``tadsr``)."""
    trainer: Recipe
    batches: Callable[[int], Iterator[Any]]
    """``batches(seed)``: endless training batches drawn from ``seed``."""
    loss: str
    """The loss term a progress display shows."""


def find_images(folder: PathLike, *, argument: str, hint: str = "") -> list[Path]:
    """The image files directly in ``folder`` (sorted; hidden files left out), as ``ctsr upscale``
    finds them in a folder.

    Raises:
        InvalidInputError: ``folder`` is not a folder or holds no image file.
    """
    folder = Path(folder)
    files = discover_images(folder)
    if not files:
        raise InvalidInputError(f"`{argument}` `{folder}` holds no images ({' '.join(sorted(IMAGE_EXTENSIONS))}){hint}.")
    return files


_PHOTOS_HINT = "; scripts/fetch_photos.sh fetches some"


def _settings(cls: type[C], config: C | PathLike | None, overrides: dict[str, Any]) -> C:
    """``config`` (an object, a settings file, or None for the defaults) with the non-None ``overrides``."""
    from .config import load_config

    known = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InvalidInputError(f"unknown {cls.__name__} settings {unknown}; known: {sorted(known)}.")
    if config is None or isinstance(config, (str, os.PathLike)):
        return load_config(cls, None if config is None else Path(config), **overrides)
    if not isinstance(config, cls):
        raise InvalidInputError(f"`config` must be a {cls.__name__} or a settings file, got {type(config).__name__}.")
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


def _require_train_extra(*modules: str) -> None:
    """MissingDependencyError naming the ``train`` extra unless every module can be imported."""
    for module in modules:
        require(module, extra="train", purpose="Training")


def ctsr_stage1(student: PathLike, base: PathLike, fidelity: PathLike, photos: PathLike, *,
                config: Stage1Config | PathLike | None = None, crop: int = 512, **overrides: Any) -> PreparedRecipe:
    """CTSR stage 1: distil a realness (OSEDiff) and a fidelity (ResShift) teacher into the student's LoRA.

    ``config``: a :class:`~ctsr_infer.train.ctsr_stage1.Stage1Config`, a settings file or None;
    ``crop``: the high-resolution crop side."""
    files = find_images(photos, argument="photos", hint=_PHOTOS_HINT)
    _require_train_extra("accelerate", "peft")
    from .ctsr_stage1 import Stage1Config, Stage1Trainer, paired_batches

    settings = _settings(Stage1Config, config, overrides)
    trainer = Stage1Trainer(student, base, fidelity, settings)
    return PreparedRecipe("stage 1", trainer, lambda seed: paired_batches(files, crop=crop, seed=seed), "total")


def ctsr_stage2(stage1: PathLike, base: PathLike, images: PathLike, *, config: Stage2Config | PathLike | None = None,
                crop: int = 128, **overrides: Any) -> PreparedRecipe:
    """CTSR stage 2: distil the fidelity path of the stage-1 student into a ctrl LoRA (Eq. 8).

    ``images``: a folder of low-resolution training images; ``crop``: the low-resolution crop side."""
    import numpy as np

    from ..image import read_image

    files = find_images(images, argument="images")
    pixels = [np.asarray(read_image(f).pixels, dtype=np.float32)[..., :3] for f in files]
    _require_train_extra("accelerate", "peft")
    from .ctsr_stage2 import Stage2Config, Stage2Trainer, lr_batches

    settings = _settings(Stage2Config, config, overrides)
    trainer = Stage2Trainer(stage1, base, settings)
    return PreparedRecipe("stage 2", trainer, lambda seed: lr_batches(pixels, batch=settings.batch, crop=crop, seed=seed), "ctrl")


def resshift_distillation(recipe: Literal["tadsr", "colearn"], teacher: PathLike, photos: PathLike, *,
                          config: TadsrConfig | ColearnConfig | PathLike | None = None, **overrides: Any) -> PreparedRecipe:
    """A one-step student distilled from a ResShift teacher (a ``resshift-onestep`` student file):
    ``tadsr`` (TAD-SR) or ``colearn`` (co-learning). Both draw (LR, HR) pairs from the photographs."""
    files = find_images(photos, argument="photos", hint=_PHOTOS_HINT)
    _require_train_extra("accelerate")
    from .ctsr_stage1 import paired_batches, stacked

    trainer: Any
    if recipe == "tadsr":
        from .tadsr import TadsrConfig, TadsrTrainer

        settings: Any = _settings(TadsrConfig, config, overrides)
        trainer, loss = TadsrTrainer(teacher, settings), "total"
    elif recipe == "colearn":
        from .colearn import ColearnConfig, ColearnTrainer

        settings = _settings(ColearnConfig, config, overrides)
        trainer, loss = ColearnTrainer(teacher, settings), "student"
    else:
        raise InvalidInputError(f"`recipe` must be 'tadsr' or 'colearn', got {recipe!r}.")
    return PreparedRecipe(recipe, trainer, lambda seed: stacked(paired_batches(files, crop=settings.crop, seed=seed), settings.batch), loss)


def tadsr(teacher: PathLike, photos: PathLike, *, config: TadsrConfig | PathLike | None = None, **overrides: Any) -> PreparedRecipe:
    """TAD-SR: distil the ResShift teacher into a one-step student (distillation + HSD + time-aware GAN)."""
    return resshift_distillation("tadsr", teacher, photos, config=config, **overrides)


def colearn(teacher: PathLike, photos: PathLike, *, config: ColearnConfig | PathLike | None = None, **overrides: Any) -> PreparedRecipe:
    """Co-learning: a one-step upsampler with a learnable downsampler and two discriminators."""
    return resshift_distillation("colearn", teacher, photos, config=config, **overrides)


def run_recipe(prepared: PreparedRecipe, output: PathLike, *, checkpoint: PathLike | None = None,
               on_step: StepCallback | None = None, on_resume: Callable[[int], None] | None = None) -> Path | None:
    """Resume from ``checkpoint`` when the file exists, train up to the config's ``steps``
    (checkpointing every ``checkpoint_every`` steps and at the end), and export the student.

    Args:
        prepared: what a ``prepare`` function of this module returns.
        output: the student file to write (``.safetensors``).
        checkpoint: the checkpoint file, read when present and written as training goes.
        on_step: called on the main process after every step with the step and its loss terms.
        on_resume: called on the main process with the step training resumes at.

    Returns:
        The exported student file on the main process, None on the others.
    """
    trainer = prepared.trainer
    engine = trainer.engine
    path = None if checkpoint is None else Path(checkpoint)
    # 1. resume
    if path is not None and path.is_file():
        trainer.load_checkpoint(path)
        if engine.is_main:
            logger.info("%s: resumed from %s at step %d", prepared.name, path, trainer.step)
            if on_resume is not None:
                on_resume(trainer.step)
    # 2. train: each process draws its own data, from the seed and the step it starts at
    batches = prepared.batches(engine.process_seed(trainer.config.seed + trainer.step))

    def report(step: int, terms: dict[str, float]) -> None:
        if on_step is not None:
            on_step(step, terms)
        if step % 50 == 0 or step == trainer.config.steps:
            logger.info("%s step %d: %s", prepared.name, step, " ".join(f"{k} {v:.4g}" for k, v in terms.items()))

    trainer.train(batches, checkpoint=path, on_step=report)
    # 3. the last checkpoint and the student
    if path is not None:
        trainer.save_checkpoint(path)
    exported = trainer.export(output) if engine.is_main else None
    engine.wait()
    return exported


_LITE_MINIMUMS = {"batch": 1, "patches_per_image": 1, "fidelity_steps": 0, "stage1_steps": 0, "stage2_steps": 0, "seed": 0}


def run_lite(config: LiteConfig, *, teacher: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Path:
    """The ctsr-lite recipe (:func:`ctsr_infer.train.lite.train_lite`) with its inputs checked first.

    Returns the exported student file (``config.work / "ctsr-lite.safetensors"``).

    Raises:
        InvalidInputError: a setting is out of range; ``config.photos`` is not a folder, holds no
            training photo (none, or all held out), or one smaller than ``config.patch``; or
            ``train_lite`` finds its data or its caches unusable.
    """
    from .lite import load_hr, split_photos, train_lite

    # 1. check inputs
    for name, minimum in _LITE_MINIMUMS.items():
        if getattr(config, name) < minimum:
            raise InvalidInputError(f"`{name}` must be >= {minimum}, got {getattr(config, name)}.")
    if not Path(config.photos).is_dir():
        raise InvalidInputError(f"`photos` `{config.photos}` is not a folder{_PHOTOS_HINT}.")
    files = split_photos(Path(config.photos), config.holdout)[0]
    if not files:
        raise InvalidInputError(f"`photos` `{config.photos}` holds no training photos (.jpg, .png; held-out ones "
                                f"left out){_PHOTOS_HINT}.")
    small = [f.name for f in files if min(load_hr(f, config.hr_long_side).shape[-2:]) < config.patch]
    if small:  # the pairs are cut at hr_long_side
        raise InvalidInputError(f"training photos {small} are smaller than `patch` ({config.patch} px) on their short side "
                                f"once shrunk to `hr_long_side` ({config.hr_long_side} px); remove them or lower `patch`.")
    # 2. train; train_lite reports unusable photos or caches as a FileNotFoundError of its own (no file name)
    try:
        return train_lite(config, teacher=teacher)
    except FileNotFoundError as exc:
        if isinstance(exc, CtsrError) or exc.filename is not None:
            raise
        raise InvalidInputError(str(exc)) from exc
