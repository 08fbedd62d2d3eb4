"""What a family is: the descriptor each family package exports, and what the pipeline needs of a
loaded model.

A family is one folder, ``ctsr_infer/families/<name>/``, whose ``__init__`` exports one
:class:`Family`. The registry (:mod:`ctsr_infer.families`) lists them; the pipeline, the CLI, the hub,
the model registry, device selection and the benchmark look a family up there and never test a
family's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    import torch

    from ..device import Placement
    from ..progress import ProgressCallback
    from ..student_file import StudentFile, StudentMeta
    from ..tmap import TValue
    from .base import RunOptions

__all__ = ["Checkpoint", "CheckpointFormat", "ConvertInputs", "CpuFastPath", "Family", "FamilyModel", "LoadContext", "Prepared", "TilingPolicy"]


class FamilyModel(Protocol):
    """What :class:`ctsr_infer.Upscaler` needs from a loaded model of any family."""

    meta: StudentMeta
    placement: Placement

    def forward(self, lr: torch.Tensor, *, size: tuple[int, int], ts: list[TValue] | None, options: RunOptions,
                on_progress: ProgressCallback | None = None) -> list[torch.Tensor]:
        """(N, 3, h, w) float in [0, 1] -> one (N, 3, *size) float32 CPU tensor in [0, 1] per t (one
        tensor when ``ts`` is None); a t may be a map (:mod:`ctsr_infer.tmap`) where the knob takes one."""
        ...

    def prepare(self, lr: torch.Tensor, *, size: tuple[int, int], options: RunOptions,
                on_progress: ProgressCallback | None = None) -> Prepared:
        """The work every t shares, for one image (N = 1) or a batch: ``forward`` is ``prepare`` and one
        ``render``; ``Upscaler.prepare`` keeps it to render more t values (a slider)."""
        ...

    def in_fp32(self) -> AbstractContextManager[None]:
        """Run in float32 for the duration (the pipeline's NaN retry)."""
        ...


class Prepared(Protocol):
    """An input made ready for any t by :meth:`FamilyModel.prepare`: network outputs that do not
    depend on t are computed at most once, on the first render that needs them, and kept."""

    def render(self, ts: list[TValue] | None, on_progress: ProgressCallback | None = None) -> list[torch.Tensor]:
        """One (N, 3, *size) float32 CPU tensor in [0, 1] per t (one when ``ts`` is None), equal to
        ``forward`` with the same arguments."""
        ...


@dataclass(frozen=True)
class CpuFastPath:
    """``dtype="auto"`` on a CPU with native bf16: the fastest placement measured for the family that
    passed the accuracy guard (README "Speed"; ``tests/test_speed_paths.py``)."""

    network: str
    encoder: str
    decoder: str
    channels_last: bool


@dataclass(frozen=True)
class TilingPolicy:
    """How a family's models are tiled, as the pipeline and the CLI see it."""

    modes: tuple[str, ...] = ("auto", "exact", "fast", "off")
    """Accepted values of the ``tiling`` option."""
    min_tile: int = 1
    """Smallest ``tile`` (in the family's tile unit)."""
    tile_unit: Literal["latent", "input"] = "latent"
    """What ``tile`` counts: latent pixels (diffusion families) or input pixels."""
    batchable: bool = False
    """Whether ``forward`` takes several equal-size images in one network call."""


@dataclass(frozen=True)
class LoadContext:
    """What loading needs besides the student file."""

    name: str
    """The model's name (manifest id or file name), for messages."""
    base_dir: Path | None = None
    """The base model's diffusers folder, resolved by the pipeline for families with ``needs_base``."""


@dataclass
class Checkpoint:
    """A weights file as read once for format detection (and then handed to the converter)."""

    path: Path
    container: Literal["safetensors", "pickle", "ncnn-param", "raw"]
    """How the file is stored: safetensors, a pickle, a format's own container (read by its
    ``CheckpointFormat.reader``), or raw bytes (a companion file such as ncnn weights)."""
    header: Mapping[str, str] = field(default_factory=dict)
    """safetensors header metadata (empty for pickles)."""
    data: Any = None
    """The unpickled object (pickles), or the tensors by name (safetensors)."""

    @property
    def state(self) -> Mapping[str, Any] | None:
        """The state dict the file holds: the top-level mapping, or its ``state_dict``/``params``/``model``
        entry when the top level wraps one; None when the file holds no mapping."""
        data = self.data
        if not isinstance(data, Mapping):
            return None
        for key in ("state_dict", "params_ema", "params", "model"):
            inner = data.get(key)
            if isinstance(inner, Mapping) and inner:
                return inner
        return data


@dataclass(frozen=True)
class ConvertInputs:
    """Everything a converter may use; which of these a format needs, its :class:`CheckpointFormat` says."""

    source: Checkpoint
    base_dir: Path | None = None
    """A local diffusers folder of the base model (formats with ``needs_base``)."""
    base_ref: Mapping[str, str] = field(default_factory=dict)
    """The base-model reference written into the student (``{"repo_id", "revision"}`` or ``{"path"}``)."""
    companion: Checkpoint | None = None
    """The second file a format converts with (``companion``), read and detected."""
    fidelity: Checkpoint | None = None
    """Formats with ``pairs``: the faithful (t = 1) network of a ``blend`` knob; the source is t = 0."""
    prompt: str = ""
    licence: str = "unknown"
    settings: Mapping[str, Any] = field(default_factory=dict)
    """Converter settings (the manifest's ``convert`` entry, or ``--settings`` JSON)."""
    provenance: Mapping[str, Any] = field(default_factory=dict)
    """Merged into the student's provenance (the hub records the source hash and conversion key)."""


@dataclass(frozen=True)
class CheckpointFormat:
    """A public checkpoint layout a family converts from."""

    name: str
    """Manifest ``format`` value, e.g. ``osediff-pkl``."""
    description: str
    """What the file is, for messages (``OSEDiff's osediff.pkl``)."""
    detect: Callable[[Checkpoint], bool]
    """True when a file's contents have this layout (key names, never the file name)."""
    convert: Callable[[ConvertInputs], StudentFile] | None = None
    """None for a file that is only ever a companion of another format (the VQ autoencoder)."""
    needs_base: bool = False
    """The converter needs a local base model (to compute the prompt embedding)."""
    companion: str | None = None
    """Name of the format of a second file the converter needs."""
    companion_option: str = ""
    """The CLI option that names the companion file (``--vq``)."""
    reader: Callable[[Path], Checkpoint | None] | None = None
    """Reads a file of this format that is neither safetensors nor a pickle (None: not one)."""
    generic: bool = False
    """A catch-all layout detector (spandrel's many architectures): a format that also matches the
    file and is not generic wins (a ResShift VQ autoencoder is not a classic network)."""
    pairs: bool = False
    """The converter can pair the file with a faithful network (``ConvertInputs.fidelity``) into a
    ``blend`` knob."""
    raw_companion: bool = False
    """A companion-only format of raw bytes (no structure to detect; its main file names it)."""


@dataclass(frozen=True)
class Family:
    """One family of students: everything the rest of the library asks about it."""

    name: str
    description: str
    build: Callable[[StudentFile, Placement, LoadContext], FamilyModel]
    """A runnable model from a validated student file."""
    random_model: Callable[[Placement, bool], FamilyModel]
    """A full-size model with random weights (``small``: toy widths) for ``ctsr bench`` and device checks."""
    options: tuple[str, ...] = ()
    """The family-specific options of :class:`ctsr_infer.pipeline.UpscaleOptions` it reads."""
    tiling: TilingPolicy = field(default_factory=TilingPolicy)
    cpu_fast_path: CpuFastPath | None = None
    formats: tuple[CheckpointFormat, ...] = ()
    check_config: Callable[[Mapping[str, Any]], None] = lambda config: None
    """Bounds of the student metadata's ``config`` (raises ``IncompatibleWeightsError`` naming the field)."""
    needs_base: bool = False
    """Models run on a separately downloaded base model (the student's ``base`` reference)."""
    knob_kinds: tuple[str, ...] = ("none",)
    """The knob kinds its students may declare."""
