"""The Ray Data actor of a distributed run: the model loaded once per actor, then the folder runner's
per-file steps (:func:`~ctsr_infer.batch.run_steps`) on every batch it is given."""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..batch import BatchItem, FileSteps, Job, read_input, run_steps
from ..errors import CtsrError
from ..tmap import TMap

TEST_EXIT_FILE = "CTSR_TEST_RAY_EXIT_FILE"
"""Test-only: an environment variable naming a file. While that file exists, the first actor to
finish a file deletes it and exits at once (``os._exit``), as a worker that crashes mid-batch; the
test then checks that Ray's restart and retry finish the run without duplicate or partial outputs."""

_FORWARDED = ("CTSR_CPU_FAST", "CTSR_OFFLINE", "HF_HUB_OFFLINE", "CTSR_VERBOSITY", TEST_EXIT_FILE)
"""Environment variables that change what an actor does, passed on from the driver (paths such as
``CTSR_HOME`` are not: they belong to each node)."""


@dataclass(frozen=True)
class _RunConfig:
    """What every actor needs to load the model and run the steps (pickled to each actor)."""

    model: str | None
    base: str | None
    device: str
    dtype: str
    compile: bool
    threads: int | None
    ts: list[float | TMap] | None
    overwrite: bool
    quality: int | None
    png_level: int | None
    keep_metadata: bool
    batch_size: int
    options: dict[str, Any] = field(default_factory=dict)
    filesystem: Any = None
    """A pyarrow FileSystem the sources are read from (None: local paths, read as the folder runner does)."""
    environment: dict[str, str] = field(default_factory=dict)
    """The driver's values of :data:`_FORWARDED`, set in each actor."""

    def load(self) -> Any:
        from ..pipeline import load

        os.environ.update(self.environment)
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)
        return load(self.model, base=self.base, device=self.device, dtype=self.dtype, compile=self.compile)

    def steps(self, upscaler: Any, read: Callable[[Job], Any] | None = None) -> FileSteps:
        return FileSteps(upscaler, ts=self.ts, overwrite=self.overwrite, quality=self.quality, png_level=self.png_level,
                         keep_metadata=self.keep_metadata, read=read, **self.options)


def _decode_bytes(payload: bytes, source: Path) -> Any:
    """Decode an encoded file the folder runner's way: through a private temporary file of the same
    name (16-bit PNG and TIFF readers and the animation reader take files). Errors name ``source``."""
    with tempfile.TemporaryDirectory(prefix="ctsr-ray-") as folder:
        path = Path(folder) / (source.name or "input")
        path.write_bytes(payload)
        try:
            return read_input(path)
        except CtsrError as exc:
            raise type(exc)(str(exc).replace(str(path), str(source))) from None


class _UpscaleActor:
    """One Ray Data actor: the model loaded once, then :func:`run_steps` on every batch it is given.

    A batch is a pyarrow table of rows ``index``, ``source``, ``outputs`` (and ``bytes`` for a Dataset
    source); the result has one report row per input row.
    """

    def __init__(self, config: _RunConfig, plan: Any = None) -> None:
        import ray

        self.config = config
        self.plan: dict[str, tuple[int, list[str]]] | None = ray.get(plan) if isinstance(plan, ray.ObjectRef) else plan
        self.payloads: dict[Job, bytes] = {}
        self.refused: bytes | None = None
        """The pickled error when the model or the options are refused: returned with every row, and
        raised by the driver as it is (a usage or environment error, not a failure per file)."""
        try:
            self.upscaler = config.load()
            self.steps = config.steps(self.upscaler, read=self._read)
        except CtsrError as exc:
            self.refused = pickle.dumps(exc)

    def _read(self, job: Job) -> Any:
        payload = self.payloads.pop(job, None)
        if payload is None and self.config.filesystem is not None:
            with self.config.filesystem.open_input_file(str(job.source)) as handle:
                payload = handle.readall()
        return read_input(job.source) if payload is None else _decode_bytes(payload, job.source)

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa  # type: ignore[import-untyped,import-not-found,unused-ignore]

        rows = batch.to_pylist()
        if self.refused is not None:  # nothing is read or written
            return pa.Table.from_pylist([{"index": -1, "status": "failed", "refused": self.refused}], schema=_result_schema())
        if self.plan is not None:  # a Dataset's rows: path and bytes
            for row in rows:
                row["source"] = str(row["path"])
                row["index"], row["outputs"] = self.plan[row["source"]]
        jobs = [Job(Path(row["source"]), tuple(Path(p) for p in row["outputs"])) for row in rows]
        for job, row in zip(jobs, rows, strict=True):
            if row.get("bytes") is not None:
                self.payloads[job] = row["bytes"]
        try:
            report = run_steps(self.steps, jobs, batch_size=self.config.batch_size, on_item=_test_exit_hook)
        finally:
            for job in jobs:
                self.payloads.pop(job, None)
        return pa.Table.from_pylist(
            [{"index": row["index"], "status": item.status, "error": item.error, "seconds": item.seconds, "model": self.upscaler.name}
             for row, item in zip(rows, report.items, strict=True)],
            schema=_result_schema(),
        )


def _result_schema() -> Any:
    """The actors' result rows: a report row per file, or one row carrying a refusal."""
    import pyarrow as pa  # type: ignore[import-untyped,import-not-found,unused-ignore]

    return pa.schema([("index", pa.int64()), ("status", pa.string()), ("error", pa.string()), ("seconds", pa.float64()),
                      ("model", pa.string()), ("refused", pa.binary())])


def _test_exit_hook(item: BatchItem) -> None:
    """See :data:`TEST_EXIT_FILE`: exit once, mid-batch, right after a file was written."""
    flag = os.environ.get(TEST_EXIT_FILE)
    if not flag or item.status != "ok":
        return
    try:
        os.unlink(flag)  # only one process can delete it: one crash per file created
    except FileNotFoundError:
        return
    os._exit(1)
