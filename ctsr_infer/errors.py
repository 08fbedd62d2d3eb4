"""The one error tree of ctsr-infer.

Every error the library raises on purpose is a :class:`CtsrError`. Each class also subclasses the
builtin it specialises, so ``except ValueError`` or ``except FileNotFoundError`` in user code keeps
working. Messages name the argument in backticks, say what was expected and what was received, and
say how to fix it.
"""

from __future__ import annotations

__all__ = [
    "CtsrError",
    "InvalidInputError",
    "ImageReadError",
    "InputNotFoundError",
    "UnknownModelError",
    "WeightsNotFoundError",
    "IncompatibleWeightsError",
    "UnsafeCheckpointError",
    "KnobError",
    "NumericalError",
    "DeviceError",
    "MissingDependencyError",
]


class CtsrError(Exception):
    """Base class of every error raised on purpose by ctsr-infer."""


class InvalidInputError(CtsrError, ValueError):
    """An argument has a wrong value or type (e.g. ``t`` outside [0, 1], ``scale`` below 1)."""


class ImageReadError(CtsrError, ValueError):
    """An input image cannot be read: missing, corrupt, or of an unsupported format or mode."""


class InputNotFoundError(ImageReadError, FileNotFoundError):
    """An input file does not exist."""


class UnknownModelError(CtsrError, KeyError):
    """A model id is not in the manifest; the message lists close matches."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class WeightsNotFoundError(CtsrError, FileNotFoundError):
    """A weight file or base-model folder is missing; the message says how to get it."""


class IncompatibleWeightsError(CtsrError, ValueError):
    """Weights do not fit the architecture: wrong keys, shapes or dtypes, or a malformed file."""


class UnsafeCheckpointError(CtsrError, ValueError):
    """A pickled checkpoint asks for something the allow-listed unpickler refuses to build."""


class KnobError(CtsrError, ValueError):
    """``t`` was given to a model that has no knob, or the knob metadata is malformed."""


class NumericalError(CtsrError, ArithmeticError):
    """The output stayed non-finite (NaN/Inf) even after the fp32 retry."""


class DeviceError(CtsrError, RuntimeError):
    """The requested device or dtype is not available on this machine."""


class MissingDependencyError(CtsrError, ImportError):
    """An optional package is needed for this step; the message names the extra that installs it."""


def require(module: str, *, extra: str, purpose: str) -> None:
    """Raise :class:`MissingDependencyError` unless ``module`` can be imported."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(
            f"{purpose} needs the `{module}` package, which the runtime install leaves out; "
            f"install it with `pip install 'ctsr-infer[{extra}]'`."
        )
