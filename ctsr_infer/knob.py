"""The fidelity <-> realness knob ``t``: validation and the knob kinds.

``t`` lies in [0, 1]: 0 is the most realistic detail, 1 the most faithful to the input. Each
student declares its knob kind in its metadata:

* ``none``: the student has no knob (OSEDiff); an explicit ``t`` is an error.
* ``ctsr-flow``: CTSR (arXiv 2503.14272). Phase 1 runs the stage-1 student and gives z0, the
  t = 0 output. Phase 2 turns on the stage-2 "ctrl" LoRA and integrates the velocity field
  eps_ctrl(z, tau(s), c) from s = 0 to s = t with ``steps`` Euler steps. With one step the velocity
  eps_ctrl(z0, tau(0), c) does not depend on t, so a sweep costs one extra UNet call in all.
  ``tau`` maps t to the UNet's integer timestep; the paper leaves it open, so the training recipe
  writes it into the student file: tau(t) = round(tau_start + (tau_end - tau_start) * t).
* ``native``: the network takes t as an input (the embedded ``lite`` student).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast, get_args

from .errors import InvalidInputError, KnobError

__all__ = ["KnobKind", "Knob", "normalize_t"]

KnobKind = Literal["none", "ctsr-flow", "native"]


@dataclass(frozen=True)
class Knob:
    kind: KnobKind = "none"
    """How ``t`` acts on the student."""
    default_t: float | None = None
    """The ``t`` used when the caller gives none (None for kind ``none``)."""
    tau_start: int = 0
    """UNet timestep at t = 0 (ctsr-flow)."""
    tau_end: int = 999
    """UNet timestep at t = 1 (ctsr-flow)."""
    steps: int = 1
    """Default number of Euler steps for ctsr-flow (``knob_steps``)."""

    def __post_init__(self) -> None:
        if self.kind not in get_args(KnobKind):
            raise KnobError(
                f"knob `kind` must be one of {list(get_args(KnobKind))}, got {self.kind!r}."
            )
        if self.kind == "none" and self.default_t is not None:
            raise KnobError("a knob of kind `none` cannot have a `default_t`.")
        if self.kind != "none":
            if self.default_t is None or not 0.0 <= self.default_t <= 1.0:
                raise KnobError(f"knob `default_t` must be in [0, 1], got {self.default_t!r}.")
        if self.steps < 1:
            raise KnobError(f"knob `steps` must be >= 1, got {self.steps}.")
        for name in ("tau_start", "tau_end"):
            value = getattr(self, name)
            if not 0 <= value <= 999:
                raise KnobError(f"knob `{name}` must be an integer timestep in [0, 999], got {value}.")

    def tau(self, t: float) -> int:
        """Map t in [0, 1] to the UNet's integer timestep."""
        return int(round(self.tau_start + (self.tau_end - self.tau_start) * t))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Knob:
        known = {"kind", "default_t", "tau_start", "tau_end", "steps"}
        unknown = set(data) - known
        if unknown:
            raise KnobError(f"knob metadata has unknown fields {sorted(unknown)}; known: {sorted(known)}.")
        try:
            return cls(
                kind=cast(KnobKind, data.get("kind", "none")),
                default_t=None if data.get("default_t") is None else float(data["default_t"]),
                tau_start=int(data.get("tau_start", 0)),
                tau_end=int(data.get("tau_end", 999)),
                steps=int(data.get("steps", 1)),
            )
        except (TypeError, ValueError) as exc:
            raise KnobError(f"knob metadata is malformed: {exc}") from exc


def normalize_t(t: float | Sequence[float] | None, knob: Knob, *, model: str = "this model") -> list[float] | None:
    """Validate ``t`` against ``knob`` and return the list of t values to produce.

    Returns None when the model has no knob and no t was given (a single plain output).

    Raises:
        KnobError: t given to a model whose knob is ``none``.
        InvalidInputError: t not a number in [0, 1], or an empty list.
    """
    if t is None:
        return None if knob.kind == "none" else [cast(float, knob.default_t)]
    if knob.kind == "none":
        raise KnobError(
            f"`t` was given, but {model} has no fidelity/realness knob (knob kind `none`). "
            "Drop `--t`, or pick a model whose knob is not `none` (see `ctsr models list`)."
        )
    values = [t] if isinstance(t, (int, float)) else list(t)
    if not values:
        raise InvalidInputError("`t` is an empty list; give at least one value in [0, 1].")
    out: list[float] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInputError(f"`t` must be a number in [0, 1], got {value!r} ({type(value).__name__}).")
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise InvalidInputError(
                f"`t` must be in [0, 1] (0 = most realistic detail, 1 = most faithful), got {value}."
            )
        out.append(float(value))
    return out
