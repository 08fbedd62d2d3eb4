"""LoRA fusion math: W' = W + (alpha / r) * B @ A for linear layers and k x k convolutions.

Shapes follow peft: a linear LoRA has ``A`` of shape (r, in) and ``B`` of shape (out, r); a conv
LoRA has ``A`` of shape (r, in, kh, kw) (a k x k conv into r channels) and ``B`` of shape
(out, r, 1, 1) (a 1 x 1 conv), so that delta[o, i, :, :] = sum_r B[o, r] * A[r, i, :, :].
"""

from __future__ import annotations

import torch

from .errors import IncompatibleWeightsError

__all__ = ["lora_delta", "fuse"]


def lora_delta(a: torch.Tensor, b: torch.Tensor, *, scale: float, key: str = "") -> torch.Tensor:
    """Return ``scale * B @ A`` reshaped like the base weight, computed in float32.

    Args:
        a: the down projection, (r, in) or (r, in, kh, kw).
        b: the up projection, (out, r) or (out, r, 1, 1).
        scale: alpha / r.
        key: the module name, used in error messages.

    Returns:
        A float32 tensor of shape (out, in) or (out, in, kh, kw).
    """
    rank = a.shape[0]
    if a.dim() not in (2, 4) or b.dim() != a.dim() or b.shape[1] != rank:
        raise IncompatibleWeightsError(
            f"LoRA `{key}`: A has shape {tuple(a.shape)} and B has shape {tuple(b.shape)}; expected "
            "A (r, in) with B (out, r), or A (r, in, kh, kw) with B (out, r, 1, 1)."
        )
    if a.dim() == 4 and tuple(b.shape[2:]) != (1, 1):
        raise IncompatibleWeightsError(
            f"LoRA `{key}`: B of a conv LoRA must be 1x1, got shape {tuple(b.shape)}."
        )
    a32 = a.to(torch.float32).reshape(rank, -1)
    b32 = b.to(torch.float32).reshape(b.shape[0], rank)
    delta = (b32 @ a32) * scale
    return delta.reshape((b.shape[0],) + tuple(a.shape[1:]))


def fuse(weight: torch.Tensor, delta: torch.Tensor, *, key: str = "") -> torch.Tensor:
    """Return ``weight + delta`` in the weight's dtype (the sum is formed in float32)."""
    if tuple(weight.shape) != tuple(delta.shape):
        raise IncompatibleWeightsError(
            f"LoRA `{key}` does not fit its base layer: the LoRA gives a weight of shape "
            f"{tuple(delta.shape)}, the base layer has {tuple(weight.shape)}."
        )
    return (weight.to(torch.float32) + delta.to(weight.device)).to(weight.dtype)
