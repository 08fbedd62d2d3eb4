"""``ctsr serve``: a web page to choose t by looking (extra ``demo``: Gradio).

    >>> from ctsr_infer.demo import build_app                 # doctest: +SKIP
    >>> build_app(ctsr_infer.load("ctsr-lite")).launch()      # doctest: +SKIP

The page's logic is :class:`~ctsr_infer.demo.workbench.Workbench` (no Gradio); the layout is
:mod:`ctsr_infer.demo.page`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError, require
from ..pipeline import Upscaler
from .workbench import Limits, Workbench

if TYPE_CHECKING:
    import gradio as gr

__all__ = ["Limits", "Workbench", "build_app", "serve"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_app(upscaler: Upscaler | None = None, *, models: Sequence[str] | None = None, limits: Limits = Limits(),
              outputs: Path | None = None, device: str = "auto", dtype: str = "auto") -> gr.Blocks:
    """The page as a Gradio ``Blocks`` (queued one request at a time), for ``.launch()`` or embedding.

    Args:
        upscaler: the model shown first (default: the first of ``models``).
        models: model ids offered in the page (default: every model on this machine).
        limits: upload limits (file bytes, input pixels).
        outputs: folder for full-resolution downloads (default: a new temporary folder).
        device, dtype: for the models the page loads itself.
    """
    require("gradio", extra="demo", purpose="`ctsr serve`")
    from .page import build_page, outputs_folder

    bench = Workbench(upscaler, models=models, limits=limits, device=device, dtype=dtype, outputs=outputs_folder(outputs))
    return build_page(bench)


def serve(upscaler: Upscaler | None = None, *, models: Sequence[str] | None = None, host: str = "127.0.0.1", port: int = 7860,
          share: bool = False, limits: Limits = Limits(), outputs: Path | None = None, device: str = "auto", dtype: str = "auto",
          block: bool = True) -> Any:
    """Build the page and serve it on ``host:port`` (localhost by default). Returns the running app
    when ``block`` is False (close it with ``.close()``)."""
    if not 0 < port < 65536:
        raise InvalidInputError(f"`port` (--port) must be in 1..65535, got {port}.")
    app = build_app(upscaler, models=models, limits=limits, outputs=outputs, device=device, dtype=dtype)
    try:
        app.launch(server_name=host, server_port=port, share=share, max_file_size=limits.max_upload_bytes,
                   prevent_thread_lock=not block, quiet=not block, show_error=True)
    except OSError as error:  # Gradio's message names its environment variable, not our flag
        raise InvalidInputError(f"cannot listen on {host}:{port} ({error.strerror or 'in use'}); pick another `--port`.") from None
    return app
