"""Paths of the tiled VAE that tests/test_sd_tiling.py does not run: ``fast`` mode with the mid-block
attention shared across tiles, and a tile that fails inside the lockstep."""

from __future__ import annotations

import threading
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctsr_infer.metrics import psnr
from ctsr_infer.tiling import Tile, plan_tiles, record_group_norm, shared_group_norm, tiled_vae
from ctsr_infer.tiling.lockstep import _spread
from tiny import tiny_vae


def _smooth(height: int, width: int) -> torch.Tensor:
    """A smooth (1, 3, height, width) image in [-1, 1]."""
    yy, xx = np.mgrid[0:height, 0:width] / 23.0
    image = np.stack([np.sin(xx) * np.cos(yy / 2), np.cos(xx / 3 + yy), np.sin((xx + yy) / 5)], axis=0) * 0.45 + 0.5
    return torch.from_numpy(image).float()[None] * 2 - 1


def _as_image(t: torch.Tensor) -> np.ndarray:
    return ((t.clamp(-1, 1) + 1) / 2)[0].permute(1, 2, 0).numpy()


class _PointwiseAttention(nn.Module):
    """Pixel-wise layers around one VAE mid-block attention (diffusers' ``Attention`` as
    ``AutoencoderKL`` builds it, with its own GroupNorm). Every layer but the attention sees one
    pixel, so an output pixel depends only on its input pixel, the GroupNorm statistics and the set
    of keys and values its query attends to: which is what fast mode decides."""

    def __init__(self, channels: int = 8, groups: int = 4) -> None:
        from diffusers.models.attention_processor import Attention

        super().__init__()
        torch.manual_seed(5)
        self.conv_in = nn.Conv2d(3, channels, 1)
        self.norm_in = nn.GroupNorm(groups, channels)
        self.attention = Attention(query_dim=channels, heads=2, dim_head=channels // 2, norm_num_groups=groups, eps=1e-6,
                                   residual_connection=True, bias=True, upcast_softmax=True, _from_deprecated_attn_block=True)
        self.norm_out = nn.GroupNorm(groups, channels)
        self.conv_out = nn.Conv2d(channels, 3, 1)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.attention(F.silu(self.norm_in(self.conv_in(x))))
        return self.conv_out(F.silu(self.norm_out(hidden)))


@pytest.mark.parametrize("sample_tiles", [4, 11])
def test_fast_mode_tiles_attend_to_the_sampled_tiles_and_their_own(sample_tiles: int) -> None:
    net = _PointwiseAttention()
    processors = [m.processor for m in net.modules() if hasattr(m, "processor")]
    image = _smooth(48, 64)
    # no overlap and no context: 12 tiles of 16 px that partition the image, each pixel from one tile
    tiles = plan_tiles(48, 64, tile=16, overlap=0)
    sampled = [tiles[i] for i in _spread(tiles, sample_tiles)]
    fast = tiled_vae(net, net, image, scale=Fraction(1), tile=16, overlap=0, context=0, mode="fast", align=1,
                     sample_tiles=sample_tiles)

    # What fast mode promises, computed without tiling: lay the pixels of a set of tiles side by side
    # in one row (the net is pixel-wise but for the attention, which ignores where a key sits). The
    # sampled tiles normalise with their own statistics and attend to each other; every other tile
    # uses those statistics and attends to the sampled tiles plus itself.
    def row(chosen: list[Tile]) -> torch.Tensor:
        return torch.cat([image[..., t.top : t.bottom, t.left : t.right].reshape(1, 3, 1, -1) for t in chosen], dim=-1)

    def place(out: torch.Tensor, chosen: list[Tile], only: Tile | None = None) -> None:
        start = 0
        for t in chosen:
            size = (t.bottom - t.top) * (t.right - t.left)
            if only in (None, t):
                expected[..., t.top : t.bottom, t.left : t.right] = out[..., 0, start : start + size].reshape(1, 3, t.bottom - t.top, -1)
            start += size

    expected = torch.full_like(fast, float("nan"))
    stats: list[tuple[torch.Tensor, torch.Tensor]] = []
    with torch.inference_mode():
        with record_group_norm(net, stats):
            place(net(row(sampled)), sampled)
        with shared_group_norm(net, stats) as restart:
            for t in tiles:
                if t not in sampled:
                    restart()
                    place(net(row([*sampled, t])), [*sampled, t], only=t)
        untiled = net(image)
    assert len(stats) == 3 and not expected.isnan().any()  # GroupNorms: norm_in, the attention's, norm_out
    assert (fast - expected).abs().max() <= 1e-5  # measured 0 (4 tiles) and 2.4e-7 (11)
    # not the untiled output: the test would not see a tile that attends to the whole image instead
    assert (fast - untiled).abs().max() > 0.03  # measured 0.23 (4 tiles) and 0.053 (11)
    assert [m.processor for m in net.modules() if hasattr(m, "processor")] == processors


