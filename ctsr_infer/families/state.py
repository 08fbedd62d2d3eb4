"""One strict way to put a state dict into a network: check first on the meta device, then allocate.

Every family loads its networks through :func:`fit_state`: the network is built on PyTorch's
``meta`` device (shapes, no memory), the file's tensors are checked against it by name and shape,
and only then is the real network allocated and loaded. A 500-byte file whose metadata claims a
30,000-channel network fails here with an ``IncompatibleWeightsError`` naming the tensor, before
any memory is spent on that network.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

import torch
from torch import nn

from ..errors import IncompatibleWeightsError

__all__ = ["fit_state", "check_state"]

M = TypeVar("M", bound=nn.Module)


def _listing(names: list[str], limit: int = 6) -> str:
    return f"{names[:limit]}{' ...' if len(names) > limit else ''}"


def check_state(expected: Mapping[str, torch.Tensor], state: Mapping[str, Any], *, source: str, what: str,
                ignore: Collection[str] = (), name: Callable[[str], str] = str) -> None:
    """Raise ``IncompatibleWeightsError`` unless ``state`` has exactly the tensors of ``expected``
    (names; keys in ``ignore`` may be extra) with the same shapes. ``name`` maps a key to the name the
    message shows (e.g. the public layout's)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - set(ignore))
    if missing or unexpected:
        raise IncompatibleWeightsError(
            f"{source} does not fit {what}: missing {_listing([name(k) for k in missing])}, "
            f"unexpected {_listing([name(k) for k in unexpected])}."
        )
    for key, tensor in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor):
            raise IncompatibleWeightsError(f"{source}: `{name(key)}` is a {type(value).__name__}, expected a tensor.")
        if value.shape != tensor.shape:
            raise IncompatibleWeightsError(
                f"{source}: `{name(key)}` has shape {tuple(value.shape)}, {what} expects {tuple(tensor.shape)}."
            )
        if not value.is_floating_point() and tensor.is_floating_point():
            raise IncompatibleWeightsError(f"{source}: `{name(key)}` has dtype {value.dtype}, expected floating point.")


def fit_state(build: Callable[[], M], state: Mapping[str, Any], *, source: str, what: str,
              ignore: Collection[str] = (), name: Callable[[str], str] = str) -> M:
    """Build the network with ``build()`` on the meta device, :func:`check_state`, then build it on
    the CPU and load ``state`` strictly (floats as float32)."""
    with torch.device("meta"):
        shapes = build().state_dict()
    check_state(shapes, state, source=source, what=what, ignore=ignore, name=name)
    network = build()
    own = network.state_dict()
    network.load_state_dict({k: state[k].to(own[k].dtype) for k in own}, strict=True)
    return network
