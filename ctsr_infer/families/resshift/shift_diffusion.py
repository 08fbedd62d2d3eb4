"""The residual-shifting diffusion of ResShift (Yue et al., NeurIPS 2023) and its samplers.

Notation of TAD-SR Sec. III (arXiv 2408.07476) and ResShift's ``GaussianDiffusion``: indices
t = 0 .. T-1 (0-based; index T-1 is the start of sampling), ``eta`` increasing to eta_{T-1} ~ 1,
z_y the latent of the bicubic-upsampled low-resolution image.

* forward:    z_t = z0 + eta_t (z_y - z0) + kappa sqrt(eta_t) eps
* posterior:  q(z_{t-1} | z_t, z0) = N(eta_{t-1}/eta_t z_t + alpha_t/eta_t z0, kappa^2 eta_{t-1}/eta_t alpha_t),
              alpha_t = eta_t - eta_{t-1}, eta_{-1} = 0
* SinSR's deterministic sampler (TAD-SR Eq. 3): z_{t-1} = k_t z0_hat + m_t z_t + j_t z_y with
              m_t = sqrt(eta_{t-1}/eta_t), j_t = eta_{t-1} - sqrt(eta_{t-1} eta_t), k_t = 1 - j_t - m_t
* the network sees z_t / sqrt(kappa^2 eta_t + 1) and predicts z0 ("xstart").

Constants are kept in float64 (as ResShift does) and cast at use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from ...errors import IncompatibleWeightsError

__all__ = ["ShiftSchedule", "Predictor", "Sampler"]

Predictor = Callable[[torch.Tensor, int], torch.Tensor]
"""(network input z_t / sqrt(kappa^2 eta_t + 1), 0-based index t) -> predicted z0."""
Sampler = Literal["onestep", "posterior", "ddim"]


@dataclass(frozen=True)
class ShiftSchedule:
    """ResShift's "exponential" eta schedule and everything derived from it.

    Defaults are ``resshift_realsrx4_s15_v1`` (and SinSR): 15 steps, kappa 2, sqrt(eta) from
    0.02 to 0.99 with power 0.3. ResShift v3 (the journal model) uses 4 steps and
    ``min_noise_level`` 0.2.
    """

    steps: int = 15
    kappa: float = 2.0
    etas_end: float = 0.99
    """sqrt(eta) at the last index."""
    min_noise_level: float = 0.04
    power: float = 0.3
    normalize_input: bool = True
    scale_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.kappa <= 0 or not 0 < self.etas_end <= 1 or self.min_noise_level <= 0 or self.power <= 0:
            raise IncompatibleWeightsError(f"invalid ResShift schedule {asdict(self)}.")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ShiftSchedule:
        known = set(cls.__dataclass_fields__)
        unknown = set(config) - known
        if unknown:
            raise IncompatibleWeightsError(f"unknown ResShift schedule setting(s) {sorted(unknown)}; known: {sorted(known)}.")
        return cls(**dict(config))

    def to_config(self) -> dict[str, Any]:
        return asdict(self)

    # -- the constants ------------------------------------------------------------------------

    @property
    def sqrt_etas(self) -> torch.Tensor:
        """float64, index 0 .. steps-1."""
        start = min(self.min_noise_level / self.kappa, self.min_noise_level)
        if self.steps == 1:
            return torch.tensor([self.etas_end], dtype=torch.float64)
        growth = math.exp(math.log(self.etas_end / start) / (self.steps - 1))
        exponent = torch.linspace(0, 1, self.steps, dtype=torch.float64) ** self.power * (self.steps - 1)
        return growth**exponent * start

    @property
    def etas(self) -> torch.Tensor:
        return self.sqrt_etas**2

    @property
    def etas_prev(self) -> torch.Tensor:
        etas = self.etas
        return torch.cat([etas.new_zeros(1), etas[:-1]])

    def _at(self, values: torch.Tensor, t: int, like: torch.Tensor) -> torch.Tensor:
        if not 0 <= t < self.steps:
            raise ValueError(f"timestep index {t} is outside 0..{self.steps - 1}")
        return values[t].to(device=like.device, dtype=like.dtype if like.is_floating_point() else torch.float32)

    # -- forward process, posterior, conversions ----------------------------------------------

    def q_sample(self, z0: torch.Tensor, z_y: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        """z_t = z0 + eta_t (z_y - z0) + kappa sqrt(eta_t) eps."""
        return z0 + self._at(self.etas, t, z0) * (z_y - z0) + self.kappa * self._at(self.sqrt_etas, t, z0) * noise

    def prior_sample(self, z_y: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """z_{T-1} = z_y + kappa sqrt(eta_{T-1}) eps (the start of sampling)."""
        return z_y + self.kappa * self._at(self.sqrt_etas, self.steps - 1, z_y) * noise

    def posterior(self, z0: torch.Tensor, z_t: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(z_{t-1} | z_t, z0); the variance is 0 at t = 0."""
        if not 0 <= t < self.steps:
            raise ValueError(f"timestep index {t} is outside 0..{self.steps - 1}")
        eta, prev = float(self.etas[t]), float(self.etas_prev[t])
        mean = (prev / eta) * z_t + ((eta - prev) / eta) * z0
        variance = torch.tensor(self.kappa**2 * prev / eta * (eta - prev), device=z_t.device, dtype=z_t.dtype)
        return mean, variance

    def ddim_coefficients(self, t: int) -> tuple[float, float, float]:
        """(k_t, m_t, j_t) of the deterministic sampler: z_{t-1} = k z0 + m z_t + j z_y."""
        eta, prev = float(self.etas[t]), float(self.etas_prev[t])
        m = math.sqrt(prev / eta)
        j = prev - math.sqrt(prev * eta)
        return 1.0 - j - m, m, j

    def eps_from_x0(self, z_t: torch.Tensor, z_y: torch.Tensor, z0: torch.Tensor, t: int) -> torch.Tensor:
        """eps = (z_t - z0 - eta_t (z_y - z0)) / (kappa sqrt(eta_t))."""
        return (z_t - z0 - self._at(self.etas, t, z_t) * (z_y - z0)) / (self.kappa * self._at(self.sqrt_etas, t, z_t))

    def x0_from_eps(self, z_t: torch.Tensor, z_y: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
        """The inverse of :meth:`eps_from_x0`: z0 = (z_t - kappa sqrt(eta_t) eps - eta_t z_y) / (1 - eta_t)."""
        eta = self._at(self.etas, t, z_t)
        return (z_t - self.kappa * self._at(self.sqrt_etas, t, z_t) * eps - eta * z_y) / (1 - eta)

    def scale_input(self, z_t: torch.Tensor, t: int) -> torch.Tensor:
        """What the network sees: z_t / sqrt(kappa^2 eta_t + 1) (``normalize_input``)."""
        if not self.normalize_input:
            return z_t
        return z_t / torch.sqrt(self._at(self.etas, t, z_t) * self.kappa**2 + 1)

    # -- samplers --------------------------------------------------------------------------------

    def sample(self, predict: Predictor, z_y: torch.Tensor, *, sampler: Sampler, noise: torch.Tensor,
               generator: torch.Generator | None = None, steps: int | None = None,
               on_step: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Run a sampler from z_{T-1} = z_y + kappa sqrt(eta_{T-1}) ``noise`` and return z0.

        ``onestep``: one network call at T-1, its z0 (SinSR, TAD-SR, co-learning students).
        ``posterior``: ResShift's ancestral sampler over all ``steps`` indices (fresh noise from
        ``generator`` at each step but the last). ``ddim``: the deterministic sampler of Eq. 3.
        ``steps`` (default: all) stops a multi-step sampler early after that many network calls and
        returns its last z0 prediction.
        """
        z = self.prior_sample(z_y, noise)
        if sampler == "onestep":
            out = predict(self.scale_input(z, self.steps - 1), self.steps - 1)
            if on_step is not None:
                on_step(1, 1)
            return out
        if sampler not in ("posterior", "ddim"):
            raise ValueError(f"unknown sampler {sampler!r}; expected 'onestep', 'posterior' or 'ddim'")
        total = self.steps if steps is None else max(1, min(steps, self.steps))
        z0 = z
        for done, t in enumerate(range(self.steps - 1, -1, -1), start=1):
            z0 = predict(self.scale_input(z, t), t)
            if on_step is not None:
                on_step(done, total)
            if done == total or t == 0:
                break
            if sampler == "ddim":
                k, m, j = self.ddim_coefficients(t)
                z = k * z0 + m * z + j * z_y
            else:
                mean, variance = self.posterior(z0, z, t)
                fresh = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
                z = mean + variance.sqrt() * fresh
        return z0
