"""ctsr_infer.train.recipe: recipes run from Python without the CLI (prepare, run, resume, export),
and the inputs are checked before any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ctsr_infer
from ctsr_infer.errors import InvalidInputError
from ctsr_infer.train.lite import LiteConfig
from ctsr_infer.train.recipe import find_images, run_lite, run_recipe, tadsr
from ctsr_infer.train.tadsr import TadsrConfig
from tests.tiny import write_resshift_teacher

TINY = TadsrConfig(steps=1, batch=1, crop=64, disc_embed=32, disc_c_dim=8)


def _photos(folder: Path, count: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.fromarray((np.random.default_rng(index).random((80, 80, 3)) * 255).astype(np.uint8)).save(folder / f"{index}.png")
    return folder


def test_run_recipe_from_python_trains_checkpoints_and_exports(tmp_path: Path) -> None:
    """No CLI: prepare TAD-SR with a config object and a keyword override, run one step, load the
    student. (Resuming through run_recipe is covered by test_ctsr_stage2's CLI test.)"""
    import torch

    teacher = write_resshift_teacher(tmp_path / "teacher", seed=21, steps=3, min_noise_level=0.2)
    prepared = tadsr(teacher, _photos(tmp_path / "photos"), config=TINY, seed=3)  # keyword overrides win over the config
    assert prepared.trainer.config.seed == 3 and prepared.loss == "total"
    steps: list[tuple[int, set[str]]] = []
    path = run_recipe(prepared, tmp_path / "s.safetensors", checkpoint=tmp_path / "ck.pt",
                      on_step=lambda step, terms: steps.append((step, set(terms))))
    assert path == tmp_path / "s.safetensors" and [step for step, _ in steps] == [1] and "total" in steps[0][1]
    assert torch.load(tmp_path / "ck.pt", weights_only=True)["step"] == 1
    assert ctsr_infer.load(str(path)).meta.provenance["tadsr"]["trained_steps"] == 1


def test_settings_refuse_unknown_overrides_and_wrong_config_types(tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos")
    with pytest.raises(InvalidInputError, match="learning_rate"):
        tadsr(tmp_path / "t.safetensors", photos, config=TINY, learning_rate=1e-4)
    with pytest.raises(InvalidInputError, match="TadsrConfig"):
        tadsr(tmp_path / "t.safetensors", photos, config=LiteConfig(photos=photos, work=tmp_path))


def test_find_images_is_the_folder_discovery_of_upscale(tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos", count=2)
    (photos / "notes.txt").write_text("x")
    (photos / ".hidden.png").write_bytes(b"")
    (photos / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(photos / "sub" / "deep.png")
    assert find_images(photos, argument="photos") == [photos / "0.png", photos / "1.png"]
    with pytest.raises(InvalidInputError, match="`images` `.*sub2` holds no images"):
        find_images(tmp_path / "sub2", argument="images")


def test_run_lite_checks_its_inputs_before_any_work(tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos")
    work = tmp_path / "work"
    with pytest.raises(InvalidInputError, match="`patches_per_image` must be >= 1"):
        run_lite(LiteConfig(photos=photos, work=work, patches_per_image=0))
    with pytest.raises(InvalidInputError, match="holds no training photos"):
        run_lite(LiteConfig(photos=photos, work=work, holdout=("0",)))
    with pytest.raises(InvalidInputError, match="smaller than `patch`"):  # 80 px photos, 128 px patches
        run_lite(LiteConfig(photos=photos, work=work))
    assert not (work / "ctsr-lite.safetensors").exists()
