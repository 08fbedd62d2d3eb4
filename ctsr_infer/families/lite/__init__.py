"""The ``lite`` family: a compact feed-forward x4 student with t as an input (the embedded default).

Files: ``network.py`` (the network; sizes read from its tensors), ``model.py`` (the loaded student:
tiling, resizing, colour fix), this descriptor. It has no public checkpoint format to convert from:
its students are trained by ``ctsr train lite`` (``ctsr_infer/train/lite_gan.py``).
"""

from __future__ import annotations

from importlib.resources import files

import torch

from ...device import Placement
from ...knob import Knob
from ...student_file import StudentFile, StudentMeta, load_student
from ..family import CpuFastPath, Family, LoadContext, TilingPolicy
from .model import LiteStudent
from .network import LiteNet, check_config

__all__ = ["FAMILY", "LiteNet", "LiteStudent"]

EMBEDDED = "weights/ctsr-lite.safetensors"
"""The shipped student inside the ``ctsr_infer`` package."""


def _build(student: StudentFile, placement: Placement, context: LoadContext) -> LiteStudent:
    return LiteStudent(student, placement)


def _random_model(placement: Placement, small: bool) -> LiteStudent:
    """Full size: the shipped student itself (it is embedded, and its accuracy under bf16 is what the
    device checks measure); small: an 8-channel, 2-block network with random weights."""
    if not small:
        return LiteStudent(load_student(str(files("ctsr_infer").joinpath(EMBEDDED))), placement)
    net = LiteNet(channels=8, blocks=2)
    tensors = {f"net.{k}": v + 0.01 * torch.randn_like(v) for k, v in net.state_dict().items()}
    meta = StudentMeta(family="lite", knob=Knob(kind="native", default_t=0.5), color_fix="none", config=net.config())
    return LiteStudent(StudentFile(meta, tensors), placement)


FAMILY = Family(
    name="lite",
    description="compact feed-forward x4 network, t as an input (ctsr-lite)",
    build=_build,
    random_model=_random_model,
    options=("tiling", "tile", "tile_overlap"),
    tiling=TilingPolicy(modes=("auto", "off"), min_tile=16, tile_unit="input", batchable=True),
    cpu_fast_path=CpuFastPath(network="bf16", encoder="bf16", decoder="bf16", channels_last=True),
    check_config=check_config,
    knob_kinds=("native",),
)
