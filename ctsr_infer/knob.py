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
* ``dual-lora``: PiSA-SR (arXiv 2412.03017). Two LoRA branches on one base: the pixel branch
  (fused at load) gives eps_pix, pixel + semantic gives eps_sem; the estimate is
  eps = lambda_pix * eps_pix + lambda_sem * (eps_sem - eps_pix) and x0 = z - eps. t maps linearly
  to (lambda_pix, lambda_sem) between the values stored for t = 0 and t = 1 (default: (1, 1) at
  t = 0, PiSA-SR's default output; (1, 0) at t = 1, the pixel branch alone). The mix is linear, so a
  sweep costs two UNet calls in all and every t -- every pixel's own t -- only a combination and a
  decode.
* ``blend``: two networks, a realistic one (t = 0) and a faithful one (t = 1): the ``classic`` family.
  Of one architecture, their weights are interpolated (one forward per t, as Real-ESRGAN's ``-dn``);
  otherwise their outputs are (two forwards, every t free after that).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast, get_args

from .errors import InvalidInputError, KnobError

__all__ = ["KnobKind", "Knob", "normalize_t"]

KnobKind = Literal["none", "ctsr-flow", "native", "dual-lora", "blend"]


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
    lambda_pix: tuple[float, float] = (1.0, 1.0)
    """dual-lora: lambda_pix at t = 0 and at t = 1 (linear between)."""
    lambda_sem: tuple[float, float] = (1.0, 0.0)
    """dual-lora: lambda_sem at t = 0 and at t = 1 (linear between)."""

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
        if not 1 <= self.steps <= 1000:
            raise KnobError(f"knob `steps` must be in [1, 1000], got {self.steps}.")
        for name in ("lambda_pix", "lambda_sem"):
            pair = getattr(self, name)
            if len(pair) != 2 or not all(isinstance(v, float) and math.isfinite(v) and -4.0 <= v <= 4.0 for v in pair):
                raise KnobError(f"knob `{name}` must be two numbers in [-4, 4] (the values at t = 0 and t = 1), got {pair!r}.")
        for name in ("tau_start", "tau_end"):
            value = getattr(self, name)
            if not 0 <= value <= 999:
                raise KnobError(f"knob `{name}` must be an integer timestep in [0, 999], got {value}.")

    def tau(self, t: float) -> int:
        """Map t in [0, 1] to the UNet's integer timestep."""
        return int(round(self.tau_start + (self.tau_end - self.tau_start) * t))

    def lambdas(self, t: float) -> tuple[float, float]:
        """dual-lora: (lambda_pix, lambda_sem) at t, linear between the stored ends."""
        return (self.lambda_pix[0] + (self.lambda_pix[1] - self.lambda_pix[0]) * t,
                self.lambda_sem[0] + (self.lambda_sem[1] - self.lambda_sem[0]) * t)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.kind != "dual-lora":  # the lambdas mean nothing to other kinds; files stay as they were
            data.pop("lambda_pix")
            data.pop("lambda_sem")
        else:
            data["lambda_pix"], data["lambda_sem"] = list(self.lambda_pix), list(self.lambda_sem)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Knob:
        known = {"kind", "default_t", "tau_start", "tau_end", "steps", "lambda_pix", "lambda_sem"}
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
                lambda_pix=_pair(data.get("lambda_pix", (1.0, 1.0)), "lambda_pix"),
                lambda_sem=_pair(data.get("lambda_sem", (1.0, 0.0)), "lambda_sem"),
            )
        except (TypeError, ValueError, OverflowError) as exc:
            raise KnobError(f"knob metadata is malformed: {exc}") from exc


def _pair(value: Any, name: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2 or any(isinstance(v, bool) for v in value):
        raise KnobError(f"knob `{name}` must be a list of two numbers (t = 0, t = 1), got {value!r}.")
    return float(value[0]), float(value[1])


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
