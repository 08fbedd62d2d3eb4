"""The ``ctsr`` command: typer + rich, the only part of ctsr-infer that draws.

One module per command group: :mod:`.app` (the root app, the exit codes and the one error mapping),
:mod:`.upscale` (``upscale``, ``sweep``), :mod:`.system` (``doctor``, ``bench``), :mod:`.evaluate` (``eval``), :mod:`.serve` (``serve``), :mod:`.models`
(``models ...``), :mod:`.train` (``train ...``, a thin layer over :mod:`ctsr_infer.train.recipe`);
:mod:`.options` holds the options several commands share and :mod:`.output` the run summary and
stdin/stdout. Importing this package never imports :mod:`ctsr_infer.train`.
"""

from . import upscale  # noqa: F401, I001 - registers `upscale` and `sweep`; `ctsr --help` lists commands in this order
from . import system  # noqa: F401 - registers `doctor` and `bench`
from . import evaluate  # noqa: F401 - registers `eval`
from . import serve  # noqa: F401 - registers `serve`
from .app import EXIT_ENV, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, app, main
from .models import models_app
from .train import train_app

__all__ = ["EXIT_ENV", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "app", "main"]

app.add_typer(models_app, name="models")
app.add_typer(train_app, name="train")
