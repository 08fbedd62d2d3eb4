"""``ctsr serve``: the web page (:mod:`ctsr_infer.demo`) on localhost."""

from typing import Annotated

import typer

from .app import app, err, out
from .options import DeviceOption, DtypeOption, ModelOption

__all__ = ["serve"]


@app.command("serve")
def serve(
    model: ModelOption = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind; anything but loopback exposes the page to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 7860,
    share: Annotated[str, typer.Option("--share", help="on: also a public gradio.live link (needs internet); off by default.")] = "off",
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", help="Largest uploaded file.")] = 25.0,
    max_input_mp: Annotated[float, typer.Option("--max-input-mp", help="Largest input image, in megapixels (x4: 16 MP out).")] = 1.0,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    """A web page with a t slider, a before/after slider, a zoom and a paintable t map (extra `demo`)."""
    from .. import load
    from ..demo import LOOPBACK, Limits
    from ..demo import serve as run
    from ..errors import InvalidInputError, require

    if share not in ("on", "off"):
        raise InvalidInputError(f"`--share` must be on or off, got {share!r}.")
    if max_upload_mb <= 0 or max_input_mp <= 0:
        raise InvalidInputError("`--max-upload-mb` and `--max-input-mp` must be positive.")
    require("gradio", extra="demo", purpose="`ctsr serve`")
    _check_port(host, port)  # before the model loads
    if host not in LOOPBACK:
        err.print(f"warning: binding to {host}: anyone who can reach this machine can use the page.")
    upscaler = load(model, device=device, dtype=dtype)
    limits = Limits(max_upload_bytes=int(max_upload_mb * 2**20), max_input_pixels=int(max_input_mp * 1e6))
    out.print(f"serving {upscaler.name} on http://{host}:{port} (Ctrl-C stops)")
    run(upscaler, host=host, port=port, share=share == "on", limits=limits, device=device, dtype=dtype)


def _check_port(host: str, port: int) -> None:
    import socket

    from ..errors import InvalidInputError

    if not 0 < port < 65536:
        raise InvalidInputError(f"`--port` must be in 1..65535, got {port}.")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise InvalidInputError(f"cannot listen on {host}:{port} ({error.strerror}); pick another `--port`.") from None
