"""The embedded default model as shipped: checksum, the README's main command, t behaviour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import ctsr_infer
from ctsr_infer.cli import app
from ctsr_infer.errors import InvalidInputError
from ctsr_infer.hub import sha256_of
from ctsr_infer.manifest import load_manifest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def lite():
    return ctsr_infer.load(device="cpu")


def test_the_default_is_the_embedded_model_and_its_hash_matches() -> None:
    manifest = load_manifest()
    spec = manifest.models[manifest.default]
    assert spec.id == "ctsr-lite" and spec.file.sources[0].package
    path = ROOT / "ctsr_infer" / spec.file.sources[0].package
    assert sha256_of(path) == spec.file.sha256 and path.stat().st_size == spec.file.size <= 10_000_000


def test_the_readme_main_command(tmp_path: Path) -> None:
    target = tmp_path / "coffee_x4.png"
    result = CliRunner().invoke(app, ["upscale", str(ROOT / "examples" / "coffee_lowres.png"), "--t", "0.4", "-o", str(target)])
    assert result.exit_code == 0, result.output
    out = np.asarray(Image.open(target).convert("RGB")).astype(float)
    assert out.shape == (400, 600, 3)
    # faithful in colour and layout: shrunk back, it is the input within a few levels
    source = np.asarray(Image.open(ROOT / "examples" / "coffee_lowres.png").convert("RGB")).astype(float)
    shrunk = np.asarray(Image.open(target).convert("RGB").resize((150, 100), Image.Resampling.BOX)).astype(float)
    assert np.abs(shrunk - source).mean() < 8


def test_t_moves_the_output_monotonically(lite) -> None:
    image = np.asarray(Image.open(ROOT / "examples" / "coffee_lowres.png").convert("RGB"))[:64, :64]
    outs = [o.astype(float) for o in lite.sweep(image, [0.0, 0.25, 0.5, 0.75, 1.0])]
    distance = [np.abs(o - outs[0]).mean() for o in outs]
    assert all(a < b for a, b in zip(distance, distance[1:])), distance
    midpoint = np.abs(outs[2] - (outs[0] + outs[4]) / 2).mean()
    assert midpoint < 0.5 * distance[-1]  # t = 0.5 lies between the ends
    with pytest.raises(InvalidInputError, match="`t`"):
        lite.upscale(image, t=1.5)


def test_any_scale_and_size(lite) -> None:
    image = np.random.default_rng(0).integers(0, 256, (1, 1, 3), dtype=np.uint8)
    assert lite.upscale(image).shape == (4, 4, 3)
    assert lite.upscale(np.zeros((7, 13, 3), dtype=np.uint8), scale=2.5).shape == (18, 33, 3)


def test_flat_colours_keep_their_colour_at_every_t(lite) -> None:
    rng = np.random.default_rng(0)
    colours = [(0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255), (128, 128, 128), (0, 128, 128)]
    colours += [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(8)]
    worst = []
    for rgb in colours:
        image = np.full((40, 40, 3), rgb, np.uint8)
        for out in lite.sweep(image, [0.0, 0.25, 0.5, 0.75, 1.0]):
            worst.append(int(np.abs(out.astype(int) - np.array(rgb)).max()))
    # measured: at most 1 level everywhere except saturated blue at t = 0 (2 levels: the GAN's texture)
    assert max(worst) <= 2 and sum(w > 1 for w in worst) <= 1, worst


def test_the_tile_context_covers_the_receptive_radius_and_tiles_change_nothing(lite) -> None:
    assert lite.model.context == 40  # 16 blocks: 35 px, measured on the unfolded FiLM path
    image = np.random.default_rng(1).integers(0, 256, (150, 170, 3), dtype=np.uint8)
    whole = lite.upscale(image, t=0.3, tiling="off").astype(int)
    tiled = lite.upscale(image, t=0.3, tile=64).astype(int)
    assert np.abs(whole - tiled).max() <= 1
