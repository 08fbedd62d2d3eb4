"""ctsr-infer: one-step diffusion super-resolution with a fidelity <-> realness knob ``t``.

The public API is what ``__all__`` lists; everything else is private.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (
    CtsrError,
    DeviceError,
    ImageReadError,
    IncompatibleWeightsError,
    InvalidInputError,
    KnobError,
    MissingDependencyError,
    NumericalError,
    UnknownModelError,
    UnsafeCheckpointError,
    WeightsNotFoundError,
)
from .manifest import ModelSpec
from .pipeline import Upscaler, load
from .progress import ProgressEvent

__all__ = [
    "__version__",
    "Upscaler",
    "load",
    "list_models",
    "ModelSpec",
    "ProgressEvent",
    "CtsrError",
    "DeviceError",
    "ImageReadError",
    "IncompatibleWeightsError",
    "InvalidInputError",
    "KnobError",
    "MissingDependencyError",
    "NumericalError",
    "UnknownModelError",
    "UnsafeCheckpointError",
    "WeightsNotFoundError",
]


def list_models() -> list[ModelSpec]:
    """The models of the shipped manifest, sorted by id."""
    from .manifest import load_manifest

    manifest = load_manifest()
    return [manifest.models[k] for k in sorted(manifest.models)]
