"""The ``ctsr serve`` page (Gradio): upload, model, t slider, before/after slider, zoom, painted t
map, download. All work is :class:`~ctsr_infer.demo.workbench.Workbench`'s; this module lays it out
and turns library errors into the page's error messages.

Requests are queued one at a time (one queue for every listener, ``concurrency_id``, limit 1): ``Upscaler`` is thread-safe,
but on one model concurrent requests would only take turns for the network while holding memory.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CtsrError, InvalidInputError
from ..image import quantise
from ..progress import ProgressEvent
from .workbench import FORMATS, Workbench, mask_from_layers

if TYPE_CHECKING:
    import gradio as gr

__all__ = ["build_page"]

COMPARE = {"bicubic vs output": "bicubic", "t (other) vs t": "t"}
QUEUE = "ctsr"
"""Every listener's queue: Gradio's concurrency limit applies per queue, so one shared queue with a
limit of 1 runs the page's requests one at a time."""


def _mask(editor: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The painted mask and the background it was painted on (None, None: nothing painted)."""
    if not isinstance(editor, dict):
        return None, None
    background = editor.get("background")
    return mask_from_layers(editor.get("layers")), background if isinstance(background, np.ndarray) else None


class _Shown:
    """The page's images as PNG files written with zlib level 1 (Gradio's own encoding of arrays uses
    Pillow's default, level 6: 4x slower for a 1024² image, a few % smaller), lossless either way.
    The last :attr:`keep` files are kept (Gradio copies what it serves into its cache)."""

    keep = 64

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.written: deque[Path] = deque()
        self.count = 0

    def __call__(self, array: np.ndarray | None) -> str | None:
        if array is None:
            return None
        from PIL import Image

        self.folder.mkdir(parents=True, exist_ok=True)
        self.count += 1
        path = self.folder / f"view-{self.count}.png"
        Image.fromarray(array).save(path, format="PNG", compress_level=1)
        self.written.append(path)
        while len(self.written) > self.keep:
            self.written.popleft().unlink(missing_ok=True)
        return str(path)


def build_page(bench: Workbench) -> gr.Blocks:
    """The page for ``bench`` (not launched; ``.launch()`` it, or mount it in a FastAPI app)."""
    import gradio as gr

    shown = _Shown(bench.outputs / "view")

    first = bench.models[0]
    up = bench.upscaler(first)
    default_t = float(up.knob.default_t) if up.knob.default_t is not None else 0.5

    def progress_hook(progress: gr.Progress):  # noqa: ANN202 - a ProgressCallback
        def on_progress(event: ProgressEvent) -> None:
            progress((event.done, max(event.total, 1)), desc=event.stage)

        return on_progress

    def fail(error: CtsrError) -> gr.Error:
        return gr.Error(str(error), print_exception=False)

    def update(path: str | None, model: str, t: float, compare: str, t_other: float, editor: Any, painted_t: float,
               faces: bool, zoom_x: float, zoom_y: float, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
        if not path:
            return None, None, None, ""
        mask, painted_on = _mask(editor)
        try:
            view = bench.view(path, model, t=t, compare=COMPARE.get(compare, "bicubic"), t_other=t_other,  # type: ignore[arg-type]
                              mask=mask, painted_on=painted_on, painted_t=painted_t, faces=faces,
                              zoom=(zoom_x, zoom_y), on_progress=progress_hook(progress))
        except CtsrError as error:
            raise fail(error) from None
        return (shown(view.before), shown(view.after)), (shown(view.zoom_before), shown(view.zoom_after)), shown(view.t_map), view.timing

    def save(path: str | None, model: str, t: float, editor: Any, painted_t: float, faces: bool, fmt: str) -> str:
        if not path:
            raise fail(InvalidInputError("upload an image first."))
        mask, painted_on = _mask(editor)
        try:
            return str(bench.save(path, model, t=t, mask=mask, painted_on=painted_on, painted_t=painted_t, faces=faces, fmt=fmt))
        except CtsrError as error:
            raise fail(error) from None

    def on_model(model: str) -> tuple[Any, ...]:
        try:
            chosen = bench.upscaler(model)
        except CtsrError as error:
            raise fail(error) from None
        has_knob, takes = chosen.knob.kind != "none", bench.takes_map(model)
        faces_update = gr.update(interactive=True) if takes else gr.update(interactive=False, value=False)
        return (gr.update(interactive=has_knob), faces_update, bench.knob_note(model))

    def to_editor(path: str | None) -> Any:
        if not path:
            return None
        try:
            data = bench.read(path)
        except CtsrError as error:
            raise fail(error) from None
        rgb = quantise(data.pixels, 8)
        return {"background": rgb, "layers": [], "composite": rgb}

    with gr.Blocks(title="ctsr-infer", delete_cache=(600, 3600)) as page:
        gr.Markdown("## ctsr-infer · super-resolution with a fidelity ↔ realness knob\n"
                    "t = 0: most realistic detail · t = 1: most faithful to the input. "
                    "The first run of an image prepares it; moving t afterwards reuses that work.")
        with gr.Row():
            with gr.Column(scale=1):
                source = gr.Image(type="filepath", image_mode=None, sources=["upload"], label="Input", elem_id="inp")
                model = gr.Dropdown(bench.models, value=first, label="Model", elem_id="model")
                knob_note = gr.Markdown(bench.knob_note(first), elem_id="knob_note")
                t = gr.Slider(0.0, 1.0, value=default_t, step=0.01, label="t (0 = realistic, 1 = faithful)", elem_id="t",
                              interactive=up.knob.kind != "none")
                compare = gr.Radio(list(COMPARE), value="bicubic vs output", label="Compare", elem_id="compare")
                t_other = gr.Slider(0.0, 1.0, value=1.0, step=0.01, label="t (other) for the left side", elem_id="t_other")
                faces = gr.Checkbox(False, label="Protect faces (t = 1 on faces found)", elem_id="faces",
                                    interactive=bench.takes_map(first))
                fmt = gr.Dropdown(list(FORMATS), value="png", label="Download format", elem_id="fmt")
                save_button = gr.Button("Save full resolution", elem_id="save")
                download = gr.File(label="Full-resolution result", elem_id="dl", interactive=False)
            with gr.Column(scale=2):
                slider = gr.ImageSlider(label="before | after", format="png", elem_id="cmp", interactive=False)
                timing = gr.Markdown(elem_id="timing")
                with gr.Row():
                    zoom_x = gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="zoom centre x", elem_id="zoom_x")
                    zoom_y = gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="zoom centre y", elem_id="zoom_y")
                zoom = gr.ImageSlider(label="zoom (full-resolution pixels)", format="png", elem_id="zoom", interactive=False)
        with gr.Accordion("Paint a t map", open=True):
            gr.Markdown("Paint regions (faces, text) that get their own t; the rest keeps the slider's t.")
            with gr.Row():
                editor = gr.ImageEditor(type="numpy", image_mode="RGBA", sources=(), transforms=(), layers=False, format="png",
                                        brush=gr.Brush(default_size=16, colors=["#ffffff"], color_mode="fixed"), label="paint here",
                                        elem_id="ed")
                with gr.Column():
                    painted_t = gr.Slider(0.0, 1.0, value=1.0, step=0.01, label="t where painted", elem_id="t_paint")
                    t_map = gr.Image(label="t map used (white = 1)", format="png", elem_id="tmap", interactive=False)

        controls = [source, model, t, compare, t_other, editor, painted_t, faces, zoom_x, zoom_y]
        gr.on([source.change, model.change, t.change, compare.change, t_other.change, editor.change, painted_t.change,
               faces.change, zoom_x.change, zoom_y.change], update, controls, [slider, zoom, t_map, timing],
              show_progress="minimal", concurrency_id=QUEUE)
        source.upload(to_editor, source, editor, show_progress="hidden", concurrency_id=QUEUE)
        model.change(on_model, model, [t, faces, knob_note], show_progress="hidden", concurrency_id=QUEUE)
        save_button.click(save, [source, model, t, editor, painted_t, faces, fmt], download, concurrency_id=QUEUE)
    return page.queue(default_concurrency_limit=1)


def outputs_folder(base: Path | None = None) -> Path:
    """Where downloads are written: ``base`` or a fresh temporary folder (Gradio serves files from
    the temporary directory)."""
    import tempfile

    return base if base is not None else Path(tempfile.mkdtemp(prefix="ctsr-serve-"))
