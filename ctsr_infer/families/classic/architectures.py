"""Classic SR networks through spandrel (chaiNNer's loader): architecture detection from a state
dict, hyperparameters from tensor shapes, a descriptor with scale, purpose and size requirements.

spandrel 0.4 declares torchvision as a dependency, and two of its architectures import
``torchvision.transforms.functional`` when spandrel is imported: LaMa (inpainting) and RestoreFormer
(face restoration). Neither is single-image super-resolution, which is all this family runs. Where
torchvision is not installed (a CPU-only torch must not get a torchvision from PyPI beside it),
:func:`spandrel` imports spandrel with a stand-in ``torchvision.transforms.functional`` whose two
functions raise if ever called, then removes the stand-in from ``sys.modules`` so nothing else in
the process sees it. Install spandrel without its torchvision requirement there:
``pip install --no-deps 'spandrel>=0.4.2,<0.5' einops`` (README "Classic models").
"""

from __future__ import annotations

import enum
import sys
import types
from collections.abc import Mapping
from typing import Any

import torch

from ...errors import IncompatibleWeightsError, require

__all__ = ["spandrel", "descriptor_from_state", "detect", "SR_PURPOSES"]

SR_PURPOSES = ("SR",)
"""spandrel purposes this family runs: single-image super-resolution (restoration, face and
inpainting models are refused with a message naming their purpose)."""


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    def missing(*args: Any, **kwargs: Any) -> Any:
        raise ImportError("this spandrel architecture needs torchvision, which is not installed")

    functional = types.ModuleType("torchvision.transforms.functional")
    setattr(functional, "InterpolationMode", enum.Enum("InterpolationMode", "NEAREST BILINEAR BICUBIC"))  # noqa: B010
    setattr(functional, "rotate", missing)  # noqa: B010
    setattr(functional, "normalize", missing)  # noqa: B010
    transforms = types.ModuleType("torchvision.transforms")
    setattr(transforms, "functional", functional)  # noqa: B010
    root = types.ModuleType("torchvision")
    setattr(root, "transforms", transforms)  # noqa: B010
    return {"torchvision": root, "torchvision.transforms": transforms, "torchvision.transforms.functional": functional}


def spandrel() -> types.ModuleType:
    """The ``spandrel`` module (the ``classic`` extra), imported without torchvision if need be."""
    require("spandrel", extra="classic", purpose="Running classic SR networks (ESRGAN, SwinIR, HAT, SPAN, ...)")
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    import importlib.util

    stand_in = {} if importlib.util.find_spec("torchvision") is not None else _torchvision_stand_in()
    sys.modules.update(stand_in)
    try:
        import spandrel as module
    finally:
        for name in stand_in:
            sys.modules.pop(name, None)
    return module


def _state(data: Any) -> dict[str, Any] | None:
    if not isinstance(data, Mapping):
        return None
    return dict(spandrel().canonicalize_state_dict(dict(data)))


def detect(data: Any) -> str | None:
    """The spandrel architecture id whose detector accepts this state dict, or None. Cheap: key and
    shape conditions only, nothing is built."""
    state = _state(data)
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return None
    for support in spandrel().MAIN_REGISTRY.architectures("detection"):
        try:
            if support.detect(state):
                return str(support.architecture.id)
        except Exception:  # noqa: BLE001 - a detector that trips on an unusual dict simply does not match
            continue
    return None


def descriptor_from_state(data: Any, *, source: str) -> Any:
    """The spandrel ``ImageModelDescriptor`` of a state dict, refused unless it is a 3-channel
    single-image SR model.

    Raises:
        IncompatibleWeightsError: not a network spandrel knows, or not super-resolution.
    """
    module = spandrel()
    try:
        state = _state(data)
    except Exception:  # noqa: BLE001 - canonicalising arbitrary user data (integer keys...)
        state = None
    if state is None:
        raise IncompatibleWeightsError(f"{source}: expected a state dict of tensors, found {type(data).__name__}.")
    try:
        descriptor = module.MAIN_REGISTRY.load(state)
    except module.UnsupportedModelError:
        raise IncompatibleWeightsError(f"{source}: spandrel does not recognise this network's layout "
                                       f"(keys such as {sorted(map(str, state))[:4]}).") from None
    except Exception as exc:  # noqa: BLE001 - spandrel building from malformed tensors: any failure is a bad file
        raise IncompatibleWeightsError(f"{source}: spandrel could not build the network ({type(exc).__name__}: {str(exc)[:300]}).") from None
    name = f"{descriptor.architecture.name} ({descriptor.purpose})"
    if not isinstance(descriptor, module.ImageModelDescriptor) or descriptor.purpose not in SR_PURPOSES:
        raise IncompatibleWeightsError(f"{source} is a {name} model; this version runs single-image super-resolution "
                                       "models only (restoration, face and inpainting models are not supported).")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise IncompatibleWeightsError(f"{source} is a {name} model with {descriptor.input_channels} input and "
                                       f"{descriptor.output_channels} output channels; this version runs RGB models only.")
    return descriptor