def test_fast_mode_with_mid_block_attention_stays_near_untiled() -> None:
    vae = tiny_vae(attention=True)
    processors = [m.processor for m in vae.modules() if hasattr(m, "processor")]
    image = _smooth(128, 192)
    with torch.inference_mode():
        latent = vae.quant_conv(vae.encoder(image))[:, :4]
        decoded = vae.decoder(latent)
    quality = []
    for count in (4, 8):  # of 12 tiles; the others run alone with the mid-block attention shared
        fast = tiled_vae(vae.decoder, vae.decoder, latent, scale=Fraction(8), tile=8, overlap=2, context=16, mode="fast", align=1,
                         sample_tiles=count)
        quality.append(psnr(_as_image(fast), _as_image(decoded)))
    # a random-weight VAE is far more sensitive to the statistics than a trained one (measured 20.7
    # and 30.5 dB); the bound is loose, but more sampled tiles must do better
    assert quality[0] > 15 and quality[1] > quality[0] + 5
    assert [m.processor for m in vae.modules() if hasattr(m, "processor")] == processors


def _failing_at(call: int, decoder: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[], None]]:
    """The decoder as a tile function whose ``call``-th call raises inside the mid-block attention,
    after the tile has passed two GroupNorms (so the other lockstep tiles wait at a barrier)."""
    lock, calls, state = threading.Lock(), [0], threading.local()

    def fn(x: torch.Tensor) -> torch.Tensor:
        with lock:
            calls[0] += 1
            state.failing = calls[0] == call
        return decoder(x)

    def fail(module: nn.Module, args: object) -> None:
        if getattr(state, "failing", False):
            raise RuntimeError("tile failed on purpose")

    handle = decoder.mid_block.attentions[0].register_forward_pre_hook(fail)
    return fn, handle.remove


@pytest.mark.parametrize("mode,call", [("exact", 2), ("fast", 2), ("fast", 6)], ids=["exact", "fast-lockstep", "fast-alone"])
def test_a_failing_tile_propagates_and_leaves_the_vae_as_it_was(mode: str, call: int) -> None:
    # fast with 4 sampled tiles: calls 1-4 run in lockstep, 5-12 alone after them
    vae = tiny_vae(attention=True)
    image = _smooth(128, 192)
    with torch.inference_mode():
        latent = vae.quant_conv(vae.encoder(image))[:, :4]
        before = vae.decoder(latent)
    options = {"scale": Fraction(8), "tile": 8, "overlap": 2, "context": 16, "mode": mode, "align": 1, "sample_tiles": 4}
    tiled_before = tiled_vae(vae.decoder, vae.decoder, latent, **options)
    processors = {name: m.processor for name, m in vae.named_modules() if hasattr(m, "processor")}
    threads = threading.active_count()

    fn, remove_hook = _failing_at(call, vae.decoder)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            tiled_vae(fn, vae.decoder, latent, **options)
        except BaseException as exc:  # noqa: BLE001 - inspected below
            raised.append(exc)

    # in a thread of its own so that a lockstep left waiting fails the test instead of hanging it
    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    runner.join(timeout=120)
    remove_hook()
    assert not runner.is_alive(), "the other tiles were left waiting at a barrier"
    assert len(raised) == 1 and type(raised[0]) is RuntimeError and str(raised[0]) == "tile failed on purpose"
    assert threading.active_count() == threads  # every tile's thread ended

    # every GroupNorm and attention processor is the model's own again
    norms = [m for m in vae.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(getattr(m.forward, "__func__", None) is nn.GroupNorm.forward for m in norms)
    assert {name: m.processor for name, m in vae.named_modules() if hasattr(m, "processor")} == processors
    # and the VAE gives what it gave before, untiled exactly and tiled as before
    with torch.inference_mode():
        assert torch.equal(vae.decoder(latent), before)
    assert (tiled_vae(vae.decoder, vae.decoder, latent, **options) - tiled_before).abs().max() <= 1e-5
